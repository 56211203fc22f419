"""NIN phase classification (decoupled, decay, catapult, divergent), phase fractions and boundaries.

The rule (docs/theory/noise_injection_nodes.md §5.2 and §7; paper 001 Sec. 3 names the phases), applied per run in this order:

1. **divergent**: non-finite or overflowing weights/norms (|·| > ``overflow``), an external divergence
   flag, or a clean loss at the horizon above ``loss_bound`` (*stalled*: the task was not learned);
2. **catapult**: the run visited the locally unstable region of the mean map,
   max_t stability > ``edge`` with stability = η σε² λ_max(local Hessian) (for the toy model
   η σε² max(w1², w_NI²); the paper's 2/B criterion applied along the trajectory); without a curvature
   estimate the observable proxy of §7: the NIW norm grows transiently above 2× max(initial, final)
   *and* the loss spikes above 2× its initial value;
3. **decay**: the NIW norm lost at least one e-fold by the horizon, n(T) <= n(0)/e;
4. **decoupled**: otherwise.

Boundaries between phases are probabilistic in σε: report per-σ fractions over seeds and put the
boundary k|k+1 at the σ where the fraction of runs in phases >= k+1 crosses ½ (log-interpolated).
The decoupled|decay boundary depends on the horizon T (it moves as T^-1/2), so always store T.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from noiseprobe.core import divergence
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.fitting import crossing
from noiseprobe.core.validation import check_int, check_real

PHASES: tuple[str, ...] = ("decoupled", "decay", "catapult", "divergent")  # codes 0..3 in this order
BOUNDARY_NAMES: tuple[str, ...] = ("decoupled|decay", "decay|catapult", "catapult|divergent")


def classify_summary(
    *,
    overflow: np.ndarray,
    stalled: np.ndarray,
    max_stability: np.ndarray | None,
    niw_ratio: np.ndarray,
    edge: float = 2.0,
    transient: np.ndarray | None = None,
) -> np.ndarray:
    """Phase codes (R,) from per-run summaries: the rule of the module docstring.

    ``niw_ratio`` = n(T)/n(0); ``max_stability`` = max_t stability (or None); ``transient`` = the
    proxy's boolean outcome, used where ``max_stability`` is None.
    """
    edge = check_real("edge", edge, lo=0.0, lo_open=True)
    ratio = np.asarray(niw_ratio, dtype=np.float64)
    codes = np.where(ratio <= np.exp(-1.0), 1, 0)
    if max_stability is not None:
        cat = np.nan_to_num(np.asarray(max_stability, dtype=np.float64), nan=np.inf) > edge
    else:
        cat = np.zeros(ratio.shape, dtype=bool) if transient is None else np.asarray(transient, dtype=bool)
    codes = np.where(cat, 2, codes)
    codes = np.where(np.asarray(overflow, dtype=bool) | np.asarray(stalled, dtype=bool), 3, codes)
    return codes.astype(np.int8)


def classify(
    niw_norm: np.ndarray,
    loss: np.ndarray,
    *,
    stability: np.ndarray | None = None,
    loss_bound: float = np.inf,
    edge: float = 2.0,
    diverged: np.ndarray | None = None,
) -> np.ndarray:
    """Per-replica phase codes (R,) from curves of shape (R, T) (T recorded times, first = initial).

    divergent if non-finite anywhere in ``niw_norm`` or ``loss`` or above
    :data:`~noiseprobe.core.divergence.FACTOR` × its initial value (the divergence rule), or
    ``diverged[r]``, or final clean loss > ``loss_bound``; catapult if max_t stability > ``edge``
    (``stability`` (R, T) or per-run maxima (R,) of η σε² λ_max(local Hessian)), or, when ``stability``
    is None, by the proxy: max_t niw_norm > 2 max(initial, final) and max_t loss > 2 × initial loss;
    decay if niw_norm[:, -1] <= niw_norm[:, 0]/e; else decoupled.
    """
    n = np.asarray(niw_norm, dtype=np.float64)
    los = np.asarray(loss, dtype=np.float64)
    if n.ndim != 2 or los.shape != n.shape or n.shape[1] < 2:
        raise ConfigError("niw_norm/loss", f"shapes {n.shape}/{los.shape}", "two equal (R, T) arrays with T >= 2")
    if not (isinstance(loss_bound, (int, float, np.floating, np.integer)) and float(loss_bound) > 0):
        raise ConfigError("loss_bound", loss_bound, "a number > 0 (np.inf: no bound)")
    bad = divergence.diverged(n, divergence.bound(np.abs(n[:, :1])), axis=1) | divergence.diverged(
        los, divergence.bound(np.abs(los[:, :1])), axis=1
    )
    if diverged is not None:
        div = np.asarray(diverged, dtype=bool)
        if div.shape != n.shape[:1]:
            raise ConfigError("diverged", f"shape {div.shape}", f"one flag per run, shape {n.shape[:1]}")
        bad |= div
    with np.errstate(invalid="ignore"):
        stalled = los[:, -1] > loss_bound
        ratio = n[:, -1] / n[:, 0]
        max_stab = None
        transient = None
        if stability is not None:
            st = np.asarray(stability, dtype=np.float64)
            if st.shape not in (n.shape, n.shape[:1]):
                raise ConfigError("stability", f"shape {st.shape}", f"{n.shape} or {n.shape[:1]}")
            max_stab = np.nanmax(st, axis=1) if st.ndim == 2 else st
        else:
            transient = (np.nanmax(n, axis=1) > 2 * np.maximum(n[:, 0], n[:, -1])) & (
                np.nanmax(los, axis=1) > 2 * los[:, 0]
            )
    return classify_summary(
        overflow=bad, stalled=stalled, max_stability=max_stab, niw_ratio=ratio, edge=edge, transient=transient
    )


def _counts(sigma: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct σ levels, level index per run, codes as int) with input checks."""
    sigma = np.asarray(sigma, dtype=np.float64).ravel()
    codes = np.asarray(codes).ravel().astype(np.int64)
    if sigma.shape != codes.shape:
        raise ConfigError("codes", f"shape {codes.shape}", f"the shape of sigma, {sigma.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= len(PHASES)):
        raise ConfigError(
            "codes",
            sorted(set(codes.tolist()) - set(range(len(PHASES)))),
            f"phase codes 0 .. {len(PHASES) - 1} ({', '.join(PHASES)})",
        )
    levels, inv = np.unique(sigma, return_inverse=True)
    return levels, inv, codes


def _boundaries_from_counts(levels: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """Boundaries from per-level phase counts (L, 4): P(code >= k) crossing ½, log-interpolated."""
    with np.errstate(invalid="ignore", divide="ignore"):
        cum = counts[:, ::-1].cumsum(axis=1)[:, ::-1] / counts.sum(axis=1, keepdims=True)
    return {name: crossing(levels, cum[:, k + 1], 0.5) for k, name in enumerate(BOUNDARY_NAMES)}


def phase_fractions(sigma: np.ndarray, codes: np.ndarray) -> pd.DataFrame:
    """Per distinct σ (sorted): number of runs ``n`` and the fraction of runs in each phase."""
    levels, inv, codes = _counts(sigma, codes)
    counts = np.zeros((levels.size, len(PHASES)))
    np.add.at(counts, (inv, codes), 1.0)
    total = counts.sum(axis=1)
    df: pd.DataFrame = pd.DataFrame(counts / total[:, None], columns=list(PHASES))
    df.insert(0, "n", total.astype(np.int64))
    df.insert(0, "sigma", levels)
    return df


def boundaries(sigma: np.ndarray, codes: np.ndarray) -> dict[str, float]:
    """σ at which the fraction of runs in phases >= k crosses ½ (k = 1, 2, 3; first upward crossing,
    log-interpolated between grid points); NaN if never crossed or crossed below the smallest σ."""
    levels, inv, codes = _counts(sigma, codes)
    counts = np.zeros((levels.size, len(PHASES)))
    np.add.at(counts, (inv, codes), 1.0)
    return _boundaries_from_counts(levels, counts)


def boundaries_bootstrap(
    sigma: np.ndarray, codes: np.ndarray, seeds: np.ndarray, *, n_boot: int = 200, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """(estimate, bootstrap standard error) of each boundary, resampling the seed indices (columns of
    the σ × seed grid) with replacement; NaN replicates are dropped from the spread."""
    n_boot = check_int("n_boot", n_boot, lo=2)
    seed = check_int("seed", seed, lo=0)
    levels, inv, codes = _counts(sigma, codes)
    seeds = np.asarray(seeds).ravel()
    if seeds.shape != codes.shape:
        raise ConfigError("seeds", f"shape {seeds.shape}", f"one seed index per run, shape {codes.shape}")
    ids, sinv = np.unique(seeds, return_inverse=True)
    per_seed = np.zeros((ids.size, levels.size, len(PHASES)))  # phase counts per seed and σ level
    np.add.at(per_seed, (sinv, inv, codes), 1.0)
    est = _boundaries_from_counts(levels, per_seed.sum(axis=0))
    rng = np.random.default_rng(seed)
    weights = np.stack([np.bincount(rng.integers(0, ids.size, ids.size), minlength=ids.size) for _ in range(n_boot)])
    boot = np.einsum("bs,slk->blk", weights, per_seed)
    reps = [_boundaries_from_counts(levels, c) for c in boot]
    out = {}
    for k in BOUNDARY_NAMES:
        r = np.array([x[k] for x in reps])
        r = r[np.isfinite(r)]
        out[k] = (est[k], float(np.std(r, ddof=1)) if r.size > 1 else float("nan"))
    return out
