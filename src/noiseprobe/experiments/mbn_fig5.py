"""Paper 002 (minibatch noise), Fig. 5: L2 regularisation in 1d with a negative optimal weight decay (Cor. 1).

L_test (eq. 11 / Cor. 4) against γ at fixed λ, and against λ at the optimal γ, with the predicted
divergence lines (eqs. 162-163), simulated by :func:`noiseprobe.minibatch.sgd.simulate_sgd` (1d
exact-in-law sampler, N → ∞, with replacement). One chunk per point; a point's chains have the global
indices ``point·chains + (0 … chains−1)``. Past a divergence line a chain's growth is exponential: the
simulator flags it (the divergence rule, :mod:`noiseprobe.core.divergence`) within a few dozen steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from noiseprobe.core.checks import Check, Z
from noiseprobe.core.config import param
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.experiment import Chunk, Experiment, RunCost
from noiseprobe.core.plotting import new_figure, savefig
from noiseprobe.core.stats import mean_se_kept
from noiseprobe.experiments._mbn import (
    BASE_BYTES,
    ChainsConfig,
    chains_1d,
    check_weight_decays,
    sim_peak_bytes,
    worst_point,
)
from noiseprobe.minibatch.fluctuation import or_inf
from noiseprobe.minibatch.l2 import convergent_gamma_interval, l2_1d, negative_weight_decay_window, optimal_weight_decay

#: relative tolerance for the test loss (heavy tails near the edges of the convergent interval)
LOSS_RTOL = 0.01


@dataclass(frozen=True, kw_only=True)
class Fig5Config(ChainsConfig):
    a: float = param(lo=0.0, lo_open=True, help="curvature")
    lr: float = param(lo=0.0, lo_open=True, help="learning rate of the γ sweep")
    batch_size: int = param(lo=1, hi=10**6, help="batch size S")
    u: float = param(help="teacher")
    gammas: list[float] = param(min_len=1, help="weight decays, each > −a")
    lrs: list[float] = param(lo=0.0, lo_open=True, min_len=1, help="learning rates at the optimal γ")
    #: renamed fields (old name -> new name): old --set and run.json still work, with a deprecation line
    renamed = {"S": "batch_size"}

    def check(self) -> None:
        check_weight_decays("gammas", self.gammas, self.a)
        if convergent_gamma_interval(a=self.a, lr=self.lr, batch_size=self.batch_size) is None:
            raise ConfigError(
                "lr", self.lr, f"λa <= √(S/2) = {np.sqrt(self.batch_size / 2):.4g}/a (else no γ converges)"
            )


class Fig5(Experiment):
    """Fig. 5. Defaults a = 1, λ = 2.5, S = 1000, u = 1, inside the window 2S/(S+2) < λa <= √(S/2) (docs/theory/minibatch_noise.md §5)."""

    id = "mbn-fig5"
    title = "Test loss vs weight decay and learning rate with predicted divergence; negative optimal weight decay"
    Config = Fig5Config
    presets = {
        "quick": {
            "seed": 0,
            "a": 1.0,
            "lr": 2.5,
            "batch_size": 1000,
            "u": 1.0,
            "gammas": [-0.9, -0.6, -0.4, -0.3, -0.25, -0.2159, -0.21, -0.15, 0.0],
            "lrs": [0.5, 1.0, 1.5, 2.0, 2.3, 2.5, 2.6],
            "chains": 300,
            "steps": 1500,
            "burn_in": 500,
        },
        "full": {
            "seed": 0,
            "a": 1.0,
            "lr": 2.5,
            "batch_size": 1000,
            "u": 1.0,
            "gammas": [-0.95, -0.8, -0.6, -0.4, -0.3, -0.25, -0.23, -0.2159, -0.21, -0.205, -0.15, -0.1, 0.0],
            "lrs": [0.25, 0.5, 1.0, 1.5, 2.0, 2.2, 2.4, 2.5, 2.53, 2.6, 2.8],
            "chains": 40000,
            "steps": 10000,
            "burn_in": 3000,
        },
    }
    #: γ = 0 lies above the convergent interval at λ = 2.5, and λ = 5 is past the divergence line at γ*
    diverging = {"gammas": [0.0], "lrs": [5.0]}

    def estimate(self, config: Fig5Config) -> RunCost:
        return RunCost(peak_bytes=sim_peak_bytes(config.chains) + BASE_BYTES, drivers=("chains",))

    def chunks(self, config: Fig5Config) -> list[Chunk]:
        g = [
            Chunk(f"gamma{x:g}", {"panel": "gamma", "gamma": x, "lr": config.lr, "point": i})
            for i, x in enumerate(config.gammas)
        ]
        gstar = optimal_weight_decay(config.a, u=[config.u], lr=config.lr, batch_size=config.batch_size)[0]
        return g + [
            Chunk(f"lr{x:g}", {"panel": "lr", "gamma": gstar, "lr": x, "point": len(g) + i})
            for i, x in enumerate(config.lrs)
        ]

    def measure(self, config: Fig5Config, chunk: Chunk) -> pd.DataFrame:
        sp = chunk.spec
        df = chains_1d(
            config, sp["point"], a=config.a, lr=sp["lr"], batch_size=config.batch_size, u=config.u, gamma=sp["gamma"]
        )
        table: pd.DataFrame = df.assign(panel=sp["panel"], gamma=sp["gamma"], lr=sp["lr"])
        return table

    def derive(self, config: Fig5Config, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        return {"points": _points(config, tables["results"])}

    def checks(self, config: Fig5Config, tables: dict[str, pd.DataFrame]) -> list[Check]:
        a, lr, S, u = config.a, config.lr, config.batch_size, config.u
        pts = tables["points"]
        gstar, lstar = optimal_weight_decay(a, u=[u], lr=lr, batch_size=S)
        win = negative_weight_decay_window(batch_size=S)
        interval = convergent_gamma_interval(a=a, lr=lr, batch_size=S)
        pg = pts[pts.panel == "gamma"].sort_values("gamma")
        g_sim = _simulated_optimum(pg)
        negative = [g for g in config.gammas if g < 0]
        checks = [
            Check.within(
                "lr-in-negative-decay-window",
                "Cor. 1: λa lies in the window 2S/(S+2) < λa <= √(S/2) where the optimal weight decay is negative",
                lr * a,
                win[0],
                win[1],
            ),
            Check.less(
                "optimal-weight-decay-negative",
                "Cor. 1: the optimal weight decay γ* (eq. 11 minimised) is negative",
                gstar,
                0.0,
                detail=f"L_test(γ*) = {lstar:.6g}",
            ),
        ]
        claim = "Cor. 1 measured: the simulated argmin of L_test over the γ grid is negative"
        if not negative:
            checks.append(Check.not_measurable("simulated-optimum-negative", claim, "no negative γ on the grid"))
        else:  # g_sim is a grid value: < 0 iff <= the largest negative grid value
            checks.append(
                Check.less(
                    "simulated-optimum-negative",
                    claim,
                    g_sim,
                    max(negative),
                    detail=f"γ* = {gstar:.5g}; grid point nearest to γ* is the best possible",
                )
            )
        conv = pts[np.isfinite(pts.theory) & (pts.diverged == 0)]
        checks.append(
            worst_point(
                "test-loss-matches-simulation",
                "Eq. (11) / Cor. 4 test loss matches simulation at every convergent point "
                "(+1 % relative: heavy tails near the edges)",
                conv.sim,
                conv.theory,
                conv.se,
                [f"(γ={r.gamma:.3g}, λ={r.lr:g})" for r in conv.itertuples()],
                rtol=LOSS_RTOL,
            )
        )
        above = pg[pg.gamma > interval[1]] if interval else pg
        checks.append(
            Check.equal(
                "divergence-above-interval",
                "Predicted divergence (eq. 163): every chain diverges for γ above k₊ − a, including "
                "γ = 0: the smallest fraction of chains that diverged",
                float(above.diverged.min()) if len(above) else None,
                1.0,
                detail=f"convergent γ interval {interval}",
            )
        )
        return checks

    def metrics(self, config: Fig5Config, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        a, lr, S, u = config.a, config.lr, config.batch_size, config.u
        pts = tables["points"]
        gstar, lstar = optimal_weight_decay(a, u=[u], lr=lr, batch_size=S)
        return {
            "gamma_star_theory": gstar,
            "test_loss_at_gamma_star": lstar,
            "gamma_star_sim": _simulated_optimum(pts[pts.panel == "gamma"].sort_values("gamma")),
            "convergent_gamma_interval": convergent_gamma_interval(a=a, lr=lr, batch_size=S),
            "lr_divergence_at_gamma_star": _lr_divergence(config, gstar),
        }

    def plot(self, config: Fig5Config, tables: dict[str, pd.DataFrame], out: Path) -> None:
        a, lr, S, u = config.a, config.lr, config.batch_size, config.u
        pts = tables["points"]
        gstar, _ = optimal_weight_decay(a, u=[u], lr=lr, batch_size=S)
        interval = convergent_gamma_interval(a=a, lr=lr, batch_size=S)
        pg = pts[pts.panel == "gamma"].sort_values("gamma")
        finite = pg[pg.diverged == 0]
        lmax = _lr_divergence(config, gstar)
        fig, ax = new_figure(2, width=4.2)
        gg = np.linspace(-a + 1e-3, max(pg.gamma.max(), 0.05), 400)
        ax[0].plot(gg, [_theory(config, g, lr) for g in gg], label="eq. (11)")
        ax[0].errorbar(finite.gamma, finite.sim, yerr=Z * finite.se, fmt="o", ms=4, label="simulation")
        if interval:
            for x in interval:
                ax[0].axvline(x, color="C1", lw=0.9)
        ax[0].axvline(gstar, color="0.5", ls="--", lw=0.8, label=f"γ* = {gstar:.4f}")
        ax[0].set(yscale="log", xlabel="weight decay γ", ylabel="test loss", title=f"a={a}, λ={lr}, S={S}")
        ax[0].legend()
        pl = pts[(pts.panel == "lr") & (pts.diverged == 0)].sort_values("lr")
        ll = np.linspace(0.02, max(config.lrs), 300)
        ax[1].plot(ll, [_theory(config, gstar, x) for x in ll], label="eq. (11)")
        ax[1].errorbar(pl.lr, pl.sim, yerr=Z * pl.se, fmt="o", ms=4, label="simulation")
        ax[1].axvline(lmax, color="C1", lw=0.9, label="predicted divergence")
        ax[1].set(yscale="log", xlabel="learning rate λ", ylabel="test loss", title=f"γ = γ* = {gstar:.4f}")
        ax[1].legend()
        savefig(fig, out / "fig5.png")


def _theory(config: Fig5Config, gamma: float, lr: float) -> float:
    """L_test of eq. (11) at (γ, λ); inf past the divergence lines."""
    c = config
    return float(or_inf(lambda: l2_1d(a=c.a, gamma=gamma, u=c.u, lr=lr, batch_size=c.batch_size)["test_loss"]))


def _lr_divergence(config: Fig5Config, gamma: float) -> float:
    """The learning rate where L_test diverges at weight decay γ (eq. 162)."""
    a, S = config.a, config.batch_size
    k = a + gamma
    return float(2 * S * k / (S * k * k + 2 * a * a))


def _points(config: Fig5Config, res: pd.DataFrame) -> pd.DataFrame:
    """One row per (panel, γ, λ): simulated test loss ± SE over the converged chains, the fraction that
    diverged, and eq. (11)."""
    pts = []
    for key, d in res.groupby(["panel", "gamma", "lr"]):
        panel, g, x = cast(tuple[str, float, float], key)  # the group's (panel, γ, λ)
        m, se, frac = mean_se_kept(d["test_loss"], d["diverged"])
        pts.append(
            {"panel": panel, "gamma": g, "lr": x, "sim": m, "se": se, "diverged": frac, "theory": _theory(config, g, x)}
        )
    table: pd.DataFrame = pd.DataFrame(pts)
    return table


def _simulated_optimum(pg: pd.DataFrame) -> float | None:
    """The grid γ of least simulated test loss among the points where no chain diverged (None if none)."""
    finite = pg[pg.diverged == 0]
    return float(finite.gamma.iloc[int(np.argmin(finite.sim.to_numpy()))]) if len(finite) else None
