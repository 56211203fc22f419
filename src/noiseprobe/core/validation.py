"""The one home of input validators and of the divergence threshold.

Scalar validators return the value in a canonical type or raise :class:`ConfigError` naming the field,
the value and what is allowed. Array validators (matrices, learning rates) live here too.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any

import numpy as np

from noiseprobe.core.errors import ConfigError

#: a replica has diverged when any coordinate is non-finite or exceeds this in absolute value
DIVERGED: float = 1e8


def is_diverged(x: np.ndarray, axis: int | tuple[int, ...] | None = None) -> np.ndarray:
    """Non-finite or |x| > :data:`DIVERGED` anywhere along ``axis`` (default: everywhere)."""
    x = np.asarray(x)
    return ~np.all(np.isfinite(x) & (np.abs(x) <= DIVERGED), axis=axis)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_real(field: str, value: Any, *, lo: float | None = None, hi: float | None = None,
               lo_open: bool = False, hi_open: bool = False) -> float:
    """Return ``float(value)`` if it is a finite real in the stated range, else raise ConfigError."""
    lo_s = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
    hi_s = "" if hi is None else (f"< {hi}" if hi_open else f"<= {hi}")
    allowed = "a finite number" + (" " + " and ".join(s for s in (lo_s, hi_s) if s) if lo_s or hi_s else "")
    if not _is_real(value):
        raise ConfigError(field, value, allowed)
    v = float(value)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ConfigError(field, value, allowed)
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ConfigError(field, value, allowed)
    return v


def check_int(field: str, value: Any, *, lo: int | None = None, hi: int | None = None) -> int:
    """Return ``value`` as an int if it is an integer (Python or NumPy) in [lo, hi], else raise ConfigError."""
    rng = " ".join(s for s in ((f">= {lo}" if lo is not None else ""), (f"<= {hi}" if hi is not None else "")) if s)
    allowed = "an integer" + (" " + rng.replace(" <=", " and <=") if rng else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(field, value, allowed)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(field, value, allowed)
    return int(value)


def check_choice(field: str, value: Any, choices: Collection[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise ConfigError."""
    if value not in choices:
        raise ConfigError(field, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


def check_array(field: str, value: Any, *, last_dim: int | None = None, finite: bool = True) -> np.ndarray:
    """``value`` as a float64 array (at least 1-d when ``last_dim`` is given, with that last dimension),
    all finite unless ``finite=False``; else ConfigError."""
    shape = "an array of numbers" + ("" if last_dim is None else f" of shape (..., {last_dim})")
    allowed = shape + (", all finite" if finite else "")
    if hasattr(value, "detach"):  # a torch tensor on any device
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(field, value, allowed) from None
    if last_dim is not None and (arr.ndim == 0 or arr.shape[-1] != last_dim):
        raise ConfigError(field, f"shape {arr.shape}", allowed)
    if finite and not np.isfinite(arr).all():
        raise ConfigError(field, arr.tolist() if arr.size <= 16 else f"shape {arr.shape} with non-finite entries",
                          allowed)
    return arr


def check_psd_matrix(field: str, value: Any, n: int, *, atol: float = 1e-12) -> np.ndarray:
    """``value`` as a symmetric positive semi-definite float64 (n, n) array (eigenvalues ≥ −atol·max(1, |C|));
    else ConfigError naming the field and the fault."""
    allowed = f"a symmetric positive semi-definite {n}x{n} matrix of finite numbers"
    c = check_array(field, value)
    if c.shape != (n, n):
        raise ConfigError(field, c.tolist() if c.size <= 16 else f"shape {c.shape}", allowed)
    scale = max(1.0, float(np.abs(c).max()))
    if not np.allclose(c, c.T, rtol=0.0, atol=atol * scale):
        raise ConfigError(field, c.tolist(), allowed + " (it is not symmetric)")
    if np.linalg.eigvalsh(c).min() < -atol * scale:
        raise ConfigError(field, c.tolist(), allowed + " (it has a negative eigenvalue)")
    return c
