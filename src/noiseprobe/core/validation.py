"""The one home of input validators (the divergence rule lives in :mod:`noiseprobe.core.divergence`).

Scalar validators return the value in a canonical type or raise :class:`ConfigError` naming the field,
the value and what is allowed. Array validators (matrices, learning rates) live here too.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from noiseprobe.core.errors import ConfigError


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_real(
    field: str,
    value: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
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
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ConfigError(field, value, allowed)
    return v


def check_choice(field: str, value: Any, choices: Collection[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise ConfigError."""
    if value not in choices:
        raise ConfigError(field, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


# -- arrays ---------------------------------------------------------------------------------------------
def _float_array(name: str, value: Any, allowed: str, finite: bool = True) -> np.ndarray:
    """``value`` (a number, list, NumPy array or torch tensor on any device) as a float64 array; booleans,
    strings, objects and (when ``finite``) non-finite entries are refused."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        raise ConfigError(name, value, allowed) from None
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ConfigError(name, value if arr.ndim == 0 else f"array of dtype {arr.dtype}", allowed)
    arr = arr.astype(np.float64)
    if finite and not np.all(np.isfinite(arr)):
        raise ConfigError(name, value if arr.ndim == 0 else "array with non-finite entries", allowed)
    return arr


def check_scalar(field: str, value: Any, **bounds: Any) -> float:
    """:func:`check_real` that also takes NumPy scalars and 0-d arrays (float32, int64, ``np.array(1.0)``)."""
    if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0 and not isinstance(value, np.bool_):
        value = np.asarray(value).item()
    return check_real(field, value, **bounds)


def check_array(
    field: str, value: Any, ndim: int | None = None, *, last_dim: int | None = None, finite: bool = True
) -> np.ndarray:
    """A float64 array (from numbers, lists, NumPy or torch) with ``ndim`` dimensions and/or last dimension
    ``last_dim`` when given, all finite unless ``finite=False``; else ConfigError."""
    shape = (
        (f" {ndim}-d" if ndim is not None else "")
        + " array of numbers"
        + (f" of shape (..., {last_dim})" if last_dim is not None else "")
    )
    allowed = ("a finite" if finite else "a") + shape
    arr = _float_array(field, value, allowed, finite)
    if (ndim is not None and arr.ndim != ndim) or (
        last_dim is not None and (arr.ndim == 0 or arr.shape[-1] != last_dim)
    ):
        raise ConfigError(field, f"array of shape {arr.shape}", allowed)
    return arr


def check_vector(field: str, value: Any, dim: int) -> np.ndarray:
    """A finite float64 vector of length ``dim`` (a scalar when dim = 1)."""
    allowed = f"a finite vector of length {dim}"
    arr = _float_array(field, value, allowed).reshape(-1)
    if arr.shape != (dim,):
        raise ConfigError(field, f"array of shape {np.shape(value)}", allowed)
    return arr


def check_matrix(
    field: str, value: Any, dim: int | None = None, *, symmetric: bool = True, psd: bool = False
) -> np.ndarray:
    """A square float64 matrix from a scalar (×I_dim, 1×1 when dim is None) or a square array.

    ``symmetric``: asymmetry above 1e-10·max|M| is refused and the result is symmetrised; ``psd``: also
    positive semi-definite (smallest eigenvalue >= −1e-10·max|M|; a covariance, a Hessian of a minimum).
    """
    size = f" of size {dim}" if dim is not None else ""
    kind = "positive semi-definite" if psd else "symmetric" if symmetric else "square"
    allowed = f"a scalar or a finite {kind} matrix{size}"
    arr = _float_array(field, value, allowed)
    if arr.ndim == 0:
        arr = float(arr) * np.eye(dim or 1)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0 or (dim is not None and arr.shape[0] != dim):
        raise ConfigError(field, f"array of shape {arr.shape}", allowed)
    scale = 1e-10 * max(1.0, float(np.abs(arr).max(initial=0.0)))
    if symmetric or psd:
        if np.abs(arr - arr.T).max(initial=0.0) > scale:
            raise ConfigError(field, "non-symmetric matrix", allowed)
        arr = (arr + arr.T) / 2
    if psd and arr.size:
        low = float(np.linalg.eigvalsh(arr).min())
        if low < -scale:
            raise ConfigError(field, f"matrix with eigenvalue {low:.3g}", allowed)
    return arr


def check_lr(
    lr: Any, dim: int, *, field: str = "lr", replicas: int | None = None, symmetric: bool = True
) -> tuple[np.ndarray, float | None]:
    """The learning rate as ``(Λ, λ)``: a scalar λ > 0 gives ``(λ·I_dim, λ)``; a (dim, dim) matrix gives
    ``(Λ, None)`` (symmetric unless ``symmetric=False``); with ``replicas=R`` a vector of R scalars > 0
    (one per replica) gives ``(vector, None)``. Booleans and non-finite values are refused."""
    per = f", {replicas} positive numbers (one per replica)" if replicas is not None else ""
    allowed = f"a number > 0{per} or a finite {'symmetric ' if symmetric else ''}{dim}x{dim} matrix"
    arr = _float_array(field, lr, allowed)
    if arr.ndim == 0:
        return check_scalar(field, float(arr), lo=0.0, lo_open=True) * np.eye(dim), float(arr)
    if replicas is not None and arr.shape == (replicas,):
        if arr.min() <= 0:
            raise ConfigError(field, f"vector with minimum {arr.min():.3g}", allowed)
        return arr, None
    if arr.shape != (dim, dim):
        raise ConfigError(field, f"array of shape {arr.shape}", allowed)
    lam = check_matrix(field, arr, dim, symmetric=symmetric)
    low = float(np.linalg.eigvals(lam).real.min())
    if low <= 0:  # a step against the gradient somewhere: no learning rate
        raise ConfigError(field, f"matrix with eigenvalue {low:.3g}", "a positive definite matrix (eigenvalues > 0)")
    return lam, None


def check_callable(field: str, value: Any, allowed: str) -> Any:
    """``value`` if it is callable (a function, a module, a loss), else ConfigError."""
    if not callable(value):
        raise ConfigError(field, type(value).__name__, allowed)
    return value


def check_instance(field: str, value: Any, kind: type | tuple[type, ...], allowed: str) -> Any:
    """``value`` if it is an instance of ``kind`` (e.g. an ``nn.Module``), else ConfigError naming its type."""
    if not isinstance(value, kind):
        raise ConfigError(field, type(value).__name__, allowed)
    return value


def check_mapping(field: str, value: Any) -> dict[str, Any]:
    """A dict with string keys (overrides, options); None is the empty dict."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(
            field,
            type(value).__name__ if not isinstance(value, Mapping) else value,
            "a mapping of field names to values",
        )
    return dict(value)


def check_batch_size(value: Any, field: str = "batch_size") -> int:
    """A batch size S >= 1 (Python or NumPy integer)."""
    return check_int(field, value, lo=1)


def check_momentum(value: Any, field: str = "momentum") -> float:
    """Heavy-ball momentum μ ∈ [0, 1)."""
    return check_scalar(field, value, lo=0.0, hi=1.0, hi_open=True)
