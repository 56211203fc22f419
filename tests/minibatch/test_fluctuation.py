"""Theorem 1 (eq. 3) solvers: three independent exact algorithms agree, Monte Carlo agrees, bounds are right."""

from __future__ import annotations

import numpy as np
import pytest

from noiseprobe.core.errors import ConfigError
from noiseprobe.minibatch.fluctuation import (
    NoStationaryState,
    augmented_system,
    largest_stable_scale,
    solve_fluctuation,
    thm1_residual,
)


def _rot(rng: np.random.Generator, D: int) -> np.ndarray:
    return np.linalg.qr(rng.normal(size=(D, D)))[0]


@pytest.fixture
def system() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    D = 4
    Q = _rot(rng, D)
    H = Q @ np.diag([1.0, 0.6, 0.25, 0.1]) @ Q.T
    P = _rot(rng, D)
    Lam = P @ np.diag([0.9, 0.5, 1.3, 0.7]) @ P.T  # does not commute with H
    R = rng.normal(size=(D, D))
    return H, R @ R.T / 3 + 0.2 * np.eye(D), Lam


@pytest.mark.parametrize("mu", [0.0, 0.5, 0.9])
def test_three_solvers_agree_noncommuting(system, mu):
    H, C, Lam = system
    assert np.linalg.norm(Lam @ H - H @ Lam) > 0.1
    eig = solve_fluctuation(H, C, lr=Lam, momentum=mu, method="eigen")
    lyap = solve_fluctuation(H, C, lr=Lam, momentum=mu, method="lyapunov")
    kron = solve_fluctuation(H, C, lr=Lam, momentum=mu, method="kronecker")
    scale = np.abs(eig).max()
    assert np.abs(eig - lyap).max() < 1e-11 * scale
    assert np.abs(eig - kron).max() < 1e-11 * scale
    assert np.abs(thm1_residual(eig, H, C, lr=Lam, momentum=mu)).max() < 1e-12 * scale


def test_1d_closed_form():
    # μ = 0, 1d: 2λhΣ − λ²h²Σ = λ²C  ⇒  Σ = λC / (h(2 − λh))
    h, c, lam = 1.3, 0.7, 0.9
    assert solve_fluctuation(np.array([[h]]), np.array([[c]]), lr=lam)[0, 0] == pytest.approx(
        lam * c / (h * (2 - lam * h)), rel=1e-13
    )


def test_monte_carlo_additive_noise(system):
    """Eq. (3) against a simulation of w, m with additive Gaussian noise (non-commuting Λ, μ = 0.5)."""
    H, C, Lam = system
    Lam = 0.5 * Lam
    mu, R, T, burn = 0.5, 2000, 1500, 300
    rng = np.random.default_rng(1)
    L = np.linalg.cholesky(C)
    w = np.zeros((R, 4))
    m = np.zeros((R, 4))
    acc = np.zeros((R, 4, 4))
    for t in range(burn + T):
        g = w @ H + rng.standard_normal((R, 4)) @ L.T
        m = mu * m + g
        w = w - m @ Lam
        if t >= burn:
            acc += w[:, :, None] * w[:, None, :]
    per_chain = acc / T
    est, se = per_chain.mean(0), per_chain.std(0, ddof=1) / np.sqrt(R)
    theory = solve_fluctuation(H, C, lr=Lam, momentum=mu)
    z = np.abs(est - theory) / se
    assert z.max() < 4.5, z


@pytest.mark.parametrize("mu", [0.0, 0.6])
def test_bound_scalar_lr(mu):
    H = np.diag([2.0, 0.5])
    with pytest.raises(NoStationaryState) as e:
        solve_fluctuation(H, np.eye(2), lr=1.5 * (1 + mu), momentum=mu)
    assert isinstance(e.value, ValueError)
    assert e.value.bound == pytest.approx((1 + mu), rel=1e-9)  # 2(1+μ)/h_max
    assert "below" in str(e.value)
    # just below the bound a solution exists, and the augmented map is stable
    solve_fluctuation(H, np.eye(2), lr=0.999 * (1 + mu), momentum=mu)
    M, _ = augmented_system(H, lr=0.999 * (1 + mu) * np.eye(2), momentum=mu)
    assert np.abs(np.linalg.eigvals(M)).max() < 1


def test_bound_state_dependent_noise_1d():
    """Label noise in 1d (Lemma 1 as a noise map): stationary iff λa < 2S/(S+2)."""
    a, S = 1.5, 4
    A = np.array([[a]])
    nmap = lambda X: (A @ X @ A + np.trace(A @ X) * A) / S  # noqa: E731
    with pytest.raises(NoStationaryState) as e:
        solve_fluctuation(A, A / S, lr=1.0, noise_map=nmap)
    assert e.value.bound == pytest.approx(2 * S / ((S + 2) * a), rel=1e-8)


def test_flat_directions():
    H = np.diag([1.0, 0.0])
    Sg = solve_fluctuation(H, np.diag([1.0, 0.0]), lr=0.5)
    assert Sg[1, 1] == 0.0 and Sg[0, 0] == pytest.approx(0.5 / (2 - 0.5))
    with pytest.raises(NoStationaryState):
        solve_fluctuation(H, np.eye(2), lr=0.5)


def test_bad_inputs():
    with pytest.raises(ConfigError):
        solve_fluctuation(np.eye(2), np.eye(3), lr=0.1)
    with pytest.raises(ConfigError):
        solve_fluctuation(np.eye(2), np.eye(2), lr=-0.1)
    with pytest.raises(ConfigError):
        solve_fluctuation(np.eye(2), np.eye(2), lr=0.1, momentum=1.0)
    with pytest.raises(ConfigError):
        solve_fluctuation(np.eye(2), np.eye(2), lr=0.1, method="dense")
    with pytest.raises(ConfigError):
        solve_fluctuation(np.eye(60), np.eye(60), lr=0.1, method="kronecker")


def test_bad_matrices():
    """H, C and Σ of eq. (3) must be symmetric; thm1_residual and largest_stable_scale validate too."""
    with pytest.raises(ConfigError) as e:
        solve_fluctuation(np.array([[1.0, 0.5], [0.0, 1.0]]), np.eye(2), lr=0.1)
    assert e.value.field == "H" and "symmetric" in str(e.value)
    with pytest.raises(ConfigError):
        solve_fluctuation(np.eye(2), np.array([[1.0, np.nan], [np.nan, 1.0]]), lr=0.1)
    with pytest.raises(ConfigError):
        thm1_residual(np.eye(3), np.eye(2), np.eye(2), lr=0.1)
    with pytest.raises(ConfigError):
        largest_stable_scale(lambda s: s < 0.5, hi=0.0)
    assert largest_stable_scale(lambda s: s < 0.5, hi=1.0) == pytest.approx(0.5, abs=1e-12)


def test_issue11_bad_python_api_calls_raise_config_error():
    """Issue 11 point 11: a noise matrix that is not PSD returned a negative Σ, and lr=True was accepted as 1;
    simulate_sgd(lr=-1) ran to |w| ≈ 1e62 with no chain flagged. Each is now one ConfigError naming the argument."""
    from noiseprobe.minibatch.sgd import LinearProblem, simulate_sgd

    with pytest.raises(ConfigError) as e:
        solve_fluctuation(np.eye(2), np.diag([1.0, -0.5]), lr=0.1)
    assert e.value.field == "C" and "positive semi-definite" in str(e.value)
    for bad in (True, np.bool_(True), "0.1", [[0.1, 0.2]], np.nan):
        with pytest.raises(ConfigError) as e:
            solve_fluctuation(np.eye(2), np.eye(2), lr=bad)
        assert e.value.field == "lr"
    with pytest.raises(ConfigError) as e:
        simulate_sgd(LinearProblem(1.0, sigma=1.0), lr=-1.0, batch_size=1, steps=10, burn_in=0, chains=8, seed=0)
    assert e.value.field == "lr"
