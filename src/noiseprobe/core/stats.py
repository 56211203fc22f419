"""Statistics helpers shared by experiments: means with standard errors over replicas.

The standard error of a mean of n independent replicas is ``sd/√n`` (sample sd, ddof = 1); it is what
:mod:`noiseprobe.core.checks` constructors take as ``se=``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike


def group_mean_se(frame: pd.DataFrame, column: str, by: str, *, keep: pd.Series | None = None) -> pd.DataFrame:
    """Mean, sd (ddof = 1), count ``n`` and standard error ``se = sd/√n`` of ``column`` per value of ``by``.

    ``keep``: a boolean mask of the rows to use (e.g. replicas that have not diverged). The index is every
    value of ``by`` in ``frame``; groups with no kept row have mean NaN and n = 0.
    """
    rows = frame if keep is None else frame[keep]
    g = rows.groupby(by)[column]
    out = pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1), "n": g.count()})
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
    lx, yv, sv = np.log(np.asarray(x, dtype=np.float64)), np.asarray(y, dtype=np.float64), np.asarray(se_y, dtype=np.float64)
    if len(lx) < 2 or not (np.all(np.isfinite(yv)) and np.all(yv > 0)):
        return float("nan"), float("nan")
    c = (lx - lx.mean()) / ((lx - lx.mean()) ** 2).sum()
    slope = float(np.polyfit(lx, np.log(yv), 1)[0])
    return slope, float(np.sqrt(np.sum((c * sv / yv) ** 2)))


__all__ = ["group_mean_se", "loglog_slope", "worst_deviation"]
