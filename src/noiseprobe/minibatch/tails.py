"""Power-law tail of the stationary distribution of 1d SGD (paper 002, Sec. 6.6, App. D.3, Prop. 7).

Setting: 1d linear regression with label noise, loss ``ℓ = ½(wx − y)²`` (the ½ is included, so the
Hessian is ``a = E x²``), x ~ N(0, a), minibatches of S samples drawn **with replacement** from an
infinite data set (online, N → ∞). The update is then exactly

    w_t = (1 − λ h_t) w_{t−1} + λ ξ_t,     h_t = a χ²_S / S,     ξ_t | h_t ~ N(0, σ² h_t / S),

a random-coefficient AR(1) whose stationary law has a power-law tail ``P(|w| > x) ~ x^(−β)`` (eq. 91:
p(w) ~ |w|^(−(1+β)); β is the smallest divergent moment of w).

Three values of β are provided:

* :func:`tail_index_continuous` — the continuous-time (SDE) value β_c = 2S/(aλ) + 1 (Mori et al. 2021,
  quoted with eq. 91). The paper says it is correct as λ → 0; for Gaussian inputs the exact index tends to
  0.898 β_c instead (see :func:`tail_index_exact`).
* :func:`tail_index_eq93` — **the paper's formula**, Prop. 7 / eq. (93)–(94): β = 2S/(aλ) − S, obtained by
  equating the variance of the Student-t-like law (90) with the exact variance of Theorem 2 (eq. 92).
  **It is an approximation**: exact only at β = 2 (λa = 2S/(S+2)); for S = 1 within ~8% for 0.25 <= aλ <= 1
  but 30% too small at aλ = 1.5; 15–35% too large for S >= 4 (docs/theory/minibatch_noise.md §10, §15.5).
* :func:`tail_index_exact` — **the corrected, exact value** (Kesten 1973; Goldie 1991): the positive root
  β_K of E|1 − λ a χ²_S/S|^β = 1 (:func:`kesten_moment`). It exists when the Lyapunov exponent
  E log|1 − λh| (:func:`lyapunov_exponent`) is negative; otherwise the chain has no stationary law.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike
from scipy import integrate, optimize, stats

from noiseprobe.core.validation import check_int, check_real


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
    return stats.t.pdf(np.asarray(w, dtype=np.float64), df=beta, scale=scale)


def _log_chi_pdf(s: float, S: int) -> float:
    """log density of the χ distribution with S degrees of freedom (s = √t, t ~ χ²_S)."""
    return (S - 1) * math.log(s) - s * s / 2 - (S / 2 - 1) * math.log(2.0) - math.lgamma(S / 2)


_QUAD = dict(epsabs=0.0, epsrel=1e-12, limit=200)


def _log_kesten_moment(beta: float, c: float, S: int) -> float:
    """log E|1 − c t|^β, t ~ χ²_S, β > 0: quadrature in s = √t (smooth at 0 for every S), split at the kink
    s0 = 1/√c and, beyond it, at the integrand's peak, by whose value that part is rescaled (no overflow)."""
    s0 = 1.0 / math.sqrt(c)

    def expo(s: float) -> float:  # log of |1 − cs²|^β · pdf_χ_S(s)
        d = abs(1.0 - c * s * s)
        return -math.inf if d == 0.0 or s == 0.0 else beta * math.log(d) + _log_chi_pdf(s, S)

    inner = integrate.quad(lambda s: math.exp(expo(s)), 0.0, s0, **_QUAD)[0]
    s_hi = 2 * max(s0, math.sqrt(2 * beta + S - 1)) + 10.0
    s_pk = optimize.minimize_scalar(lambda s: -expo(s), bounds=(s0, s_hi), method="bounded", options={"xatol": 1e-8}).x
    M = expo(s_pk)
    f = lambda s: math.exp(expo(s) - M)  # noqa: E731
    outer = integrate.quad(f, s0, s_pk, **_QUAD)[0] + integrate.quad(f, s_pk, math.inf, **_QUAD)[0]
    return float(np.logaddexp(math.log(inner) if inner > 0 else -math.inf, M + math.log(outer)))


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

    opts = dict(_QUAD, epsabs=1e-14)
    return integrate.quad(f, 0.0, s0, **opts)[0] + integrate.quad(f, s0, math.inf, **opts)[0]


def _tail_index_exact_scalar(lr: float, batch_size: int, a: float) -> float:
    lr, S, a = _check(lr, batch_size, a)
    if lyapunov_exponent(lr=lr, batch_size=S, a=a) >= 0:
        return math.nan
    c = lr * a / S
    logm = lambda b: _log_kesten_moment(b, c, S)  # noqa: E731
    # log m(β) is convex with log m(0) = 0 and slope E log|1 − λh| < 0 at 0: one positive root
    lo = 1e-2
    while logm(lo) >= 0:
        lo /= 2
        if lo < 1e-12:
            return math.nan
    hi = max(2 * lo, 1.0)
    while logm(hi) <= 0:
        lo, hi = hi, 2 * hi
        if hi > 1e7:
            return math.inf
    return float(optimize.brentq(logm, lo, hi, xtol=1e-12, rtol=1e-12))


def tail_index_exact(*, lr: ArrayLike, batch_size: ArrayLike, a: ArrayLike = 1.0) -> float | np.ndarray:
    """Exact tail index of 1d online SGD (corrected value; not in the paper): the root β_K > 0 of

        E |1 − λ a χ²_S / S|^β = 1                        (Kesten–Goldie; docs/theory/minibatch_noise.md §10)

    NaN where E log|1 − λh| >= 0 (no stationary law). β_K = 2 exactly at λa = 2S/(S+2), where it meets
    eq. (93); elsewhere eq. (93) differs (e.g. S = 10, aλ = 1: β_K = 7.51 vs 10; S = 1, aλ = 1.5: 0.477 vs
    0.333). As λ → 0, β_K → u* S/(2aλ) with u*(log u* − 1) = 1 (u* = 3.591): rare batches with λh > 2 set
    the tail, and β_K/β_c → 0.898, not 1. Cost: ~20–40 ms per point (adaptive quadrature + Brent).
    """
    return _elementwise(_tail_index_exact_scalar, lr, batch_size, a)


__all__ = [
    "tail_index_continuous",
    "tail_index_eq93",
    "tail_index_exact",
    "kesten_moment",
    "lyapunov_exponent",
    "student_t_variance",
    "student_t_pdf",
]
