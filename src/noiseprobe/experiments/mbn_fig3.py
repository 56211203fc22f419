"""Paper 002 (minibatch noise), Fig. 3: the 1d fluctuation Σ against the batch size, exact (Thm 2) against the
Hessian approximations and simulation; and the L2 test loss against the weight decay (Cor. 4).

Simulation: :func:`noiseprobe.minibatch.sgd.simulate_sgd` (½ in the loss, sampling with replacement,
N → ∞, the exact-in-law 1d sampler). One chunk per parameter point; a point's chains have the global
indices ``point·chains + (0 … chains−1)``, so results do not depend on chunking or workers. Where the
stationary law has tail index β_K < 4 (sample variances converge slowly, docs/theory/minibatch_noise.md §16 trap 11) a 10 % relative
tolerance is added to the standard-error slack and stated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from noiseprobe.core.checks import Check, Z
from noiseprobe.core.config import param
from noiseprobe.core.divergence import MAX_DIVERGED_FRACTION
from noiseprobe.core.experiment import Chunk, Experiment, RunCost
from noiseprobe.core.plotting import new_figure, savefig
from noiseprobe.core.stats import mean_se_kept
from noiseprobe.experiments import _mbn_fig3_l2 as l2
from noiseprobe.experiments._mbn import (
    BASE_BYTES,
    ChainsConfig,
    chains_1d,
    check_weight_decays,
    divergence_note,
    plain_log_ticks,
    sim_peak_bytes,
    worst_point,
)
from noiseprobe.experiments._mbn_fig3_l2 import HEAVY_TAIL_RTOL
from noiseprobe.minibatch.baselines import hessian_approx_sigma
from noiseprobe.minibatch.fluctuation import or_inf
from noiseprobe.minibatch.linear import label_noise_lr_bound, label_noise_sigma
from noiseprobe.minibatch.tails import tail_index_exact

#: the simulated Σ must exceed the discrete Hessian approximation by this factor at the smallest S
UNDERESTIMATE_MIN = 1.5


@dataclass(frozen=True, kw_only=True)
class Fig3Config(ChainsConfig):
    a: float = param(lo=0.0, lo_open=True, help="curvature of the left panel")
    lr: float = param(lo=0.0, lo_open=True)
    sigma: float = param(lo=0.0, help="label-noise standard deviation σ")
    batch_sizes: list[int] = param(lo=1, hi=10**6, min_len=1)
    reg_a: float = param(lo=0.0, lo_open=True, help="curvature of the L2 panel")
    reg_lr: float = param(lo=0.0, lo_open=True)
    reg_batch_size: int = param(lo=1, hi=10**6, help="batch size S of the L2 panel")
    reg_u: float = param(help="teacher u of the L2 panel")
    gammas: list[float] = param(min_len=1, help="weight decays, each > −reg_a")
    #: renamed fields (old name -> new name): old --set and run.json still work, with a deprecation line
    renamed = {"reg_S": "reg_batch_size"}

    def check(self) -> None:
        check_weight_decays("gammas", self.gammas, self.reg_a)


class Fig3(Experiment):
    """Fig. 3. Left: Σ vs S in 1d (a = 1.5, λ = 1; stationary iff S > 6), Thm 2 vs the discrete and continuous
    Hessian approximations (C = H/S) and simulation. Right: L_test vs γ in the standard L2 case
    (a = 1, λ = 0.5, S = 1, u = 1; λa < 2S/(S+2) so the optimal γ is 0), Cor. 4 vs simulation."""

    id = "mbn-fig3"
    title = "Fluctuation vs batch size: exact vs Hessian approximations; L2 test loss vs weight decay"
    Config = Fig3Config
    presets = {
        "quick": {
            "seed": 0,
            "a": 1.5,
            "lr": 1.0,
            "sigma": 1.0,
            "batch_sizes": [8, 12, 16, 24, 32, 64],
            "reg_a": 1.0,
            "reg_lr": 0.5,
            "reg_batch_size": 1,
            "reg_u": 1.0,
            "gammas": [0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0],
            "chains": 1500,
            "steps": 1500,
            "burn_in": 300,
        },
        "full": {
            "seed": 0,
            "a": 1.5,
            "lr": 1.0,
            "sigma": 1.0,
            "batch_sizes": [7, 8, 10, 12, 16, 24, 32, 48, 64, 128, 256],
            "reg_a": 1.0,
            "reg_lr": 0.5,
            "reg_batch_size": 1,
            "reg_u": 1.0,
            "gammas": [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5],
            "chains": 20000,
            "steps": 10000,
            "burn_in": 2000,
        },
    }
    diverging = {"lr": 5.0, "reg_lr": 5.0}  # λa >= 2: no batch size is stable, every chain diverges

    def estimate(self, config: Fig3Config) -> RunCost:
        return RunCost(peak_bytes=sim_peak_bytes(config.chains) + BASE_BYTES, drivers=("chains",))

    def chunks(self, config: Fig3Config) -> list[Chunk]:
        left = [Chunk(f"S{S}", {"panel": "left", "S": S, "point": i}) for i, S in enumerate(config.batch_sizes)]
        off = len(left)
        right = [
            Chunk(f"gamma{g:g}", {"panel": "right", "gamma": g, "point": off + i}) for i, g in enumerate(config.gammas)
        ]
        return left + right

    def measure(self, config: Fig3Config, chunk: Chunk) -> pd.DataFrame:
        sp = chunk.spec
        if sp["panel"] == "left":
            df = chains_1d(config, sp["point"], a=config.a, lr=config.lr, batch_size=sp["S"], sigma=config.sigma)
            table: pd.DataFrame = df.assign(panel="left", S=sp["S"], gamma=0.0)
            return table
        df = chains_1d(
            config,
            sp["point"],
            a=config.reg_a,
            lr=config.reg_lr,
            batch_size=config.reg_batch_size,
            u=config.reg_u,
            gamma=sp["gamma"],
        )
        table = df.assign(panel="right", S=config.reg_batch_size, gamma=sp["gamma"])
        return table

    def derive(self, config: Fig3Config, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        res = tables["results"]
        return {"left": _left_table(config, res), "right": l2.right_table(config, res)}

    def checks(self, config: Fig3Config, tables: dict[str, pd.DataFrame]) -> list[Check]:
        return _left_checks(config.a, tables["left"]) + l2.right_checks(tables["results"], tables["right"])

    def metrics(self, config: Fig3Config, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        left, res = tables["left"], tables["results"]
        return {
            "sigma_exact": dict(zip(left.S.astype(int).astype(str), left.exact)),
            "sigma_sim": dict(zip(left.S.astype(int).astype(str), left.sim)),
            "gamma_star_sim": l2.simulated_optimum(tables["right"]),
            "n_diverged": int(res["diverged"].sum()),
        }

    def plot(self, config: Fig3Config, tables: dict[str, pd.DataFrame], out: Path) -> None:
        res, left, right = tables["results"], tables["left"], tables["right"]
        a, lr, s2 = config.a, config.lr, config.sigma**2
        ra, rl, rS = config.reg_a, config.reg_lr, config.reg_batch_size
        fig, ax = new_figure(2, width=4.2)
        Sg = np.geomspace(left.S.min(), left.S.max() * 1.2, 200)
        den = 2 * Sg - (Sg + 2) * lr * a  # 1d Thm 2 for real S
        ax[0].plot(Sg, np.where(den > 0, lr * s2 / np.where(den > 0, den, 1), np.nan), label="exact (Thm 2)")
        ax[0].plot(Sg, [s2 / (s * (2 / lr - a)) for s in Sg], "--", label="Hessian approx., discrete (×σ²)")
        ax[0].plot(Sg, s2 * lr / (2 * Sg), ":", label="Hessian approx., continuous (×σ²)")
        ax[0].errorbar(left.S, left.sim, yerr=Z * left.se, fmt="o", ms=4, label="simulation")
        ax[0].axvline(2 / (2 / (lr * a) - 1), color="0.6", lw=0.8)
        ax[0].set(xscale="log", yscale="log", xlabel="batch size S", ylabel="Σ", title=f"a={a}, λ={lr}")
        for k, part in enumerate(("left", "right")):
            note = divergence_note(res[res.panel == part])
            if note:
                ax[k].text(
                    0.02,
                    0.02,
                    note + f" (points with more than {MAX_DIVERGED_FRACTION:.0%} left out)",
                    transform=ax[k].transAxes,
                    fontsize=7,
                )
        plain_log_ticks(ax[0], left.S)
        ax[0].legend()
        gg = np.linspace(right.gamma.min(), right.gamma.max(), 200)
        ax[1].plot(gg, [l2.cor4(config, x) for x in gg], label="Cor. 4")
        ax[1].errorbar(right.gamma, right.sim, yerr=Z * right.se, fmt="o", ms=4, label="simulation")
        ax[1].set(xlabel="weight decay γ", ylabel="test loss", title=f"L2: a={ra}, λ={rl}, S={rS}")
        ax[1].legend()
        savefig(fig, out / "fig3.png")


def _left_table(config: Fig3Config, res: pd.DataFrame) -> pd.DataFrame:
    """Left panel, one row per S: simulated Σ ± SE over the converged chains, the fraction that diverged, Thm 2,
    both Hessian approximations (×σ²) and the exact tail index β_K."""
    a, lr, sigma = config.a, config.lr, config.sigma
    s2 = sigma**2
    rows = []
    for S, g in res[res.panel == "left"].groupby("S"):
        m, se, frac = mean_se_kept(g["sigma_w"], g["diverged"])
        rows.append(
            {
                "S": S,
                "sim": m,
                "se": se,
                "diverged": frac,
                "exact": or_inf(label_noise_sigma, a, lr=lr, batch_size=S, sigma=sigma),
                # Hessian baselines C = H/S carry no σ²; scaled by σ² for a fair comparison (trap 13)
                "discrete": or_inf(hessian_approx_sigma, a, lr=lr, batch_size=S, noise_scale=s2),
                "continuous": or_inf(hessian_approx_sigma, a, lr=lr, batch_size=S, time="continuous", noise_scale=s2),
                "beta": float(tail_index_exact(lr=lr, batch_size=S, a=a)),
            }
        )
    table: pd.DataFrame = pd.DataFrame(rows).sort_values("S")
    return table


def _left_checks(a: float, left: pd.DataFrame) -> list[Check]:
    """Fig. 3 left: Thm 2 against simulation, the Hessian approximations at small and large S, the bound."""
    checks = []
    ok = left[np.isfinite(left.exact)]
    claim = "Thm 2: exact Σ = λσ²/(2S − (S+2)λa) matches simulation at every stable S (Fig. 3 left)"
    if ok.empty:
        checks.append(Check.not_measurable("thm2-sigma-matches-simulation", claim, "no stable batch size"))
    else:
        checks.append(
            worst_point(
                "thm2-sigma-matches-simulation",
                claim,
                ok.sim,
                ok.exact,
                ok.se,
                [f"S={S}" for S in ok.S],
                rtol=np.where(ok.beta > 4, 0.0, HEAVY_TAIL_RTOL),
                detail=f"+{HEAVY_TAIL_RTOL:.0%} relative where the tail index < 4",
            )
        )
    if len(ok) >= 2:
        small, large = ok.iloc[0], ok.iloc[-1]
        checks.append(
            Check.greater(
                "hessian-underestimates-small-s",
                "Hessian approximations underestimate Σ at small S (Fig. 3 left): "
                "simulated Σ / discrete Hessian approximation",
                small.sim / small.discrete,
                UNDERESTIMATE_MIN,
                detail=f"S = {int(small.S)}; SE of the ratio {small.se / small.discrete:.2g} (not a slack: near the "
                "variance bound the tail index is ≈ 2 and the SE is unreliable, and 4 SE would pass any ratio); "
                f"simulated Σ / continuous approximation = {small.sim / small.continuous:.3f}",
            )
        )
        checks.append(
            Check.less(
                "discrete-approaches-exact-at-large-s",
                "The discrete Hessian approximation approaches the exact Σ as S grows (large-S limit, eq. 22): "
                f"|1 − discrete/exact| at S = {int(large.S)} is below its value at S = {int(small.S)}",
                abs(1 - large.discrete / large.exact),
                abs(1 - small.discrete / small.exact),
                detail=f"discrete/exact = {large.discrete / large.exact:.4f} (S = {int(large.S)}), "
                f"{small.discrete / small.exact:.4f} (S = {int(small.S)})",
            )
        )
        S0 = int(small.S)
        checks.append(
            Check.close(
                "stability-bound-closed-form",
                "Thm 2 stability bound λ_max·a = 2S/(S+2) (numerical bound of the solver vs closed form)",
                label_noise_lr_bound(a, batch_size=S0) * a,
                2 * S0 / (S0 + 2),
                atol=1e-8,
                detail=f"S = {S0}",
            )
        )
    else:
        checks += [
            Check.not_measurable(k, c, "fewer than two stable batch sizes")
            for k, c in (
                (
                    "hessian-underestimates-small-s",
                    "Hessian approximations underestimate Σ at small S (Fig. 3 left)",
                ),
                (
                    "discrete-approaches-exact-at-large-s",
                    "The discrete Hessian approximation approaches the exact Σ as S grows (large-S limit, eq. 22)",
                ),
                ("stability-bound-closed-form", "Thm 2 stability bound λ_max·a = 2S/(S+2)"),
            )
        ]
    return checks
