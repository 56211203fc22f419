"""The one divergence rule, used by every simulator and trainer (issue 19; docs/failures.md, "Divergence").

A chain (a replica, run or trajectory) has **diverged** at the first step t at which its state x_t is
non-finite or leaves the ball

    max_i |x_t,i − ref_i| <= bound,      bound = factor · scale,

where ``ref`` (the minimiser, or 0) and ``scale`` (the problem's own size: its stationary scale, its start,
its initial loss) are derived by each engine from its problem, and ``factor`` is :data:`FACTOR` unless
the engine's stationary law is heavy-tailed (:data:`HEAVY_TAIL_FACTOR`). The step is recorded with the chain
(−1: never); the chain is frozen or dropped and left out of every statistic. Statistics and figures say how
many chains they dropped (:func:`dropped_note`); a check whose measurement depends on dropped chains reads
"not measurable" when more than :data:`MAX_DIVERGED_FRACTION` of them diverged (:func:`too_many_diverged`):
the survivors of a partly diverging ensemble are a biased sample of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: the multiple of the problem's scale a chain may reach before it counts as diverged
FACTOR: float = 1e8
#: the multiple for linear SGD, whose stationary laws have power-law tails p(|w|) ~ |w|^−(1+β) (paper 002
#: Sec. 6.6): at S = 1, λa = 1.5 (β = 0.48) 77 of 4000 stationary chains pass 10⁸ times their scale within
#: 3000 steps, 10 pass 10¹⁰, none 10¹²; the count falls as x^−β, so about 0.05 would pass 10¹⁵. A diverging
#: chain (Lyapunov exponent ℓ > 0) passes it within about 35/ℓ steps, and a kept chain's second moment stays
#: below 10³⁰ times its scale². Chains with β < 0.4 (λa near the Lyapunov bound at S = 1) are
#: indistinguishable from slowly diverging ones over a finite run: there some legitimate excursions count
#: as diverged
HEAVY_TAIL_FACTOR: float = 1e15
#: above this fraction of diverged chains, a statistic over the survivors is "not measurable"
MAX_DIVERGED_FRACTION: float = 0.1
_TINY = float(np.finfo(np.float64).tiny)


def bound(scale: Any, factor: float = FACTOR) -> np.ndarray:
    """``factor · scale`` (elementwise; a zero scale — nothing can move — gives the smallest positive bound)."""
    return factor * np.maximum(np.asarray(scale, dtype=np.float64), _TINY)


def diverged(x: Any, limit: Any, ref: Any = 0.0, axis: int | tuple[int, ...] | None = None) -> np.ndarray:
    """True where ``x`` is non-finite or ``|x − ref| > limit`` anywhere along ``axis`` (default: everywhere)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        inside = np.isfinite(x) & (np.abs(x - np.asarray(ref, dtype=np.float64)) <= limit)
    return np.asarray(~np.all(inside, axis=axis))


def first_step(outside: Any, steps: Any) -> np.ndarray:
    """Per chain, the first of ``steps`` (T,) at which ``outside`` (T, R) is True; −1 where never."""
    out = np.asarray(outside, dtype=bool)
    hit = out.any(0)
    return np.where(hit, np.asarray(steps, dtype=np.int64)[np.argmax(out, 0)], -1)


def dropped_note(n_diverged: int, n: int, what: str = "chains") -> str:
    """'3 of 200 chains diverged and are left out' (empty when none did)."""
    return f"{int(n_diverged)} of {int(n)} {what} diverged and are left out" if n_diverged else ""


def too_many_diverged(
    n_diverged: int, n: int, what: str = "chains", max_fraction: float = MAX_DIVERGED_FRACTION
) -> str | None:
    """The reason a statistic over the survivors is not measurable (more than ``max_fraction`` of ``n``
    diverged, or none is left), else None."""
    if n == 0 or n_diverged > max_fraction * n:
        return (
            f"{int(n_diverged)} of {int(n)} {what} diverged (more than {max_fraction:.0%}): "
            "the survivors are a biased sample"
        )
    return None


__all__ = [
    "FACTOR",
    "HEAVY_TAIL_FACTOR",
    "MAX_DIVERGED_FRACTION",
    "bound",
    "diverged",
    "first_step",
    "dropped_note",
    "too_many_diverged",
]
