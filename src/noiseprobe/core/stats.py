"""Statistics helpers shared by the experiments: means and standard errors over independent replicas
(``se`` = sample sd/√n, what :mod:`noiseprobe.core.checks` constructors take as ``se=``), grouped means,
the worst deviation from a prediction, log-log slopes with their SE, and a clustered χ² test."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from noiseprobe.core.divergence import MAX_DIVERGED_FRACTION


def standard_error(x: Any, axis: int = 0) -> np.ndarray | float:
    """Standard error of the mean over independent replicas along ``axis``: std(ddof=1)/√n; +inf when
    n < 2 (one replica says nothing about the spread)."""
    arr = np.asarray(x, dtype=np.float64)
    n = arr.shape[axis]
    if n < 2:
        out = np.full(np.delete(arr.shape, axis), np.inf)
        return float(out) if out.ndim == 0 else out
    with np.errstate(over="ignore", invalid="ignore"):
        se = arr.std(axis=axis, ddof=1) / np.sqrt(n)
    return float(se) if np.ndim(se) == 0 else se


def mean_se(x: Any, axis: int = 0) -> tuple[Any, Any]:
    """(mean, standard error) over independent replicas along ``axis``; (+inf, +inf) when n < 2."""
    arr = np.asarray(x, dtype=np.float64)
    se = standard_error(arr, axis)
    if arr.shape[axis] < 2:
        return (np.inf if np.ndim(se) == 0 else np.full_like(se, np.inf)), se
    with np.errstate(over="ignore", invalid="ignore"):
        m = arr.mean(axis=axis)
    return (float(m) if np.ndim(m) == 0 else m), se


def mean_se_kept(x: Any, drop: Any) -> tuple[float, float, float]:
    """(mean, SE, dropped fraction) of a per-replica scalar over the replicas not ``drop``-ped (the diverged
    ones); (+inf, +inf, fraction) when fewer than two are kept or more than
    :data:`~noiseprobe.core.divergence.MAX_DIVERGED_FRACTION` are dropped (the survivors are then a biased
    sample: not measurable)."""
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    bad = np.asarray(drop, dtype=bool).reshape(-1)
    frac = float(bad.mean()) if bad.size else 0.0
    if frac > MAX_DIVERGED_FRACTION:
        return np.inf, np.inf, frac
    m, se = mean_se(v[~bad])
    return float(m), float(se), frac


def clustered_chi2(fractions: Any, probs: Any) -> tuple[float, int, float]:
    """Goodness of fit of binned samples from R independent chains (clusters) to bin probabilities ``probs``.

    ``fractions`` (R, B): per-chain fraction of that chain's samples in each bin. Samples within a chain may
    be autocorrelated; chains are independent, so the covariance of the pooled fractions f̄ is estimated
    across chains, V = cov(f_r)/R. Wald statistic on the first B − 1 bins (the last is fixed by Σ = 1):
    T² = (f̄ − p)ᵀ V⁻¹ (f̄ − p), with Hotelling's small-sample law (R − d)/(d(R − 1))·T² ~ F(d, R − d),
    d = B − 1. Returns (T², d, p-value). Needs R > B.
    """
    from scipy import stats

    from noiseprobe.core.errors import ConfigError

    f = np.asarray(fractions, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if f.ndim != 2 or p.shape != (f.shape[1],):
        raise ConfigError("fractions", f"array of shape {f.shape}", f"(chains, bins) with bins = len(probs) = {p.size}")
    R, B = f.shape
    d = B - 1
    if R <= B:
        raise ConfigError("chains", R, f"> {B} (number of bins) for the clustered χ² test")
    r = f.mean(0)[:d] - p[:d]
    V = np.cov(f[:, :d], rowvar=False) / R
    t2 = float(r @ np.linalg.lstsq(V, r, rcond=None)[0])
    return t2, d, float(stats.f.sf((R - d) / (d * (R - 1)) * t2, d, R - d))


def group_mean_se(frame: pd.DataFrame, column: str, by: str, *, keep: pd.Series | None = None) -> pd.DataFrame:
    """Mean, sd (ddof = 1), count ``n`` and standard error ``se = sd/√n`` of ``column`` per value of ``by``.

    ``keep``: a boolean mask of the rows to use (e.g. replicas that have not diverged). The index is every
    value of ``by`` in ``frame``; groups with no kept row have mean NaN and n = 0.
    """
    rows = frame if keep is None else frame[keep]
    g = rows.groupby(by)[column]
    out: pd.DataFrame = pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1), "n": g.count()})
    out = out.reindex(np.unique(frame[by]))
    out["n"] = out["n"].fillna(0)
    out["se"] = out["sd"] / np.sqrt(out["n"])
    return out


def worst_deviation(measured: ArrayLike, se: ArrayLike, predicted: ArrayLike) -> tuple[float, float, list[float]]:
    """Largest |measured − predicted| over the points, the standard error at that point, and every signed
    deviation. NaN (not measurable) when any point is NaN."""
    m, p = np.asarray(measured, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if m.shape != p.shape:
        raise ValueError(f"worst_deviation: {m.shape} measured values against {p.shape} predicted ones")
    errs = [float(a) - float(b) for a, b in zip(m, p)]
    ses = [float(s) for s in np.asarray(se, dtype=np.float64)]
    if not errs or not np.all(np.isfinite(errs)):
        return float("nan"), float("nan"), errs
    i = int(np.argmax(np.abs(errs)))
    return abs(errs[i]), ses[i], errs


def loglog_slope(x: ArrayLike, y: ArrayLike, se_y: ArrayLike) -> tuple[float, float]:
    """Least-squares slope of log y against log x, and its standard error from the standard errors of y
    (delta method, ``se(log y) = se_y/y``; the x are exact). NaN when any y is not positive and finite."""
    lx, yv, sv = (
        np.log(np.asarray(x, dtype=np.float64)),
        np.asarray(y, dtype=np.float64),
        np.asarray(se_y, dtype=np.float64),
    )
    if len(lx) < 2 or not (np.all(np.isfinite(yv)) and np.all(yv > 0)):
        return float("nan"), float("nan")
    c = (lx - lx.mean()) / ((lx - lx.mean()) ** 2).sum()
    slope = float(np.polyfit(lx, np.log(yv), 1)[0])
    return slope, float(np.sqrt(np.sum((c * sv / yv) ** 2)))


__all__ = [
    "clustered_chi2",
    "group_mean_se",
    "loglog_slope",
    "mean_se",
    "mean_se_kept",
    "standard_error",
    "worst_deviation",
]
