"""Minibatch-noise paper (002), Fig. 2 and Fig. 7 (:mod:`noiseprobe.experiments.mbn_tails`): the measurement they share,
power-law tails of the stationary distribution of 1d SGD.

Setting (Sec. 6.6, App. D.3): 1d linear regression with label noise σ, x ~ N(0, a), loss ½(wx − y)²,
online minibatches of S samples with replacement (N → ∞), plain SGD. Each (S, λ) point runs ``chains``
independent chains with D's simulator (exact-in-law 1d sampler), discards ``burn_in`` steps, then keeps
``snapshots`` values of w every ``snapshot_every`` steps. The tail index of |w| is measured by Hill on the
top ``hill_fraction`` of the pooled samples, with a chain-clustered SE, and by the KS-selected MLE.

Compared values: eq. (93) 2S/(aλ) − S (paper), the exact Kesten index β_K (root of E|1 − λaχ²_S/S|^β = 1,
docs/theory/minibatch_noise.md's correction) and the continuous-time 2S/(aλ) + 1 (Mori et al. 2021).

* ``mbn-fig2`` (:class:`Fig2`): aλ fixed (1 in the paper), several S: the distribution p(|w|) against the
  Student-t law of eq. (90) with β from eq. (93), the CCDF with the three slopes, and β vs S.
* ``mbn-fig7`` (:class:`Fig7`): β vs λ for one or more S.

Tables: ``results`` one row per chain (S, lr, chain, diverged, mean_sq = time-averaged w², max_abs);
``tails`` one row per point (estimates and theory); ``ccdf`` and ``density`` the empirical P(|w| > x) and
density of |w| on log grids, for the figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from noiseprobe.core.checks import Check, Z
from noiseprobe.core.config import ExperimentConfig, param
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.experiment import Chunk, Experiment, RunCost
from noiseprobe.core.powerlaw import hill, powerlaw_mle
from noiseprobe.experiments._mbn import BASE_BYTES, sim_peak_bytes, worst_point
from noiseprobe.minibatch.sgd import LinearProblem, simulate_sgd
from noiseprobe.minibatch.tails import (
    lyapunov_exponent,
    tail_index_continuous,
    tail_index_eq93,
    tail_index_exact,
)

COMMON = {"a": 1.0, "sigma": 1.0, "burn_in": 500, "hill_fraction": 0.001, "beta_max_check": 5.0}
QUICK = {"chains": 4000, "snapshots": 250, "snapshot_every": 10}
FULL = {"chains": 20000, "snapshots": 500, "snapshot_every": 20, "burn_in": 2000, "hill_fraction": 0.0005}
_ESTIMATES = ("hill_beta", "hill_se", "hill_k", "hill_x_min", "mle_beta", "mle_se", "mle_k", "mle_x_min")


@dataclass(frozen=True, kw_only=True)
class TailsConfig(ExperimentConfig):
    a: float = param(lo=0.0, lo_open=True, help="curvature E x² of the 1d problem")
    sigma: float = param(lo=0.0, lo_open=True, help="label-noise standard deviation σ")
    batch_sizes: list[int] = param(lo=1, hi=10_000, min_len=1)
    lrs: list[float] = param(lo=0.0, lo_open=True, min_len=1)
    chains: int = param(lo=10, hi=10**8)
    snapshots: int = param(lo=1, hi=10**6)
    snapshot_every: int = param(lo=1, hi=10**6)
    burn_in: int = param(lo=0, hi=10**8)
    hill_fraction: float = param(lo=0.0, hi=0.5, lo_open=True, help="share of the pooled samples in the Hill tail")
    beta_max_check: float = param(lo=0.0, lo_open=True, help="points with β_K above this are shown, not tested")

    size_fields = ("chains", "snapshots", "snapshot_every", "burn_in")

    def check(self) -> None:
        n = self.chains * self.snapshots
        if self.hill_fraction * n < 20:
            raise ConfigError(
                "hill_fraction",
                self.hill_fraction,
                f">= {20 / n:.3g}: the Hill tail must hold >= 20 of the chains*snapshots = {n} samples",
            )


class Tails(Experiment):
    """Config, chunks (one per (S, λ) point), the measurement of a point, and the checks and metrics both figures
    draw on; the figures add their own checks and plots."""

    #: order of the points in the tables the checks, metrics and plots see
    order: tuple[str, str] = ("lr", "S")
    tables = ("tails", "ccdf", "density")
    Config = TailsConfig
    diverging = {"lrs": [5.0]}  # λa = 5 > 2: the Lyapunov exponent is positive for every S, every chain diverges

    def estimate(self, config: TailsConfig) -> RunCost:
        """One point per chunk: the simulation with its snapshots, then the pooled |w| samples (sorted copies
        for Hill, the MLE and the curves)."""
        n = config.chains * config.snapshots
        peak = sim_peak_bytes(config.chains, snapshots=config.snapshots) + 8 * 6 * n + BASE_BYTES
        return RunCost(peak_bytes=int(peak), drivers=("chains", "snapshots"))

    def _points(self, config: TailsConfig) -> list[tuple[int, float]]:
        return [(int(S), float(lr)) for S in config.batch_sizes for lr in config.lrs]

    def chunks(self, config: TailsConfig) -> list[Chunk]:
        return [
            Chunk(f"p{i:03d}_S{S}_lr{lr:.6g}", {"index": i, "S": S, "lr": lr})
            for i, (S, lr) in enumerate(self._points(config))
        ]

    # -- simulation -------------------------------------------------------------------------------
    def measure(self, config: TailsConfig, chunk: Chunk) -> dict[str, pd.DataFrame]:
        S, lr, a = chunk.spec["S"], chunk.spec["lr"], config.a
        chains = config.chains
        first = chunk.spec["index"] * chains  # global replica indices of this point
        lyap = lyapunov_exponent(lr=lr, batch_size=S, a=a)
        theory = {
            "beta_eq93": tail_index_eq93(lr=lr, batch_size=S, a=a),
            "beta_exact": tail_index_exact(lr=lr, batch_size=S, a=a),
            "beta_continuous": tail_index_continuous(lr=lr, batch_size=S, a=a),
            "lyapunov": lyap,
        }
        run = simulate_sgd(
            LinearProblem(A=a, sigma=config.sigma),
            lr=lr,
            batch_size=S,
            steps=config.snapshots * config.snapshot_every,
            burn_in=config.burn_in,
            chains=chains,
            seed=config.seed,
            first_chain=first,
            snapshot_every=config.snapshot_every,
        )
        assert run.snapshots is not None  # snapshot_every was given
        snaps = np.abs(run.snapshots[..., 0])  # (chains, snapshots); NaN for diverged chains
        key = {"S": S, "lr": lr, "a": a}
        results = pd.DataFrame(
            {
                **key,
                "chain": np.arange(first, first + chains),
                "diverged": run.diverged,
                "mean_sq": run.second_moment[:, 0, 0],
                "max_abs": snaps.max(axis=1),
            }
        )
        ok = run.ok
        x = snaps[ok].ravel()
        labels = np.repeat(np.nonzero(ok)[0], snaps.shape[1])
        x, labels = x[x > 0], labels[x > 0]
        row: dict[str, Any] = {
            **key,
            **theory,
            "n": int(x.size),
            "n_diverged": int(run.diverged.sum()),
            **dict.fromkeys(_ESTIMATES, math.nan),
            "mle_at_bound": False,
        }
        ccdf = density = pd.DataFrame()
        if x.size >= 100 and int(config.hill_fraction * x.size) >= 2:  # else (all diverged): NaN estimates
            h = hill(x, int(config.hill_fraction * x.size), clusters=labels)
            m = powerlaw_mle(x, clusters=labels)
            row.update(
                hill_beta=h.beta,
                hill_se=h.se,
                hill_k=h.k,
                hill_x_min=h.x_min,
                mle_beta=m.beta,
                mle_se=m.se,
                mle_k=m.k,
                mle_x_min=m.x_min,
                mle_at_bound=m.at_bound,
            )
            ccdf, density = _curves(x, key)
        return {"results": results, "tails": pd.DataFrame([row]), "ccdf": ccdf, "density": density}

    # -- analysis helpers -------------------------------------------------------------------------
    @staticmethod
    def agreement(tails: pd.DataFrame, column: str, key: str, claim: str, config: TailsConfig, **kw: Any) -> Check:
        """The measured Hill index agrees with ``column`` within Z chain-clustered SE at every testable point
        (β_K <= beta_max_check): one check at the worst point."""
        t = tails[tails["beta_exact"] <= config.beta_max_check]
        skipped = len(tails) - len(t)
        note = f"{skipped} point(s) with beta_exact > {config.beta_max_check} not tested" if skipped else ""
        if t.empty:
            return Check.not_measurable(key, claim, "no testable point", detail=note, **kw)
        labels = [
            f"S={r.S} lr={r.lr:g} (measured {r.hill_beta:.3f}±{r.hill_se:.3f} vs {getattr(r, column):.3f})"
            for r in t.itertuples()
        ]
        return worst_point(key, claim, t["hill_beta"], t[column], t["hill_se"], labels, detail=note, **kw)

    @staticmethod
    def heavier_than_continuous(tails: pd.DataFrame) -> Check:
        """β_continuous − measured, in chain-clustered SE, at the point where it is smallest, is at least Z."""
        t = tails[np.isfinite(tails["hill_beta"])]
        gap = (t["beta_continuous"] - t["hill_beta"]) / t["hill_se"]
        return Check.greater(
            "heavier-than-continuous",
            "Discrete-time SGD has a heavier tail than continuous time expects: beta < 2S/(a lr) + 1 "
            "by more than Z standard errors at every point (Sec. 6.6); measured: the smallest "
            "(beta_continuous − Hill)/SE",
            float(gap.min()) if len(gap) else math.nan,
            Z,
            detail="; ".join(
                f"S={r.S} lr={r.lr:g}: measured {r.hill_beta:.3f} vs continuous {r.beta_continuous:.3f}"
                for r in t.itertuples()
            ),
        )

    def tails(self, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
        """The ``tails`` table, one row per point, in this figure's order."""
        out: pd.DataFrame = tables["tails"].sort_values(list(self.order)).reset_index(drop=True)
        return out

    def metrics(self, config: TailsConfig, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        tails = self.tails(tables)
        cols = [
            "S",
            "lr",
            "n",
            "n_diverged",
            "hill_beta",
            "hill_se",
            "mle_beta",
            "mle_se",
            "mle_at_bound",
            "beta_eq93",
            "beta_exact",
            "beta_continuous",
            "lyapunov",
        ]
        return {"points": tails[[c for c in cols if c in tails]].to_dict(orient="records")}


def _curves(x: np.ndarray, key: dict[str, Any], n_grid: int = 60) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Empirical P(|w| > x) and the density of |w| on a log grid from the 10% quantile to the maximum."""
    xs = np.sort(x)
    grid = np.geomspace(xs[int(0.1 * (xs.size - 1))], xs[-1], n_grid)
    ccdf = 1.0 - np.searchsorted(xs, grid[:-1], side="right") / xs.size  # P(|w| > max) = 0 is left out
    counts = np.histogram(xs, bins=grid)[0]
    dens = counts / (xs.size * np.diff(grid))
    centres = np.sqrt(grid[1:] * grid[:-1])
    keep = counts > 0
    return (
        pd.DataFrame({**key, "x": grid[:-1], "ccdf": ccdf}),
        pd.DataFrame({**key, "x": centres[keep], "density": dens[keep], "count": counts[keep]}),
    )
