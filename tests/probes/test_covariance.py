"""GradientNoise against the empirical covariance of sampled minibatch gradients and against dense algebra."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.probes.operators import GradientNoise, batch_factor

CE = nn.CrossEntropyLoss(reduction="none")


def _problem(n: int = 12, width: int = 3) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 2)).double()
    g = torch.Generator().manual_seed(5)
    return model, torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (n,), generator=g)


def _sampled_gradients(j: np.ndarray, s: int, replacement: bool, draws: int, seed: int) -> np.ndarray:
    """``draws`` minibatch gradients (1/S) Σ_{i∈B} ∇ℓ_i, with B sampled by index (Def. 2 or Def. 3)."""
    rng = np.random.default_rng(seed)
    n = j.shape[0]
    if replacement:
        counts = rng.multinomial(s, np.full(n, 1.0 / n), size=draws).astype(np.float64)
    else:
        counts = (np.argsort(rng.random((draws, n)), axis=1) < s).astype(np.float64)
    return counts @ j / s


def _z_scores(samples: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """z of every upper-triangular entry of the empirical covariance about the exact mean vs ``cov``."""
    d = samples - mean
    iu = np.triu_indices(cov.shape[0])
    prods = d[:, iu[0]] * d[:, iu[1]]
    se = prods.std(0, ddof=1) / np.sqrt(len(d))
    return (prods.mean(0) - cov[iu]) / se


@pytest.mark.parametrize("s", [3, 6])
@pytest.mark.parametrize("replacement", [True, False])
def test_exact_covariance_matches_sampled_minibatches(s: int, replacement: bool) -> None:
    model, x, y = _problem()
    n = x.shape[0]
    noise = GradientNoise(model, CE, x, y, batch_size=s, replacement=replacement)
    c = noise.dense().numpy()
    j = noise.grads.dense().numpy()  # J itself is checked against torch.func and autograd in test_persample
    gbar = j.mean(0)
    np.testing.assert_allclose(noise.mean_gradient.numpy(), gbar, rtol=1e-12, atol=1e-15)
    samples = _sampled_gradients(j, s, replacement, 50_000, seed=10 * s + replacement)
    se_mean = samples.std(0, ddof=1) / np.sqrt(len(samples))
    assert np.all(np.abs(samples.mean(0) - gbar) < 5 * se_mean)  # E_B ĝ = ∇L for both schemes
    z = _z_scores(samples, gbar, c)
    assert np.abs(z).max() < 5.0, np.abs(z).max()  # ~200 entries: the null max |z| is about 3.5
    # the test discriminates: the other scheme's factor is rejected
    other = c * batch_factor(s, n, not replacement) / batch_factor(s, n, replacement)
    assert np.abs(_z_scores(samples, gbar, other)).max() > 10.0


def test_minibatch_gradient_is_the_mean_of_per_sample_gradients() -> None:
    """The sampled ĝ above uses rows of J; check it against autograd of the minibatch loss itself."""
    model, x, y = _problem()
    j = GradientNoise(model, CE, x, y).grads.dense()
    idx = torch.tensor([0, 4, 4, 9])
    model.zero_grad()
    CE(model(x[idx]), y[idx]).mean().backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(g, j[idx].mean(0), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("method", ["hooks", "func"])
def test_matrix_free_products_match_dense(method: str) -> None:
    model, x, y = _problem(n=20, width=5)
    noise = GradientNoise(model, CE, x, y, batch_size=4, replacement=False, method=method)
    c = noise.dense()
    v = torch.randn(c.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(noise.mv(v), c @ v, rtol=1e-10, atol=1e-14)
    assert noise.trace() == pytest.approx(float(c.trace()), rel=1e-12)
    torch.testing.assert_close(noise.diagonal(), c.diagonal(), rtol=1e-10, atol=1e-15)
    lam, vecs = noise.topk(6, vectors="param")
    ref = torch.linalg.eigvalsh(c).flip(0)[:6]
    torch.testing.assert_close(lam, ref, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(c @ vecs, vecs * lam, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(vecs.T @ vecs, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-9)
    lam_s, u = noise.topk(6, vectors="sample")  # sample-space vectors, lifted on demand
    lifted = noise.grads.vjp(u * (noise.n * lam_s / noise.factor).rsqrt())
    torch.testing.assert_close(lifted, vecs, rtol=1e-8, atol=1e-12)
    assert noise.topk(6, vectors="none")[1] is None


def test_topk_krylov_path_matches_dense_eigh() -> None:
    """N > 400 takes the block-Krylov branch of lanczos on the explicit Gram matrix; compare with a dense eigendecomposition of C."""
    model, x, y = _problem(n=500, width=8)
    noise = GradientNoise(model, CE, x, y, batch_size=10)
    lam, vecs = noise.topk(4, vectors="param")
    c = noise.dense()
    torch.testing.assert_close(lam, torch.linalg.eigvalsh(c).flip(0)[:4], rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(c @ vecs, vecs * lam, rtol=1e-7, atol=1e-12)


def test_batch_factor_limits_and_errors() -> None:
    assert batch_factor(1, 50, True) == batch_factor(1, 50, False) == 1.0  # eq. (100), S = 1
    assert batch_factor(50, 50, False) == 0.0  # the full batch has no noise without replacement
    assert batch_factor(7, 10**9, False) == pytest.approx(1 / 7, rel=1e-8)  # eq. (100), N ≫ S
    for bad in [dict(batch_size=0, n=5), dict(batch_size=6, n=5, replacement=False), dict(batch_size=2.0, n=5)]:
        with pytest.raises(ConfigError):
            batch_factor(**bad)
    model, x, y = _problem()
    with pytest.raises(ConfigError, match="k ="):
        GradientNoise(model, CE, x, y).topk(12)


def test_topk_beyond_the_rank_gives_zero_vectors() -> None:
    """Three distinct samples, each twice: rank C ≤ 2, so eigenpairs 3 and 4 are (0, zero vector)."""
    model, x, y = _problem(n=3)
    noise = GradientNoise(model, CE, x.repeat(2, 1), y.repeat(2), batch_size=2)
    lam, vecs = noise.topk(4, vectors="param")
    c = noise.dense()
    assert lam[2:].abs().max() < 1e-12 * lam[0] and vecs[:, 2:].abs().max() == 0
    torch.testing.assert_close(c @ vecs[:, :2], vecs[:, :2] * lam[:2], rtol=1e-9, atol=1e-13)


def test_topk_of_overflowing_gradients_is_one_line_naming_the_model() -> None:
    """Finite losses whose per-sample gradients overflow the Gram matrix (inputs of 1e200): topk refuses with
    one line naming the model, not the eigensolver's argument."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    x = torch.randn(6, 3, dtype=torch.float64) * 1e200
    noise = GradientNoise(model, CE, x, torch.randint(0, 2, (6,)))
    assert not torch.isfinite(noise.gram()).all()
    with pytest.raises(ConfigError, match=r"^model = 'per-sample gradients' is invalid"):
        noise.topk(2)
