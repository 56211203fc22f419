"""Tail index of 1d SGD: eq. (93), continuous value, exact Kesten index — each against an independent computation."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
from scipy import integrate, optimize

from noiseprobe.core.errors import ConfigError, NumericalError
from noiseprobe.core.powerlaw import hill
from noiseprobe.minibatch.sgd import LinearProblem, simulate_sgd
from noiseprobe.minibatch.tails import (
    BETA_MAX,
    CONTINUOUS_LIMIT_ERROR,
    U_STAR,
    kesten_moment,
    lyapunov_exponent,
    student_t_pdf,
    student_t_variance,
    tail_index_continuous,
    tail_index_eq93,
    tail_index_exact,
    tail_index_small_lr,
)

# docs/theory/minibatch_noise.md §15.5: (a, λ, S, eq. 93, continuous, Kesten β_K)
REFERENCE = [
    (1, 1.00, 1, 1.000, 3.0, 1.091),
    (1, 0.50, 1, 3.000, 5.0, 2.904),
    (1, 0.25, 1, 7.000, 9.0, 6.505),
    (1, 1.00, 4, 4.000, 9.0, 3.505),
    (1, 1.50, 10, 3.333, 14.333, 2.840),
    (1, 1.20, 10, 6.667, 17.667, 5.101),
    (1, 1.00, 10, 10.00, 21.0, 7.513),
]


def h_moment(j: int, S: int, a: float) -> float:
    """E h^j for h = a χ²_S / S: a^j Π_{i<j} (S + 2i) / S."""
    return a**j * math.prod((S + 2 * i) / S for i in range(j))


def even_kesten_moment(beta: int, lr: float, S: int, a: float) -> float:
    """E(1 − λh)^β for even integer β by the binomial expansion (closed form, no quadrature)."""
    return sum(math.comb(beta, j) * (-lr) ** j * h_moment(j, S, a) for j in range(beta + 1))


@pytest.mark.parametrize("a, lr, S, b93, bc, bk", REFERENCE)
def test_reference_values(a, lr, S, b93, bc, bk) -> None:
    assert tail_index_eq93(lr=lr, batch_size=S, a=a) == pytest.approx(b93, abs=6e-4)
    assert tail_index_continuous(lr=lr, batch_size=S, a=a) == pytest.approx(bc, abs=6e-4)
    assert tail_index_exact(lr=lr, batch_size=S, a=a) == pytest.approx(bk, abs=6e-4)


@pytest.mark.parametrize("S", [1, 2, 4, 10, 100])
def test_exact_index_is_2_at_variance_divergence(S: int) -> None:
    """E(1 − λh)² = 1 − 2λa + λ²a²(1 + 2/S) = 1 at λa = 2S/(S+2): β_K = 2 there, and eq. (93) = 2 too."""
    a = 1.3
    lr = 2 * S / (S + 2) / a
    assert even_kesten_moment(2, lr, S, a) == pytest.approx(1.0, abs=1e-12)
    assert tail_index_exact(lr=lr, batch_size=S, a=a) == pytest.approx(2.0, abs=1e-8)
    assert tail_index_eq93(lr=lr, batch_size=S, a=a) == pytest.approx(2.0, abs=1e-12)


@pytest.mark.parametrize("S, eq93_ref", [(1, 4.22), (4, 4.64), (10, 5.08), (100, 5.85)])
def test_exact_index_is_4_where_fourth_moment_equation_holds(S: int, eq93_ref: float) -> None:
    """Solve the quartic E(1 − λh)^4 = 1 for λ (closed-form moments); there β_K = 4 while eq. (93) gives the
    4.22 / 4.64 / 5.08 / 5.85 of docs/theory/minibatch_noise.md §15.5: eq. (93) overestimates."""
    a = 0.7
    lr = optimize.brentq(lambda x: even_kesten_moment(4, x, S, a) - 1, 1e-6, 2 * S / (S + 2) / a)
    assert tail_index_exact(lr=lr, batch_size=S, a=a) == pytest.approx(4.0, abs=1e-7)
    assert tail_index_eq93(lr=lr, batch_size=S, a=a) == pytest.approx(eq93_ref, abs=0.006)


@pytest.mark.parametrize("lr, S", [(1.0, 1), (0.5, 1), (1.0, 4), (1.5, 10)])
def test_kesten_moment_against_monte_carlo(lr: float, S: int) -> None:
    """E|1 − λh|^β by Monte Carlo (4·10⁶ draws of h): equals the quadrature within 4 SE at several β; at the
    exact index the expectation is 1, at the eq. (93) value it is not (many SEs away)."""
    a = 1.0
    h = a * np.random.default_rng(S).chisquare(S, 4_000_000) / S
    bk, b93 = tail_index_exact(lr=lr, batch_size=S, a=a), tail_index_eq93(lr=lr, batch_size=S, a=a)
    for beta in (0.7, bk, b93):
        v = np.abs(1 - lr * h) ** beta
        mc, se = v.mean(), v.std(ddof=1) / np.sqrt(v.size)
        assert abs(mc - kesten_moment(beta, lr=lr, batch_size=S, a=a)) < 4 * se, (beta, mc, se)
        if beta == bk:
            assert abs(mc - 1) < 4 * se
        if beta == b93:
            assert abs(mc - 1) > 4 * se  # eq. (93) does not solve the Kesten equation
    assert abs(kesten_moment(bk, lr=lr, batch_size=S, a=a) - 1) < 1e-9


@pytest.mark.parametrize("lr, S", [(1.0, 1), (3.0, 1), (1.0, 10), (2.5, 1000)])
def test_lyapunov_exponent_against_monte_carlo(lr: float, S: int) -> None:
    """E log|1 − λh| by Monte Carlo; a positive exponent means no stationary law (β_K = NaN). S = 1, λa = 1
    gives −0.42 (docs/theory/minibatch_noise.md §16 trap 10); S = 1000, λa = 2.5 diverges a.s."""
    h = np.random.default_rng(7).chisquare(S, 2_000_000) / S
    v = np.log(np.abs(1 - lr * h))
    L = lyapunov_exponent(lr=lr, batch_size=S)
    assert abs(v.mean() - L) < 4 * v.std(ddof=1) / np.sqrt(v.size)
    assert math.isnan(tail_index_exact(lr=lr, batch_size=S)) == (L >= 0)
    if (lr, S) == (1.0, 1):
        assert L == pytest.approx(-0.42, abs=0.005)


def _mp_log_moment(beta: float, c: float, S: int) -> mp.mpf:
    """log E|1 − c t|^β, t ~ χ²_S, at 40 digits (mpmath tanh-sinh), independent of the library: in the
    variable t, each side of the kink t = 1/c split at its peak (a root of the quadratic below) and ±40
    widths, each side rescaled by its peak value."""
    with mp.workdps(40):
        beta, c, S = mp.mpf(beta), mp.mpf(c), mp.mpf(S)
        p = S / 2 - 1
        log_norm = -(S / 2) * mp.log(2) - mp.loggamma(S / 2)

        def lf(t):  # log of |1 − ct|^β χ²_S(t)
            return beta * mp.log(abs(1 - c * t)) + p * mp.log(t) - t / 2 + log_norm

        # stationary points: −βc/(1 − ct) + p/t − 1/2 = 0  ⇔  (c/2) t² − (βc + pc + 1/2) t + p = 0
        B = beta * c + p * c + mp.mpf(1) / 2
        disc = mp.sqrt(B * B - 2 * c * p)
        t0, logs = 1 / c, []
        for lo, hi, t_pk in ((0, t0, (B - disc) / c), (t0, mp.inf, (B + disc) / c)):
            if not lo < t_pk < hi:  # S <= 2 inside: the integrand is largest at t → 0
                pts, peak = [mp.mpf(0), min(t0, 200 / (1 + 2 * beta * c)), t0], mp.mpf(0)
                pts = sorted(set(pts))
            else:
                curv = beta * c * c / (1 - c * t_pk) ** 2 + abs(p) / t_pk**2
                w = 40 / mp.sqrt(curv)
                peak = lf(t_pk)
                pts = sorted({mp.mpf(lo), max(t_pk - w, mp.mpf(lo)), t_pk, min(t_pk + w, hi), hi})
            logs.append(peak + mp.log(mp.quad(lambda t: mp.exp(lf(t) - peak), pts)))
        return mp.log(mp.exp(logs[0]) + mp.exp(logs[1]))


def _mp_brackets(beta: float, lr: float, S: int, rel: float) -> bool:
    """The 40-digit Kesten moment changes sign across β(1 ± rel): the exact root lies within rel of β."""
    return _mp_log_moment(beta * (1 - rel), lr / S, S) < 0 < _mp_log_moment(beta * (1 + rel), lr / S, S)


def _mp_root(lr: float, S: int, start: float) -> mp.mpf:
    """The root of E|1 − λχ²_S/S|^β = 1 (a = 1) to ~35 digits by the secant method from ``start``."""
    with mp.workdps(40):
        x0, x1 = mp.mpf(start), mp.mpf(start) * (1 + mp.mpf("1e-9"))
        f0, f1 = _mp_log_moment(x0, lr / S, S), _mp_log_moment(x1, lr / S, S)
        for _ in range(12):
            x0, f0, x1 = x1, f1, x1 - f1 * (x1 - x0) / (f1 - f0)
            if abs(x1 - x0) < mp.mpf("1e-35") * abs(x1):
                return x1
            f1 = _mp_log_moment(x1, lr / S, S)
        raise AssertionError("secant did not converge")


#: (S, aλ): moderate λ (docs/theory/minibatch_noise.md's §15.5 regime) and small λ over four decades of S
MP_POINTS = [(1, 1.0), (4, 1.0), (10, 1.5), (1, 1e-1), (1, 1e-3), (4, 1e-2), (32, 1e-3), (100, 1e-4), (10000, 1e-3)]


@pytest.mark.parametrize("S, lr", MP_POINTS)
def test_exact_index_and_small_lr_expansion_against_40_digit_mpmath(S: int, lr: float) -> None:
    """The library's root lies within 1e-12 (relative) of the 40-digit root (sign change of the mpmath
    moment across it). For aλ <= 0.1 the small-λ expansion (limit + leading correction) misses it by its
    next term, up to a remainder smaller by O(aλ log(S/aλ)) (docs/theory/tail_index_limit.md)."""
    bk = float(tail_index_exact(lr=lr, batch_size=S))
    assert _mp_brackets(bk, lr, S, 1e-12)
    if lr <= 0.1:
        ex = tail_index_small_lr(lr=lr, batch_size=S)
        err = bk - ex.value
        assert abs(err) <= 2 * abs(ex.next_term)  # the tolerance the mbn-fig7 check uses
        assert abs(err - ex.next_term) <= lr * math.log(S / lr) * abs(ex.next_term), (err, ex)


@pytest.mark.parametrize("S, lr", [(1, 1.8e-9), (1000, 1.8e-6)])
def test_exact_index_near_1e9(S: int, lr: float) -> None:
    """β_K ≈ 10⁹ is computed (not +∞): within 1e-12 of the 40-digit root, and the small-λ expansion misses it
    by its next term (1e-13 or 1e-11 relative); beyond BETA_MAX = 1e12 a one-line NumericalError names the limit."""
    bk = float(tail_index_exact(lr=lr, batch_size=S))
    assert 0.99e9 < bk < 1e9 and _mp_brackets(bk, lr, S, 1e-12)
    ex = tail_index_small_lr(lr=lr, batch_size=S)
    assert abs(bk - ex.value) <= 2 * abs(ex.next_term) + 1e-13 * bk  # + the float64 root's own rounding
    assert BETA_MAX == 1e12
    with pytest.raises(NumericalError, match=r"exceeds the computed range 1e\+12") as err:
        tail_index_exact(lr=1e-13 * S, batch_size=S)
    assert "\n" not in str(err.value)


def test_continuous_index_relative_error_approaches_its_limit_as_lambda_log_lambda() -> None:
    """ε = β_c/β_K − 1 → ε∞ = 4/u* − 1 (u* = 3.5911215, u*(log u* − 1) = 1) with
    (ε − ε∞)/c = K_S + 4(S − 1)/(u*² log u*)·log(1/c) + O(c log² c), c = aλ/S: O(λ) at S = 1 and
    O(λ log 1/λ) for S > 1. The decade-to-decade change of (ε − ε∞)/c from the exact index (float
    library, validated above) is that log coefficient times log 10, within twice the next order's size
    (the expansion with its next term against its linearisation)."""
    assert U_STAR == pytest.approx(3.5911215, abs=5e-8)
    assert U_STAR * (math.log(U_STAR) - 1) == pytest.approx(1, abs=1e-15)
    assert CONTINUOUS_LIMIT_ERROR == pytest.approx(0.113858, abs=5e-7)
    for S in (1, 4, 16):
        lrs = [1e-4, 1e-5, 1e-6]
        k, nxt = [], []
        for lr in lrs:
            c, bc = lr / S, float(tail_index_continuous(lr=lr, batch_size=S))
            ex = tail_index_small_lr(lr=lr, batch_size=S)
            k.append((bc / float(tail_index_exact(lr=lr, batch_size=S)) - 1 - CONTINUOUS_LIMIT_ERROR) / c)
            linear = 4 / U_STAR * c * (0.5 - 2 * ex.correction / U_STAR)
            nxt.append(abs(bc / (ex.value + ex.next_term) - 1 - CONTINUOUS_LIMIT_ERROR - linear) / c)
        step = 4 * (S - 1) * math.log(10) / (U_STAR**2 * math.log(U_STAR))
        for i in range(2):
            assert abs(k[i + 1] - k[i] - step) <= 2 * (nxt[i] + nxt[i + 1]), (S, k, nxt)
        if S == 1:
            assert abs(k[2] - k[0]) < 1e-3 * abs(k[0])  # O(λ): (ε − ε∞)/λ is constant


@pytest.mark.slow
def test_reference_table_of_the_small_lr_limit_at_40_digits() -> None:
    """The reference's 40-digit table of β_c/β_K − 1 (docs/theory/minibatch_noise.md §10), recomputed from
    full 40-digit roots (secant from the library's value), with the library and the expansion checked
    against each root."""
    table = {
        1e-1: (0.21496, 0.22188, 0.24028, 0.24676),
        1e-2: (0.12360, 0.12675, 0.13019, 0.13118),
        1e-3: (0.11483, 0.11541, 0.11596, 0.11610),
        1e-4: (0.11396, 0.11404, 0.11412, 0.11414),
        1e-5: (0.11387, 0.11388, 0.11389, 0.11389),
    }
    for lr, row in table.items():
        for S, ref in zip((1, 2, 8, 32), row):
            bk = float(tail_index_exact(lr=lr, batch_size=S))
            root = _mp_root(lr, S, bk)
            assert abs(bk - root) <= 1e-12 * root
            assert float((2 * S / mp.mpf(lr) + 1) / root - 1) == pytest.approx(ref, abs=5e-6)
            ex = tail_index_small_lr(lr=lr, batch_size=S)
            assert abs(float(root) - ex.value - ex.next_term) <= lr * math.log(S / lr) * abs(ex.next_term)


def test_student_t_law_of_eq90_and_the_variance_matching_of_eq92() -> None:
    """Normalisation, shape and variance of eq. (90) by numerical integration; eq. (93) makes the Student-t
    variance equal Theorem 2's λσ²/(2S − (S+2)λa) (eq. 92), for every λa < 2S/(S+2)."""
    beta, sigma, a = 3.5, 0.7, 1.3
    p = lambda w: float(student_t_pdf(w, beta, sigma=sigma, a=a))  # noqa: E731
    assert integrate.quad(p, -np.inf, np.inf, epsabs=1e-12)[0] == pytest.approx(1.0, abs=1e-9)
    assert integrate.quad(lambda w: w * w * p(w), -np.inf, np.inf, epsabs=1e-12)[0] == pytest.approx(
        student_t_variance(beta, sigma=sigma, a=a), rel=1e-7
    )
    assert p(0.3) / p(2.0) == pytest.approx(((sigma**2 + a * 4.0) / (sigma**2 + a * 0.09)) ** ((1 + beta) / 2))
    assert student_t_variance(1.5, sigma=sigma, a=a) == math.inf
    for S in (1, 4, 10):
        for lr in np.linspace(0.05, 0.99 * 2 * S / (S + 2) / a, 7):
            thm2 = lr * sigma**2 / (2 * S - (S + 2) * lr * a)
            assert student_t_variance(tail_index_eq93(lr=lr, batch_size=S, a=a), sigma=sigma, a=a) == pytest.approx(
                thm2, rel=1e-10
            )


@pytest.mark.parametrize("lr, S, a, sigma", [(0.5, 1, 1.0, 1.0), (0.3, 4, 1.7, 0.6)])
def test_continuous_index_from_the_fokker_planck_density(lr: float, S: int, a: float, sigma: float) -> None:
    """Continuous time with the loss-proportional noise C(w) = 2L(w) a/S (Mori et al.), L = ½(aw² + σ²):
    dw = −λaw dt + λ√C dB has the zero-flux density p ∝ exp(−∫ 2aw/(λC)) / C, integrated numerically here.
    Its log-log slope at large w is −(1 + β_c), and it is the Student-t law (90) with β = β_c."""

    def C(w: float) -> float:
        return (a * w * w + sigma**2) * a / S

    def log_p(w: float) -> float:
        return -integrate.quad(lambda u: 2 * a * u / (lr * C(u)), 0, w, epsrel=1e-13)[0] - math.log(C(w))

    bc = tail_index_continuous(lr=lr, batch_size=S, a=a)
    slope = (log_p(2e4) - log_p(1e4)) / math.log(2)
    assert slope == pytest.approx(-(1 + bc), rel=1e-6)
    ws = [0.0, 0.7, 3.0, 20.0]
    ratios = [math.exp(log_p(w)) / float(student_t_pdf(w, bc, sigma=sigma, a=a)) for w in ws]
    assert np.allclose(ratios, ratios[0], rtol=1e-8)


def test_vectorised_and_ordered() -> None:
    lr = np.array([0.2, 0.5, 1.0, 1.4])
    S = np.array([[1], [4]])
    bk, b93, bc = (
        tail_index_exact(lr=lr, batch_size=S),
        tail_index_eq93(lr=lr, batch_size=S),
        tail_index_continuous(lr=lr, batch_size=S),
    )
    assert bk.shape == b93.shape == bc.shape == (2, 4)
    assert (
        bk[1, 2] == tail_index_exact(lr=1.0, batch_size=4) == pytest.approx(3.505, abs=6e-4)
    )  # docs/theory/minibatch_noise.md §15.5
    assert np.all(bk < bc) and np.all(b93 < bc)  # discrete time: heavier tails than continuous time
    assert np.all(np.diff(bk, axis=1) < 0) and np.all(np.diff(bk, axis=0) > 0)  # falls with λ, grows with S


def test_invalid_arguments() -> None:
    for args in ((0.0, 1), (-1.0, 1), (1.0, 0), (1.0, 1.5), (float("nan"), 1)):
        for fn in (tail_index_exact, tail_index_eq93, tail_index_continuous, lyapunov_exponent):
            with pytest.raises(ConfigError):
                fn(lr=args[0], batch_size=args[1])
    with pytest.raises(ConfigError):
        tail_index_exact(lr=1.0, batch_size=1, a=-1.0)
    with pytest.raises(ConfigError):
        kesten_moment(-1.0, lr=1.0, batch_size=1)
    with pytest.raises(ConfigError):
        student_t_variance(0.0)


def _simulated_hill(lr: float, S: int, chains: int, snapshots: int, every: int, fraction: float) -> tuple:
    """Hill estimate (cluster-robust SE over chains) from snapshots of D's SGD simulator, drawing the S Gaussian
    inputs of every minibatch (exact_law=False: independent of the χ² reduction used by the theory)."""
    run = simulate_sgd(
        LinearProblem(A=1.0, sigma=1.0),
        lr=lr,
        batch_size=S,
        steps=snapshots * every,
        burn_in=500,
        chains=chains,
        seed=11,
        snapshot_every=every,
        exact_law=False,
    )
    assert not run.diverged.any()
    x = np.abs(run.snapshots[..., 0])
    labels = np.repeat(np.arange(chains), x.shape[1])
    return hill(x.ravel(), int(fraction * x.size), clusters=labels)


def test_simulated_tail_matches_exact_index() -> None:
    """S = 1, aλ = 1: the Hill index of simulated SGD (k = n/100, where the bias is negligible at β ≈ 1,
    docs/theory/minibatch_noise.md §15.5) agrees with β_K = 1.091 within 4 SE."""
    f = _simulated_hill(1.0, 1, chains=2000, snapshots=100, every=40, fraction=0.01)
    assert abs(f.beta - tail_index_exact(lr=1.0, batch_size=1)) < 4 * f.se, f


@pytest.mark.slow
@pytest.mark.parametrize("lr, S", [(1.5, 10), (1.0, 4)])
def test_simulated_tail_rejects_eq93(lr: float, S: int) -> None:
    """β ≈ 3: with n = 2·10⁶ samples (k = n/1000) Hill agrees with β_K within 4 SE and excludes eq. (93)."""
    f = _simulated_hill(lr, S, chains=10_000, snapshots=200, every=20, fraction=0.001)
    assert abs(f.beta - tail_index_exact(lr=lr, batch_size=S)) < 4 * f.se, f
    assert abs(f.beta - tail_index_eq93(lr=lr, batch_size=S)) > 4 * f.se, f
