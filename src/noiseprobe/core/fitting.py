"""Generic fitting helpers: e-fold crossing times, exponential-decay fits, level crossings, bootstrap.

Conventions: curves are arrays of shape (T,) or (R, T) sampled at times ``t`` of shape (T,); the first
sample is the initial value. All routines are NaN-tolerant and return NaN where the quantity does not
exist (no crossing, failed fit) instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy.optimize import curve_fit

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_int, check_real


def _as_rows(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    single = y.ndim == 1
    y2 = y[None, :] if single else y
    if y2.ndim != 2 or t.ndim != 1 or y2.shape[1] != t.shape[0]:
        raise ConfigError("y", f"shape {y.shape}", f"(T,) or (R, T) with T = len(t) = {t.shape[0]}")
    if t.shape[0] < 2:
        raise ConfigError("t", f"length {t.shape[0]}", "at least 2 sample times")
    return t, y2, single


def efold_time(t: np.ndarray, y: np.ndarray, k: float = 1.0) -> np.ndarray:
    """First time at which ``y/y[..., 0] <= exp(-k)``, per row; NaN if never.

    Between the two bracketing samples the crossing is interpolated linearly in ``log y`` (exact for
    an exponential), or linearly in ``y`` when the later sample is not positive. ``y`` should be a
    positive quantity (a norm, a loss excess). Returns shape () for 1-D input, (R,) for 2-D.
    """
    k = check_real("k", k, lo=0.0, lo_open=True)
    t, y2, single = _as_rows(t, y)
    ratio = y2 / y2[:, :1]
    level = np.exp(-k)
    below = np.nan_to_num(ratio, nan=np.inf) <= level
    hit = below.any(axis=1) & (y2[:, 0] > 0)
    j = np.where(hit, below.argmax(axis=1), 1)
    j = np.maximum(j, 1)  # ratio[:, 0] = 1 > level, so j >= 1 whenever hit
    rows = np.arange(y2.shape[0])
    r0, r1 = ratio[rows, j - 1], ratio[rows, j]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac_log = (np.log(r0) + k) / (np.log(r0) - np.log(r1))
        frac_lin = (r0 - level) / (r0 - r1)
    frac = np.where(r1 > 0, frac_log, frac_lin)
    out = np.where(hit, t[j - 1] + np.clip(frac, 0.0, 1.0) * (t[j] - t[j - 1]), np.nan)
    return out[0] if single else out


def crossing(x: np.ndarray, f: np.ndarray, level: float = 0.5, *, log_x: bool = True) -> float:
    """The x at which ``f`` first reaches ``level`` from below (f[i] < level <= f[i+1]).

    ``x`` must be increasing; the crossing is interpolated linearly in f against log x (``log_x``) or
    x. NaN if ``f`` never reaches ``level`` or already starts at or above it.
    """
    x = np.asarray(x, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    if x.shape != f.shape or x.ndim != 1:
        raise ConfigError("f", f"shape {f.shape}", f"the shape of x, {x.shape}, one-dimensional")
    level = check_real("level", level)
    if log_x and x.size and not (x > 0).all():
        raise ConfigError("x", x.tolist(), "positive values when log_x=True")
    above = f >= level
    if x.size == 0 or not above.any() or above[0]:
        return float("nan")
    i = int(above.argmax())
    u = np.log(x) if log_x else x
    frac = (level - f[i - 1]) / (f[i] - f[i - 1])
    v = u[i - 1] + frac * (u[i] - u[i - 1])
    return float(np.exp(v) if log_x else v)


@dataclass(frozen=True)
class ExpFit:
    """Least-squares fit of ``y = A exp(-t/tau) + C`` (C = 0 without offset); arrays of shape (R,)."""

    tau: np.ndarray
    tau_err: np.ndarray
    amplitude: np.ndarray
    offset: np.ndarray
    offset_err: np.ndarray
    t_start: np.ndarray
    t_stop: np.ndarray


def _fit_window(t: np.ndarray, y: np.ndarray, c: float, window: tuple[float, float] | None) -> np.ndarray:
    """Mask of the samples from the first one whose excess over ``c`` falls below window[0] of the
    initial excess to the first one below window[1] (docs/theory/noise_injection_nodes.md §7, 'secondary' fit)."""
    finite: np.ndarray = np.isfinite(y)
    if window is None:
        return finite
    excess = (y - c) / (y[0] - c)
    hi, lo = window
    start = int(np.argmax(excess <= hi)) if (excess <= hi).any() else 0
    stop = int(np.argmax(excess <= lo)) if (excess <= lo).any() else len(y) - 1
    mask = np.zeros(len(y), dtype=bool)
    mask[max(start - 1, 0) : stop + 1] = True
    kept: np.ndarray = mask & finite
    return kept


def fit_exponential(
    t: np.ndarray, y: np.ndarray, *, offset: bool = True, window: tuple[float, float] | None = None
) -> ExpFit:
    """Fit ``A exp(-t/tau) + C`` per row with ``scipy.optimize.curve_fit`` (unweighted least squares).

    ``tau_err`` is the standard error from the fit covariance (residual variance scaled,
    ``absolute_sigma=False``). ``offset=False`` fixes C = 0. ``window=(0.9, 0.1)`` fits only the span
    from the first sample whose excess over C (C estimated as the median of the last 10 % of the row,
    or 0 without offset) drops below 90 % of its initial value to the first one within 10 % of C.
    Rows whose fit fails or has fewer than 3 (4 with offset) points give NaN. Returns shape (R,) arrays
    (R = 1 for 1-D input).
    """
    t, y2, _ = _as_rows(t, y)
    if window is not None and not (len(window) == 2 and 0 < window[1] < window[0] < 1):
        raise ConfigError("window", window, "a pair (hi, lo) with 0 < lo < hi < 1, e.g. (0.9, 0.1)")
    n_par = 3 if offset else 2
    res = np.full((7, y2.shape[0]), np.nan)
    for r, row in enumerate(y2):
        c_guess = float(np.nanmedian(row[-max(1, len(row) // 10) :])) if offset else 0.0
        mask = _fit_window(t, row, c_guess, window)
        if mask.sum() <= n_par or not np.isfinite(row[0]) or row[0] == c_guess:
            continue
        tt, yy = t[mask], row[mask]
        a0 = yy[0] - c_guess
        te = efold_time(tt - tt[0], np.abs(yy - c_guess)) if np.all(yy - c_guess != 0) else np.nan
        tau0 = float(te) if np.isfinite(te) and te > 0 else 0.5 * (tt[-1] - tt[0])

        def model(x: np.ndarray, a: float, tau: float, c: float = 0.0) -> np.ndarray:
            fx: np.ndarray = a * np.exp(-(x - tt[0]) / tau) + c  # noqa: B023 (used only in this iteration)
            return fx

        p0 = [a0, tau0, c_guess] if offset else [a0, tau0]
        try:
            p, cov = curve_fit(model, tt, yy, p0=p0, maxfev=5000)
        except (RuntimeError, ValueError):
            continue
        err = np.sqrt(np.diag(cov)) if np.all(np.isfinite(cov)) else np.full(n_par, np.nan)
        # amplitude is reported at t = 0: A(0) = A(tt[0]) exp(tt[0]/tau)
        res[:, r] = [
            p[1],
            err[1],
            p[0] * np.exp(tt[0] / p[1]),
            p[2] if offset else 0.0,
            err[2] if offset else 0.0,
            tt[0],
            tt[-1],
        ]
    return ExpFit(*res)


class Reduction(Protocol):
    """A NumPy-style reduction: ``stat(a)`` a scalar, ``stat(a, axis=1)`` one value per row."""

    def __call__(self, a: np.ndarray, /, axis: int | None = ...) -> Any: ...


def bootstrap(
    values: np.ndarray, stat: Reduction = np.median, *, n_boot: int = 400, seed: int = 0, ci: float = 0.68
) -> tuple[float, float, float, float]:
    """(estimate, standard error, CI low, CI high) of ``stat`` over the finite entries of ``values`` by
    resampling them with replacement ``n_boot`` times (percentile interval of level ``ci``). ``stat``
    must accept ``axis=`` like the NumPy reductions (all resamples are evaluated in one call)."""
    n_boot = check_int("n_boot", n_boot, lo=2)
    ci = check_real("ci", ci, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (float("nan"),) * 4
    rng = np.random.default_rng(seed)
    boots = np.asarray(stat(v[rng.integers(0, v.size, (n_boot, v.size))], axis=1))
    lo, hi = np.quantile(boots, [(1 - ci) / 2, (1 + ci) / 2])
    return float(stat(v)), float(boots.std(ddof=1)), float(lo), float(hi)
