"""Power-law tail of the stationary distribution of 1d SGD (paper 002, Sec. 6.6, App. D.3, Prop. 7).

Setting: 1d linear regression with label noise, loss ``ℓ = ½(wx − y)²`` (the ½ is included, so the
Hessian is ``a = E x²``), x ~ N(0, a), minibatches of S samples drawn **with replacement** from an
infinite data set (online, N → ∞). The update is then exactly

    w_t = (1 − λ h_t) w_{t−1} + λ ξ_t,     h_t = a χ²_S / S,     ξ_t | h_t ~ N(0, σ² h_t / S),

a random-coefficient AR(1) whose stationary law has a power-law tail ``P(|w| > x) ~ x^(−β)`` (eq. 91:
p(w) ~ |w|^(−(1+β)); β is the smallest divergent moment of w).

Three values of β are provided:

* :func:`tail_index_continuous` — the continuous-time (SDE) value β_c = 2S/(aλ) + 1 (Mori et al. 2021,
  quoted with eq. 91). The paper (App. D.3) says it is correct as λ → 0; for Gaussian inputs the exact
  index tends to u*S/(2aλ) = (u*/4)·β_c instead (u* = 3.5911, u*(log u* − 1) = 1), so β_c stays
  4/u* − 1 = 11.4 % too large (:func:`tail_index_small_lr`, docs/theory/tail_index_limit.md).
* :func:`tail_index_eq93` — **the paper's formula**, Prop. 7 / eq. (93)–(94): β = 2S/(aλ) − S, obtained by
  equating the variance of the Student-t-like law (90) with the exact variance of Theorem 2 (eq. 92).
  **It is an approximation**: exact only at β = 2 (λa = 2S/(S+2)); for S = 1 within ~8% for 0.25 <= aλ <= 1
  but 30% too small at aλ = 1.5; 15–35% too large for S >= 4 (docs/theory/minibatch_noise.md §10, §15.5).
* :func:`tail_index_exact` — **the corrected, exact value** (Kesten 1973; Goldie 1991): the positive root
  β_K of E|1 − λ a χ²_S/S|^β = 1 (:func:`kesten_moment`). It exists when the Lyapunov exponent
  E log|1 − λh| (:func:`lyapunov_exponent`) is negative; otherwise the chain has no stationary law.

:func:`tail_index_small_lr` gives its small-λ expansion: the limit, the leading correction and the size
of the next term.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import integrate, optimize, stats

from noiseprobe.core.errors import NumericalError
from noiseprobe.core.validation import check_array, check_int, check_real


def _check(lr: float, batch_size: int, a: float) -> tuple[float, int, float]:
    return (
        check_real("lr", lr, lo=0.0, lo_open=True),
        check_int("batch_size", batch_size, lo=1),
        check_real("a", a, lo=0.0, lo_open=True),
    )


def _elementwise(fn: Callable[..., float], *args: ArrayLike) -> float | np.ndarray:
    """Apply a scalar function over broadcast array arguments; a float when all arguments are scalars."""
    arrs = np.broadcast_arrays(*[np.asarray(x) for x in args])
    out = np.array([fn(*(x.item() for x in xs)) for xs in zip(*(a.ravel() for a in arrs))], dtype=np.float64)
    return float(out[0]) if arrs[0].ndim == 0 else out.reshape(arrs[0].shape)


def _continuous(lr: float, batch_size: int, a: float) -> float:
    lr, S, a = _check(lr, batch_size, a)
    return 2 * S / (a * lr) + 1


def _eq93(lr: float, batch_size: int, a: float) -> float:
    lr, S, a = _check(lr, batch_size, a)
    return 2 * S / (a * lr) - S


def tail_index_continuous(*, lr: ArrayLike, batch_size: ArrayLike, a: ArrayLike = 1.0) -> float | np.ndarray:
    """Continuous-time tail index β_c = 2S/(aλ) + 1 (Mori et al. 2021; paper eq. 91 and Sec. 6.6).

    It is the tail of the stationary law of dw = −λaw dt + λ√C dB with the loss-proportional noise
    C(w) = 2L(w)a/S, L = ½(aw² + σ²): that law is eq. (90) with β = β_c.
    """
    return _elementwise(_continuous, lr, batch_size, a)


def tail_index_eq93(*, lr: ArrayLike, batch_size: ArrayLike, a: ArrayLike = 1.0) -> float | np.ndarray:
    """The paper's discrete-time tail index, Prop. 7, eq. (93)/(94): β = 2S/(aλ) − S.

    Approximate (see module docstring); exact only at β = 2. Use :func:`tail_index_exact` for the true value.
    """
    return _elementwise(_eq93, lr, batch_size, a)


def student_t_variance(beta: float, *, sigma: float = 1.0, a: float = 1.0) -> float:
    """Variance of the law p(w) ∝ (σ² + a w²)^(−(1+β)/2) (eq. 90): σ² / (a (β − 2)) for β > 2, else inf.

    This is the left-hand side of eq. (92) (proof of Prop. 7, eqs. 95–97); equating it with Theorem 2's
    λσ²/(2S − (S+2)λa) gives eq. (93).
    """
    beta = check_real("beta", beta, lo=0.0, lo_open=True)
    sigma = check_real("sigma", sigma, lo=0.0)
    a = check_real("a", a, lo=0.0, lo_open=True)
    return sigma**2 / (a * (beta - 2)) if beta > 2 else math.inf


def student_t_pdf(w: ArrayLike, beta: float, *, sigma: float = 1.0, a: float = 1.0) -> np.ndarray:
    """Normalised density of eq. (90), p(w) ∝ (σ² + a w²)^(−(1+β)/2): a Student t with β degrees of freedom
    and scale σ/√(aβ). Its tail is P(|w| > x) ~ x^(−β) (eq. 91)."""
    beta = check_real("beta", beta, lo=0.0, lo_open=True)
    sigma = check_real("sigma", sigma, lo=0.0, lo_open=True)
    a = check_real("a", a, lo=0.0, lo_open=True)
    scale = sigma / math.sqrt(a * beta)
    out: np.ndarray = stats.t.pdf(np.asarray(w, dtype=np.float64), df=beta, scale=scale)
    return out


def _log_chi_pdf(s: float, S: int) -> float:
    """log density of the χ distribution with S degrees of freedom (s = √t, t ~ χ²_S)."""
    power = 0.0 if S == 1 else (S - 1) * math.log(s)
    return power - s * s / 2 - (S / 2 - 1) * math.log(2.0) - math.lgamma(S / 2)


_QUAD = dict(epsabs=0.0, epsrel=1e-12, limit=200)
#: the largest index :func:`tail_index_exact` brackets (quadrature still at ~1e-12 there); beyond it
#: (aλ/S ≲ 1.8·10⁻¹²) it raises NumericalError: use :func:`tail_index_small_lr`, exact to ~(aλ)²/S there
BETA_MAX = 1e12
#: u* solves u (log u − 1) = 1: the small-λ index of Gaussian inputs is β_K → u* S/(2aλ)
U_STAR: float = float(optimize.brentq(lambda u: u * (math.log(u) - 1) - 1, 2.0, 10.0, xtol=1e-15))
#: lim_{λ→0} β_c/β_K − 1 = 4/u* − 1 = 0.113858: the relative error of the continuous-time index as λ → 0
CONTINUOUS_LIMIT_ERROR: float = 4 / U_STAR - 1


def _log_piece(beta: float, c: float, S: int, lo: float, hi: float, x_pk: float) -> float:
    """log ∫_lo^hi |1 − cs²|^β χ_S(s) ds over one side of the kink s0 = 1/√c, where the log-integrand is
    concave with its maximum at s_pk = √x_pk ∈ [lo, hi]. Integrated in the displacement y = s − s_pk, the
    log-integrand taken relative to the peak, so that β·log|1 − cs²| and s²/2 (each ~β, up to 1e15) cancel
    exactly; split at the peak and ±30 widths (1/√(−second derivative)) so no quadrature node misses it."""
    s_pk = math.sqrt(x_pk)
    sign = 1.0 if c * x_pk > 1 else -1.0  # outer side: cs² − 1 > 0; inner side: 1 − cs² > 0
    d_pk = sign * (c * x_pk - 1)
    # the peak value; S = 1 on the inner side peaks at s = 0, where χ_1(0) = √(2/π)
    M = beta * math.log(d_pk) + _log_chi_pdf(s_pk, S) if s_pk > 0 else 0.5 * math.log(2 / math.pi)

    def rel(y: float) -> float:  # the integrand over its peak value
        q = y * (2 * s_pk + y)  # s² − s_pk²
        ratio = 1 + sign * c * q / d_pk
        if ratio <= 0.0 or s_pk + y <= 0.0:
            return 0.0
        shape = 0.0 if S == 1 else (S - 1) * math.log1p(y / s_pk)
        return math.exp(beta * math.log1p(sign * c * q / d_pk) + shape - q / 2)

    curv = 2 * beta * c * (1 + c * x_pk) / (1 - c * x_pk) ** 2 + (0.0 if S == 1 else (S - 1) / x_pk) + 1
    w = 30 / math.sqrt(curv)
    a, b = lo - s_pk, hi - s_pk
    cuts = sorted({a, b, 0.0, *(y for y in (-w, w) if a < y < b)})
    opts = dict(_QUAD, epsabs=1e-15 * w)  # the whole integral is >= ~w/30: 1e-15 of it, at most, absolute
    total = sum(integrate.quad(rel, u, v, **opts)[0] for u, v in zip(cuts, cuts[1:]))
    return M + math.log(total) if total > 0 else -math.inf


def _log_kesten_moment(beta: float, c: float, S: int) -> float:
    """log E|1 − c t|^β, t ~ χ²_S, β > 0: quadrature in s = √t on each side of the kink s0 = 1/√c, each
    around its own peak. The peaks are the roots x = s² of c x² − (2βc + (S − 1)c + 1) x + (S − 1) = 0 (the
    stationary points of β log|1 − cs²| + (S − 1) log s − s²/2): the smaller is inside, the larger outside."""
    B = 2 * beta * c + (S - 1) * c + 1
    root = math.sqrt(B * B - 4 * c * (S - 1))
    x_in, x_out = 2 * (S - 1) / (B + root), (B + root) / (2 * c)
    s0 = 1.0 / math.sqrt(c)
    inner = _log_piece(beta, c, S, 0.0, s0, x_in)
    outer = _log_piece(beta, c, S, s0, math.inf, x_out)
    return float(np.logaddexp(inner, outer))


def kesten_moment(beta: float, *, lr: float, batch_size: int, a: float = 1.0) -> float:
    """E|1 − λh|^β with h = a χ²_S / S (quadrature). Its root in β > 0 is the exact tail index."""
    beta = check_real("beta", beta, lo=0.0)
    lr, S, a = _check(lr, batch_size, a)
    return 1.0 if beta == 0 else math.exp(_log_kesten_moment(beta, lr * a / S, S))


def lyapunov_exponent(*, lr: float, batch_size: int, a: float = 1.0) -> float:
    """E log|1 − λh|, h = a χ²_S / S. Negative ⇔ the 1d chain has a stationary law (and a finite β_K)."""
    lr, S, a = _check(lr, batch_size, a)
    c = lr * a / S
    s0 = 1.0 / math.sqrt(c)

    def f(s: float) -> float:
        d = abs(1.0 - c * s * s)
        return 0.0 if d == 0.0 or s == 0.0 else math.log(d) * math.exp(_log_chi_pdf(s, S))

    # split at the kink and, on the mode's side of it, around the mode √(S − 1) of χ_S (s.d. < 0.71), so no
    # node misses the mass (a finite piece from the kink into a negligible integrand upsets QUADPACK)
    mode = math.sqrt(S - 1)
    near = (x for x in (mode - 40, mode, mode + 40) if x > 0 and (x < s0) == (mode < s0))
    cuts = sorted({0.0, s0, *near, math.inf})
    opts = dict(_QUAD, epsabs=1e-14)
    return float(sum(integrate.quad(f, u, v, **opts)[0] for u, v in zip(cuts, cuts[1:])))


def _out_of_range(c: float) -> NumericalError:
    return NumericalError(
        f"tail_index_exact: the index exceeds the computed range {BETA_MAX:.0e} at lr*a/batch_size = {c:.3g} "
        "(allowed >= ~1.8e-12); use tail_index_small_lr there"
    )


def _tail_index_exact_scalar(lr: float, batch_size: int, a: float) -> float:
    lr, S, a = _check(lr, batch_size, a)
    if lyapunov_exponent(lr=lr, batch_size=S, a=a) >= 0:
        return math.nan
    c = lr * a / S
    if U_STAR / (2 * c) > 2 * BETA_MAX:  # the limit alone is past the range (its correction is ~c·S·log(1/c) of it)
        raise _out_of_range(c)

    def logm(b: float) -> float:
        return _log_kesten_moment(b, c, S)

    # log m(β) is convex with log m(0) = 0 and slope E log|1 − λh| < 0 at 0: negative exactly below the one
    # positive root. Bracket it from half the small-λ limit u*/(2c) (or 1), halving or doubling.
    lo = hi = max(1.0, U_STAR / (4 * c))
    if logm(lo) >= 0:
        while logm(lo) >= 0:
            hi, lo = lo, lo / 2
            if lo < 1e-12:
                return math.nan
    else:
        while logm(hi) <= 0:
            if hi >= BETA_MAX:
                raise _out_of_range(c)
            lo, hi = hi, min(2 * hi, BETA_MAX)
    return float(optimize.brentq(logm, lo, hi, xtol=1e-12, rtol=1e-15))


@dataclass(frozen=True)
class SmallLrExpansion:
    """β_K = ``limit`` + ``correction`` + ``next_term`` + O((aλ)² log³), c = aλ/S (docs/theory/tail_index_limit.md).

    ``limit`` = u*S/(2aλ); ``correction`` = D₁ = [R_S + ((S − 1)/2) log c]/log u*, O(1) at S = 1 and
    O(S log 1/λ) for S > 1; ``next_term`` = c·D₂ = O(S·aλ·log² 1/λ): the error of ``value`` = limit +
    correction, to a relative O(aλ log(S/aλ)) of itself."""

    limit: float
    correction: float
    next_term: float

    @property
    def value(self) -> float:
        """The limit with its leading correction."""
        return self.limit + self.correction


def tail_index_small_lr(*, lr: float, batch_size: int, a: float = 1.0) -> SmallLrExpansion:
    """Small-λ expansion of the exact index β_K (Gaussian inputs) by Laplace's method on E|1 − λh|^β = 1
    (docs/theory/tail_index_limit.md, eqs. (L5)–(L9)): rare batches with λh ≈ 1 + u* set the root.

    β_K → u*S/(2aλ), so Mori et al.'s β_c = 2S/(aλ) + 1 (quoted with the paper's eq. 91, App. D.3) stays
    4/u* − 1 = 11.4 % too large; its relative error approaches that limit as O(λ) at S = 1 and
    O(λ log 1/λ) for S > 1. Valid for aλ ≪ 1 (checked against a 40-digit computation for aλ ≤ 0.1 and
    1 ≤ S ≤ 10⁴)."""
    lr, S, a = _check(lr, batch_size, a)
    c, u = lr * a / S, U_STAR
    u0, p, lu = 1 + u, S / 2 - 1, math.log(u)
    bulk = u0 ** (-S / 2)  # E e^{−κ* t}: the batches with λh < 1 at β = κ*/c
    Q = math.log1p(-bulk)
    A = -(S / 2) * math.log(2.0) - math.lgamma(S / 2) + 0.5 * math.log(4 * math.pi * u) + p * math.log(u0)
    D1 = (Q - A + (S - 1) / 2 * math.log(c)) / lu
    dQ = S * bulk / u0 / (1 - bulk)
    dA = 1 / u + (S - 2) / u0
    q1 = bulk * (u / 2) * S * (S + 2) / (2 * u0**2) / (1 - bulk)
    t1 = u * p * (p - 1) / u0**2 + 2 * p / u0 + 1 / (6 * u)
    D2 = (D1 * (dQ - dA) + q1 - t1 - D1 * D1 / u) / lu
    return SmallLrExpansion(limit=u / (2 * c), correction=D1, next_term=c * D2)


def tail_index_exact(*, lr: ArrayLike, batch_size: ArrayLike, a: ArrayLike = 1.0) -> float | np.ndarray:
    """Exact tail index of 1d online SGD (corrected value; not in the paper): the root β_K > 0 of

        E |1 − λ a χ²_S / S|^β = 1          (Kesten–Goldie; docs/theory/minibatch_noise.md §10)

    NaN where E log|1 − λh| >= 0 (no stationary law). β_K = 2 exactly at λa = 2S/(S+2), where it meets
    eq. (93); elsewhere eq. (93) differs (e.g. S = 10, aλ = 1: β_K = 7.51 vs 10; S = 1, aλ = 1.5: 0.477 vs
    0.333). As λ → 0, β_K → u*S/(2aλ) (u*(log u* − 1) = 1, u* = 3.5911): rare batches with λh > 2 set
    the tail, and β_c/β_K − 1 → 4/u* − 1 = 0.1139, not 0, approached as O(λ) at S = 1 and O(λ log 1/λ) for
    S > 1 (:func:`tail_index_small_lr`). Computed up to β = :data:`BETA_MAX` = 1e12 (to ~1e-15 relative up
    to 1e9, checked against 40-digit mpmath); beyond it a NumericalError. Cost: ~20–100 ms per point.
    """
    for field, value in (("lr", lr), ("batch_size", batch_size), ("a", a)):
        check_array(field, value, finite=False)  # numbers (each is then checked by range, by name)
    return _elementwise(_tail_index_exact_scalar, lr, batch_size, a)


__all__ = [
    "tail_index_continuous",
    "tail_index_eq93",
    "tail_index_exact",
    "tail_index_small_lr",
    "SmallLrExpansion",
    "U_STAR",
    "CONTINUOUS_LIMIT_ERROR",
    "kesten_moment",
    "lyapunov_exponent",
    "student_t_variance",
    "student_t_pdf",
]
