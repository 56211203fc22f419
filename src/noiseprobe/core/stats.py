"""Statistics helpers shared by the experiments: means and standard errors over independent replicas."""

from __future__ import annotations

from typing import Any

import numpy as np


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
    """(mean, SE, dropped fraction) of a per-replica scalar over the replicas not ``drop``-ped (e.g. the
    diverged ones); (+inf, +inf, fraction) when fewer than two are kept."""
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    bad = np.asarray(drop, dtype=bool).reshape(-1)
    frac = float(bad.mean()) if bad.size else 0.0
    m, se = mean_se(v[~bad])
    return float(m), float(se), frac


__all__ = ["mean_se", "mean_se_kept", "standard_error"]
