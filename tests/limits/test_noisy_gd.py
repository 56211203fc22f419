"""Tests of the batched noisy-GD engine against independent computations: explicit loops, and the
closed-form / Lyapunov stationary laws of linear-quadratic L̂ (tolerances from standard errors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import solve_discrete_lyapunov

from noiseprobe.core.errors import ConfigError
from noiseprobe.limits import noises
from noiseprobe.limits.losses import circle_loss
from noiseprobe.limits.noises import covariance_root
from noiseprobe.limits.noisy_gd import noisy_gd, simulate_noise

H = np.array([[1.0, 0.3], [0.3, 0.5]])
MU = np.array([0.4, -0.2])
B = np.array([[1.0, 0.0, 0.5], [0.2, 1.0, -0.3]])  # G = ∇_w∇_η L̂, d=2, m=3
C_TILDE = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.6]])
ALPHA, SIGMA = 0.2, 0.3


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny batched ops: extra threads only add contention on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def circle_grad(w: np.ndarray) -> np.ndarray:
    """Hand-written ∇L of L = ⅛ (1.5 + w₁)(|w|² − 1)²."""
    q = w @ w - 1.0
    return np.array([0.125 * q**2, 0.0]) + 0.5 * (1.5 + w[0]) * q * w


def linear_loss_hat(w: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """L̂ = ½(w−μ)ᵀH(w−μ) + ηᵀBᵀw: ∇_w L̂ = H(w−μ) + Bη, affine in η."""
    h, mu, b = (torch.as_tensor(a) for a in (H, MU, B))
    x = w - mu
    return 0.5 * ((x @ h) * x).sum(-1) + ((eta @ b.T) * w).sum(-1)


def cov_se(samples: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Standard error of the sample covariance of n Gaussian vectors: sqrt((S_ii S_jj + S_ij²)/n)."""
    return np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / len(samples))


def test_gd_matches_explicit_loop() -> None:
    lrs = [0.05, 0.1, 0.2]
    res = noisy_gd(lambda w, e: circle_loss(w), [0.1, 1.5], lr=lrs, steps=300, chains=3, record_every=50)
    for r, lr in enumerate(lrs):
        w = np.array([0.1, 1.5])
        path = [w]
        for _ in range(300):
            w = w - lr * circle_grad(w)
            path.append(w)
        np.testing.assert_allclose(res.positions[:, r], np.array(path)[res.steps], rtol=0, atol=1e-12)
    assert list(res.steps) == [0, 50, 100, 150, 200, 250, 300]
    np.testing.assert_allclose(np.abs(np.linalg.norm(res.final, axis=1) - 1.0), 0.0, atol=1e-6)
    assert not res.diverged.any()


@pytest.mark.parametrize("vectorised", [False, True])
def test_stationary_law_linear_gaussian(vectorised: bool) -> None:
    """Stationary mean μ and covariance S = A S Aᵀ + α²σ² B C̃ Bᵀ, A = I − αH (discrete Lyapunov)."""
    R = 4000
    root = covariance_root(torch.as_tensor(C_TILDE)).numpy()
    res = noisy_gd(
        linear_loss_hat,
        [2.0, 2.0],
        lr=ALPHA,
        sigma=SIGMA,
        eta_dim=3,
        sampler=lambda n, g, s: s * g.standard_normal((n, root.shape[1])) @ root.T,
        steps=250,
        chains=R,
        seed=3,
        record_every=250,
        vectorised=vectorised,
    )
    S = solve_discrete_lyapunov(np.eye(2) - ALPHA * H, ALPHA**2 * SIGMA**2 * B @ C_TILDE @ B.T)
    w = res.final
    assert np.all(np.abs(w.mean(0) - MU) < 4 * np.sqrt(np.diag(S) / R))
    assert np.all(np.abs(np.cov(w.T) - S) < 4 * cov_se(w, S))


def test_any_noise_law_with_the_covariance() -> None:
    """Rademacher noise (±σ per coordinate, C̃ = I) has the same stationary covariance for affine ∇L̂."""
    R = 4000
    res = noisy_gd(
        linear_loss_hat,
        MU,
        lr=ALPHA,
        sigma=SIGMA,
        eta_dim=3,
        steps=200,
        chains=R,
        seed=5,
        record_every=200,
        vectorised=True,
        sampler=lambda n, g, s: s * (2.0 * g.integers(0, 2, size=(n, 3)) - 1.0),
    )
    S = solve_discrete_lyapunov(np.eye(2) - ALPHA * H, ALPHA**2 * SIGMA**2 * B @ B.T)
    assert np.all(np.abs(np.cov(res.final.T) - S) < 4 * cov_se(res.final, S))  # near-Gaussian by the CLT


def test_anti_correlated_increments() -> None:
    """ζ_k = η_k − η_{k−1}: Lyapunov equation of the augmented state x_k = (w_k, η_{k−1})."""
    R = 4000
    res = noisy_gd(
        linear_loss_hat,
        MU,
        lr=ALPHA,
        sigma=SIGMA,
        eta_dim=3,
        steps=250,
        chains=R,
        seed=7,
        record_every=250,
        anti_correlated=True,
        vectorised=True,
    )
    # w_{k+1} = A w_k + αHμ − αBη_k + αBη_{k−1}
    A = np.block([[np.eye(2) - ALPHA * H, ALPHA * B], [np.zeros((3, 2)), np.zeros((3, 3))]])
    Q = np.vstack([-ALPHA * B, np.eye(3)])
    S = solve_discrete_lyapunov(A, SIGMA**2 * Q @ Q.T)[:2, :2]
    w = res.final
    assert np.all(np.abs(w.mean(0) - MU) < 4 * np.sqrt(np.diag(S) / R))
    assert np.all(np.abs(np.cov(w.T) - S) < 4 * cov_se(w, S))
    # anti-correlated noise is much smaller than i.i.d. noise at this α (sanity of the contrast)
    S_iid = solve_discrete_lyapunov(np.eye(2) - ALPHA * H, ALPHA**2 * SIGMA**2 * B @ B.T)
    assert np.trace(S) < 0.5 * np.trace(S_iid)


@pytest.mark.parametrize("anti", [False, True])
def test_additive_noise_closed_forms(anti: bool) -> None:
    """L̂ = ½h|w|² + η·w (noises.additive): Var w = ασ²/(h(2−αh)) for i.i.d. η; anti-PGD increments
    η_k − η_{k−1} give α²σ²·2/(2−αh) (closed forms of the scalar AR recursions)."""
    h, alpha, sigma, R = 2.0, 0.1, 0.5, 6000
    noise = noises.additive(lambda w: 0.5 * h * (w**2).sum(-1), 2, sigma=sigma)
    res = simulate_noise(
        noise, [0.0, 0.0], lr=alpha, steps=120, chains=R, seed=4, record_every=120, anti_correlated=anti
    )
    var = alpha**2 * sigma**2 * 2 / (2 - alpha * h) if anti else alpha * sigma**2 / (h * (2 - alpha * h))
    v = res.final.var(0, ddof=1)
    assert np.all(np.abs(v - var) < 4 * var * np.sqrt(2.0 / R))
    assert np.all(np.abs(res.final.mean(0)) < 4 * np.sqrt(var / R))


def test_noise_nonlinear_in_eta_shifts_the_mean() -> None:
    """L̂ = ½hw² + ½cwη² (Reg = ½cw): E w = −cσ²/(2h), Var w = (αc/2)²·2σ⁴/(1−(1−αh)²) exactly."""
    h, c, alpha, sigma, R = 1.0, 2.0, 0.1, 0.5, 20000
    res = noisy_gd(
        lambda w, e: 0.5 * h * (w**2).sum(-1) + 0.5 * c * (w * e**2).sum(-1),
        [0.0],
        lr=alpha,
        sigma=sigma,
        eta_dim=1,
        steps=150,
        chains=R,
        seed=11,
        record_every=150,
        vectorised=True,
    )
    mean, var = -c * sigma**2 / (2 * h), (alpha * c / 2) ** 2 * 2 * sigma**4 / (1 - (1 - alpha * h) ** 2)
    w = res.final[:, 0]
    assert abs(w.mean() - mean) < 4 * np.sqrt(var / R)
    se_var = np.sqrt((np.mean((w - w.mean()) ** 4) - w.var() ** 2) / R)  # from the sample 4th moment (skewed law)
    assert abs(w.var() - var) < 4 * se_var


@pytest.mark.parametrize("vectorised", [False, True])
def test_chains_independent_of_batch_and_block(vectorised: bool) -> None:
    """A chain's path depends only on (seed, global chain index): batch vs one-by-one vs other block sizes."""
    lh = lambda w, e: circle_loss(w + e)  # noqa: E731  (Ex. 1.2, L̂ = L(w+η))
    kw = dict(lr=0.1, sigma=0.1, eta_dim=2, steps=60, seed=42, record_every=20, vectorised=vectorised)
    batch = noisy_gd(lh, [0.0, 1.5], chains=[3, 7, 11], block=512, **kw)
    for r, c in enumerate([3, 7, 11]):
        alone = noisy_gd(lh, [0.0, 1.5], chains=[c], block=7, **kw)
        np.testing.assert_allclose(alone.positions[:, 0], batch.positions[:, r], rtol=0, atol=1e-13)
    assert np.ptp(batch.final[:, 0]) > 1e-3  # the chains differ


def test_divergence_is_recorded_per_chain() -> None:
    lh = lambda w, e: circle_loss(w + e)  # noqa: E731
    kw = dict(sigma=0.1, eta_dim=2, steps=200, seed=1, record_every=10, vectorised=True)
    mixed = noisy_gd(lh, [0.0, 1.5], lr=[0.1, 5.0, 0.05], chains=3, **kw)
    assert list(mixed.diverged) == [False, True, False]
    assert 0 < mixed.diverged_at[1] <= 200 and mixed.diverged_at[[0, 2]].tolist() == [-1, -1]
    after = mixed.steps >= mixed.diverged_at[1]
    assert np.isnan(mixed.positions[after, 1]).all() and np.isfinite(mixed.positions[:, [0, 2]]).all()
    ok = noisy_gd(lh, [0.0, 1.5], lr=[0.1, 0.05], chains=[0, 2], **kw)
    np.testing.assert_allclose(mixed.positions[:, [0, 2]], ok.positions, rtol=0, atol=1e-13)
    frame = mixed.to_frame(variant="x")
    assert len(frame) == len(mixed.steps) * 3 and frame.loc[frame.chain == 1, "diverged"].all()


def test_time_averages_match_recorded_path() -> None:
    res = noisy_gd(
        linear_loss_hat,
        MU,
        lr=ALPHA,
        sigma=SIGMA,
        eta_dim=3,
        steps=100,
        chains=2,
        seed=2,
        record_every=1,
        average_from=40,
        vectorised=True,
    )
    tail = res.positions[40:]
    np.testing.assert_allclose(res.mean, tail.mean(0), atol=1e-12)
    for r in range(2):
        np.testing.assert_allclose(res.cov[r], np.cov(tail[:, r].T, bias=True), atol=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=-0.1),
        dict(lr=0.1, sigma=-1.0, eta_dim=2),
        dict(lr=0.1, sigma=0.1),
        dict(lr=[0.1, 0.2, 0.3]),
        dict(lr=0.1, steps=-1),
        dict(lr=0.1, record_every=0),
        dict(lr=float("nan")),
        dict(lr=0.1, chains=[0, -1]),
        dict(lr=0.1, chains=0),
        dict(lr=True),
        dict(lr=[0.1, False]),
        dict(lr=0.1, w0=[float("nan"), 1.5]),
        dict(lr=0.1, w0="top"),
    ],
)
def test_invalid_arguments_raise_config_error(kwargs: dict) -> None:
    args = dict(steps=10, chains=2, w0=[0.0, 1.5]) | kwargs
    with pytest.raises(ConfigError):
        noisy_gd(lambda w, e: circle_loss(w), args.pop("w0"), **args)


def test_simulate_noise_checks_the_start_against_the_noise_dimension() -> None:
    from noiseprobe.limits.noises import perturbed

    with pytest.raises(ConfigError, match="w0"):
        simulate_noise(perturbed(circle_loss, 2), [0.0, 1.5, 0.0], lr=0.1, sigma=0.1, steps=3, chains=2)
