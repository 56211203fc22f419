"""Power-law tail of the stationary distribution of 1d SGD (paper 002, Sec. 6.6, App. D.3, Prop. 7).

Setting: 1d linear regression with label noise, loss ``ℓ = ½(wx − y)²`` (the ½ is included, so the
Hessian is ``a = E x²``), x ~ N(0, a), minibatches of S samples drawn **with replacement** from an
infinite data set (online, N → ∞). The update is then exactly

    w_t = (1 − λ h_t) w_{t−1} + λ ξ_t,     h_t = a χ²_S / S,     ξ_t | h_t ~ N(0, σ² h_t / S),

a random-coefficient AR(1) whose stationary law has a power-law tail ``P(|w| > x) ~ x^(−β)`` (eq. 91:
p(w) ~ |w|^(−(1+β)); β is the smallest divergent moment of w).

Three values of β are provided:

* :func:`tail_index_continuous` — the continuous-time (SDE) value β_c = 2S/(aλ) + 1 (Mori et al. 2021,
  quoted with eq. 91). Correct only as λ → 0.
* :func:`tail_index_eq93` — **the paper's formula**, Prop. 7 / eq. (93)–(94): β = 2S/(aλ) − S, obtained by
  equating the variance of the Student-t-like law (90) with the exact variance of Theorem 2 (eq. 92).
  **It is an approximation**: exact only at β = 2 (λa = 2S/(S+2)), within ~8% for S = 1, 15–35% too large
  for S >= 4 (reference §10, §15.5).
* :func:`tail_index_exact` — **the corrected, exact value** (Kesten 1973; Goldie 1991): the positive root
  β_K of E|1 − λ a χ²_S/S|^β = 1 (:func:`kesten_moment`). It exists when the Lyapunov exponent
  E log|1 − λh| (:func:`lyapunov_exponent`) is negative; otherwise the chain has no stationary law.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy import integrate, optimize, special, stats

from noiseprobe.core.errors import check_int, check_real


def _check(lr: float, batch_size: int, a: float) -> tuple[float, int, float]:
    return (check_real("lr", lr, lo=0.0, lo_open=True), check_int("batch_size", batch_size, lo=1),
            check_real("a", a, lo=0.0, lo_open=True))


def _elementwise(fn, *args: ArrayLike) -> float | np.ndarray:
    """Apply a scalar function over broadcast array arguments; a float when all arguments are scalars."""
    arrs = np.broadcast_arrays(*[np.asarray(x) for x in args])
    out = np.array([fn(*(x.item() for x in xs)) for xs in zip(*(a.ravel() for a in arrs))], dtype=np.float64)
    return float(out[0]) if arrs[0].ndim == 0 else out.reshape(arrs[0].shape)


def tail_index_continuous(lr: ArrayLike, batch_size: ArrayLike, a: ArrayLike = 1.0) -> float | np.ndarray:
    """Continuous-time tail index β_c = 2S/(aλ) + 1 (Mori et al. 2021; paper eq. 91 and Sec. 6.6)."""
    return _elementwise(lambda lr_, s, a_: (lambda lr_, s, a_: 2 * s / (a_ * lr_) + 1)(*_check(lr_, s, a_)),
                        lr, batch_size, a)


def tail_index_eq93(lr: ArrayLike, batch_size: ArrayLike, a: ArrayLike = 1.0) -> float | np.ndarray:
    """The paper's discrete-time tail index, Prop. 7, eq. (93)/(94): β = 2S/(aλ) − S.

    Approximate (see module docstring); exact only at β = 2. Use :func:`tail_index_exact` for the true value.
    """
    return _elementwise(lambda lr_, s, a_: (lambda lr_, s, a_: 2 * s / (a_ * lr_) - s)(*_check(lr_, s, a_)),
                        lr, batch_size, a)


def student_t_variance(beta: float, sigma: float = 1.0, a: float = 1.0) -> float:
    """Variance of the law p(w) ∝ (σ² + a w²)^(−(1+β)/2) (eq. 90): σ² / (a (β − 2)) for β > 2, else inf.

    This is the left-hand side of eq. (92) (proof of Prop. 7, eqs. 95–97); equating it with Theorem 2's
    λσ²/(2S − (S+2)λa) gives eq. (93).
    """
    beta = check_real("beta", beta, lo=0.0, lo_open=True)
    sigma = check_real("sigma", sigma, lo=0.0)
    a = check_real("a", a, lo=0.0, lo_open=True)
    return sigma ** 2 / (a * (beta - 2)) if beta > 2 else math.inf


def student_t_pdf(w: ArrayLike, beta: float, sigma: float = 1.0, a: float = 1.0) -> np.ndarray:
    """Normalised density of eq. (90), p(w) ∝ (σ² + a w²)^(−(1+β)/2): a Student t with β degrees of freedom
    and scale σ/√(aβ). Its tail is P(|w| > x) ~ x^(−β) (eq. 91)."""
    beta = check_real("beta", beta, lo=0.0, lo_open=True)
    sigma = check_real("sigma", sigma, lo=0.0, lo_open=True)
    a = check_real("a", a, lo=0.0, lo_open=True)
    scale = sigma / math.sqrt(a * beta)
    return stats.t.pdf(np.asarray(w, dtype=np.float64), df=beta, scale=scale)


def _chi2_expect_log(g, c: float, S: int) -> float:
    """log E[exp(g(log|1 − c t|))] for t ~ χ²_S, by quadrature split at the kink t = 1/c (log-space safe).

    ``g`` maps log|1 − ct| (an array) to the log of the integrand's factor.
    """
    t0 = 1.0 / c
    logpdf = lambda t: stats.chi2.logpdf(t, S)  # noqa: E731
    expo = lambda t: g(np.log(np.abs(1.0 - c * t))) + logpdf(t)  # noqa: E731
    # the mass beyond the kink peaks near the mode of t^(S/2-1+β) e^(-t/2); integrate around it in log space
    t_grid = t0 * np.geomspace(1.0 + 1e-9, 1e6, 4000)
    e_grid = expo(t_grid)
    j = int(np.argmax(e_grid))
    M = float(e_grid[j])
    t_pk = float(t_grid[j])
    opts = dict(epsabs=0.0, epsrel=1e-12, limit=200)
    inner = integrate.quad(lambda t: math.exp(expo(np.array([t]))[0]), 0.0, t0, **opts)[0]
    f = lambda t: math.exp(expo(np.array([t]))[0] - M)  # noqa: E731
    outer = (integrate.quad(f, t0, t_pk, **opts)[0] if t_pk > t0 else 0.0) + integrate.quad(f, t_pk, np.inf, **opts)[0]
    return float(np.logaddexp(math.log(inner) if inner > 0 else -np.inf, M + math.log(outer) if outer > 0 else -np.inf))


def kesten_moment(beta: float, lr: float, batch_size: int, a: float = 1.0) -> float:
    """E|1 − λh|^β with h = a χ²_S / S (quadrature). Its root in β > 0 is the exact tail index."""
    beta = check_real("beta", beta, lo=0.0)
    lr, S, a = _check(lr, batch_size, a)
    return math.exp(_chi2_expect_log(lambda lg: beta * lg, lr * a / S, S))


def lyapunov_exponent(lr: float, batch_size: int, a: float = 1.0) -> float:
    """E log|1 − λh|, h = a χ²_S / S. Negative ⇔ the 1d chain has a stationary law (and a finite β_K)."""
    lr, S, a = _check(lr, batch_size, a)
    c = lr * a / S
    opts = dict(epsabs=1e-14, epsrel=1e-12, limit=200)
    f = lambda t: math.log(abs(1.0 - c * t)) * stats.chi2.pdf(t, S)  # noqa: E731
    return integrate.quad(f, 0.0, 1.0 / c, **opts)[0] + integrate.quad(f, 1.0 / c, np.inf, **opts)[0]


def _tail_index_exact_scalar(lr: float, batch_size: int, a: float) -> float:
    lr, S, a = _check(lr, batch_size, a)
    if lyapunov_exponent(lr, S, a) >= 0:
        return math.nan
    c = lr * a / S
    logm = lambda b: _chi2_expect_log(lambda lg: b * lg, c, S)  # noqa: E731
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


def tail_index_exact(lr: ArrayLike, batch_size: ArrayLike, a: ArrayLike = 1.0) -> float | np.ndarray:
    """Exact tail index of 1d online SGD (corrected value; not in the paper): the root β_K > 0 of

        E |1 − λ a χ²_S / S|^β = 1                        (Kesten–Goldie; reference §10)

    NaN where E log|1 − λh| >= 0 (no stationary law). β_K = 2 exactly at λa = 2S/(S+2), where it meets
    eq. (93); elsewhere eq. (93) differs (e.g. S = 10, aλ = 1: β_K = 7.51 vs 10).
    """
    return _elementwise(_tail_index_exact_scalar, lr, batch_size, a)


def chi2_moment(k: int, batch_size: int) -> float:
    """E[(χ²_S / S)^k] = Π_{j<k} (S + 2j) / S^k (used for even-β checks of the Kesten equation)."""
    k = check_int("k", k, lo=0)
    S = check_int("batch_size", batch_size, lo=1)
    return float(np.prod([(S + 2 * j) / S for j in range(k)]))


__all__ = ["tail_index_continuous", "tail_index_eq93", "tail_index_exact", "kesten_moment", "lyapunov_exponent",
           "student_t_variance", "student_t_pdf", "chi2_moment"]
_ = special  # scipy.special kept for callers' log-gamma needs? (removed below)
