"""Helpers shared by the minibatch-noise (paper 002) experiments: one simulated parameter point, the memory
of a :func:`~noiseprobe.minibatch.sgd.simulate_sgd` call, agreement over many points, log-axis ticks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from noiseprobe.core.checks import Check
from noiseprobe.core.config import ExperimentConfig, param
from noiseprobe.core.divergence import MAX_DIVERGED_FRACTION, dropped_note
from noiseprobe.core.errors import ConfigError
from noiseprobe.minibatch.sgd import LinearProblem, simulate_sgd

#: the numba SGD kernel's own memory in a worker: its compiled functions loaded from numba's cache and the
#: threading layer (measured: 38-40 MB of RSS growth for a 1d and a D = 20 chunk of a few MB of arrays)
SIM_BYTES = 40_000_000
#: the worker's own growth running a chunk besides the arrays modelled (pandas, parquet, allocator slack)
BASE_BYTES = 20_000_000


@dataclass(frozen=True, kw_only=True)
class ChainsConfig(ExperimentConfig):
    """The simulation fields every linear-regression figure has."""

    chains: int = param(lo=2, hi=10**8, help="independent chains per parameter point")
    steps: int = param(lo=10, hi=10**8, help="measured steps per chain")
    burn_in: int = param(lo=0, hi=10**8, help="discarded steps before them")

    size_fields: ClassVar[tuple[str, ...]] = ("chains", "steps", "burn_in")


def check_weight_decays(field: str, values: list[float], a: float) -> None:
    """Every weight decay γ > −a (a + γ > 0: a minimum to fluctuate about)."""
    if min(values) <= -a:
        raise ConfigError(field, values, f"numbers > −a = {-a:g}")


def sim_peak_bytes(chains: int, dim: int = 1, *, snapshots: int = 0, frame_columns: int = 6) -> int:
    """Peak memory of one simulate_sgd call and its per-chain result frame: the numba kernel
    (:data:`SIM_BYTES`; it draws its random numbers per step from counter-based streams, so nothing grows
    with the steps), per chain the second-moment sums and their symmetric copies (3·D²), the means, start,
    keys and flags, the snapshots and their NaN-masked copy (2·snapshots·D) and a frame of
    ``frame_columns`` columns."""
    per_chain = 8 * (3 * dim * dim + 4 * dim + frame_columns + 2 * snapshots * dim + 6)
    return SIM_BYTES + chains * per_chain


def chains_1d(
    config: ChainsConfig,
    point: int,
    *,
    a: float,
    lr: float,
    batch_size: int,
    sigma: float = 0.0,
    u: float = 0.0,
    b: float = 0.0,
    gamma: float = 0.0,
) -> pd.DataFrame:
    """One parameter point in 1d: per-chain time averages (exact-in-law 1d sampler); the point's chains have
    the global indices ``point·chains + (0 … chains−1)``."""
    R = config.chains
    run = simulate_sgd(
        LinearProblem(a, u=[u], sigma=sigma, B=b, Gamma=gamma),
        lr=lr,
        batch_size=batch_size,
        steps=config.steps,
        burn_in=config.burn_in,
        chains=R,
        seed=config.seed,
        first_chain=point * R,
    )
    out: pd.DataFrame = pd.DataFrame(
        {
            "chain": np.arange(point * R, (point + 1) * R),
            "sigma_w": run.second_moment[:, 0, 0],
            "train_loss": run.train_loss(),
            "test_loss": run.test_loss(),
            "diverged": run.diverged,
            "diverged_at": run.diverged_at,
        }
    )
    return out


def divergence_note(res: pd.DataFrame) -> str:
    """What a figure or table says about the chains of ``res`` it left out (empty when none diverged)."""
    return dropped_note(int(res["diverged"].sum()), len(res))


def worst_point(
    key: str, claim: str, measured: Any, expected: Any, se: Any, labels: list[str], *, rtol: Any = 0.0, **kw: Any
) -> Check:
    """ "``measured`` ≈ ``expected`` at every point" as one :meth:`Check.close` at the point that needs the most
    standard errors beyond its tolerance (``rtol`` per point or one for all); it passes iff every point
    does. Not measurable when a point with a finite prediction has no finite estimate (its chains
    diverged) or when there is no point."""
    m, e, s = (np.asarray(v, dtype=np.float64) for v in (measured, expected, se))
    rt = np.broadcast_to(np.asarray(rtol, dtype=np.float64), m.shape)
    ok = np.isfinite(m) & np.isfinite(e) & np.isfinite(s) & (s > 0)
    lost = [lab for lab, o, ee in zip(labels, ok, e) if not o and np.isfinite(ee)]
    if lost or not ok.any():
        why = (
            (
                "not measurable at "
                + ", ".join(lost)
                + f" (more than {MAX_DIVERGED_FRACTION:.0%} of its chains diverged, or fewer than two converged)"
            )
            if lost
            else "no point to measure (no stationary state at any)"
        )
        return Check.not_measurable(key, claim, why, **kw)
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = np.where(ok, (np.abs(m - e) - rt * np.abs(e)) / np.where(s > 0, s, 1.0), -np.inf)
    i = int(np.argmax(excess))
    z = (m - e) / np.where(s > 0, s, np.inf)
    detail = f"worst at {labels[i]}; z per point: " + ", ".join(
        f"{lab}: {zz:+.2f}" for lab, zz, o in zip(labels, z, ok) if o
    )
    kw["detail"] = detail + ("; " + kw["detail"] if kw.get("detail") else "")
    return Check.close(key, claim, float(m[i]), float(e[i]), rtol=float(rt[i]), se=float(s[i]), **kw)


def plain_log_ticks(ax: Any, values: Any) -> None:
    """Label a log x-axis at the given values, in plain numbers."""
    from matplotlib.ticker import NullFormatter

    ax.set_xticks(list(values), [f"{v:g}" for v in values])
    ax.xaxis.set_minor_formatter(NullFormatter())
