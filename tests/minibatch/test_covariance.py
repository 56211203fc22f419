"""Linear-regression noise covariance: closed forms against autograd and against sampled minibatches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.minibatch.covariance import gaussian_regression_noise, gradient_noise, linear_regression_noise
from noiseprobe.probes.operators import GradientNoise


def _z(samples: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    d = samples - mean
    iu = np.triu_indices(cov.shape[0])
    prods = d[:, iu[0]] * d[:, iu[1]]
    return (prods.mean(0) - cov[iu]) / (prods.std(0, ddof=1) / np.sqrt(len(d)))


def _dataset(n: int = 15, d: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d))
    y = x @ np.array([0.5, -1.0, 0.3]) + 0.7 * rng.standard_normal(n)
    return x, y, rng.standard_normal(d)


@pytest.mark.parametrize("replacement", [True, False])
def test_linear_regression_closed_form_matches_autograd(replacement: bool) -> None:
    """Independent path: per-sample gradients of ½(f − y)² by autograd through an nn.Linear."""
    x, y, w = _dataset()
    model = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(w)[None])

    def half_mse(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * (out[:, 0] - t) ** 2

    ref = (
        GradientNoise(model, half_mse, torch.from_numpy(x), torch.from_numpy(y), batch_size=4, replacement=replacement)
        .dense()
        .numpy()
    )
    np.testing.assert_allclose(
        linear_regression_noise(w, x, y, batch_size=4, replacement=replacement), ref, rtol=1e-12, atol=1e-15
    )


@pytest.mark.parametrize("replacement", [True, False])
def test_linear_regression_closed_form_matches_sampled_minibatches(replacement: bool) -> None:
    x, y, w = _dataset()
    n, s, draws = len(y), 5, 100_000
    rng = np.random.default_rng(1 + replacement)
    idx = rng.integers(0, n, (draws, s)) if replacement else np.argsort(rng.random((draws, n)), axis=1)[:, :s]
    xb, yb = x[idx], y[idx]  # (draws, S, D), (draws, S)
    g = ((xb @ w - yb)[..., None] * xb).mean(1)  # ĝ of the ½ loss
    exact_mean = x.T @ (x @ w - y) / n
    c = linear_regression_noise(w, x, y, batch_size=s, replacement=replacement)
    assert np.abs(_z(g, exact_mean, c)).max() < 5.0
    other = linear_regression_noise(w, x, y, batch_size=s, replacement=not replacement)
    assert np.abs(_z(g, exact_mean, other)).max() > 10.0


def test_gaussian_population_noise_matches_monte_carlo() -> None:
    """Fresh Gaussian x per draw (N → ∞); the non-Gaussian (Thm 5-like) sign would be rejected."""
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    a = q @ np.diag([1.5, 0.8, 0.3]) @ q.T
    u, w, sigma2, s, draws = np.array([1.0, -0.5, 0.7]), np.array([0.2, 0.4, -0.6]), 0.49, 4, 100_000
    x = rng.standard_normal((draws, s, 3)) @ np.linalg.cholesky(a).T
    eps = np.sqrt(sigma2) * rng.standard_normal((draws, s))
    g = (((x @ (w - u)) - eps)[..., None] * x).mean(1)
    c = gaussian_regression_noise(w, u=u, A=a, sigma=np.sqrt(sigma2), batch_size=s)
    av = a @ (w - u)
    assert np.abs(_z(g, av, c)).max() < 5.0
    wrong = c - 2 * np.outer(av, av) / s  # (1/S)[(2L) A − ∇L∇Lᵀ]: drops the Gaussian fourth moment
    assert np.abs(_z(g, av, wrong)).max() > 10.0


def test_gradient_noise_factors_and_validation() -> None:
    x, y, w = _dataset()
    grads = (x @ w - y)[:, None] * x
    full = gradient_noise(grads, batch_size=len(y), replacement=False)
    np.testing.assert_allclose(full, 0.0, atol=1e-15)  # S = N without replacement: no noise
    m = gradient_noise(grads, batch_size=1)
    np.testing.assert_allclose(gradient_noise(grads, batch_size=1, replacement=False), m, rtol=1e-14)  # eq. (100)
    np.testing.assert_allclose(gradient_noise(grads, batch_size=3), m / 3, rtol=1e-14)  # eq. (99a)
    np.testing.assert_allclose(
        gradient_noise(grads, batch_size=3, replacement=False), m * 12 / (3 * 14), rtol=1e-14
    )  # eq. (99b)
    with pytest.raises(ConfigError):
        linear_regression_noise(w[:2], x, y, batch_size=2)
    with pytest.raises(ConfigError):
        gaussian_regression_noise(w, u=w, A=np.eye(3), sigma=-1.0, batch_size=2)
    with pytest.raises(ConfigError):
        gradient_noise(np.full((3, 2), np.nan), batch_size=1)
