"""Noise library: L̂(w, 0) = L(w), noise laws (mean, covariance) against exact or sampled moments, and the
NGD forms of SGLD and anti-PGD against their iterate definitions (docs/theory/singular_limits.md §7.4, §7.6, §7.7)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from noiseprobe.core.errors import ConfigError
from noiseprobe.limits import losses as Ls
from noiseprobe.limits import noises as N

X1 = torch.ones(1, 1, dtype=torch.float64)
Y1 = torch.ones(1, dtype=torch.float64)
XS = torch.tensor([[1.0], [2.0], [-0.5]], dtype=torch.float64)
YS = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)


def per_sample(w: torch.Tensor) -> torch.Tensor:
    return 0.5 * (Ls.product_model(w, XS) - YS) ** 2


ALL = {
    "perturbed": N.perturbed(Ls.circle_loss, 2, sigma=0.1),
    "perturbed_corr": N.perturbed(Ls.circle_loss, 2, C=[[0.5, 0.5], [0.5, 0.5]], sigma=0.1),
    "anti_pgd": N.anti_pgd(Ls.circle_loss, 2, sigma=0.1),
    "additive": N.additive(Ls.circle_loss, 2, sigma=0.1),
    "sgld": N.sgld(Ls.circle_loss, 2, lr=0.1, beta=200.0),
    "plain_pgd": N.plain_pgd(Ls.circle_loss, 2, lr=0.1, sigma_xi=0.01),
    "label_noise": N.label_noise(Ls.product_model, XS, YS, d=2, sigma=0.2),
    "minibatch": N.minibatch(per_sample, N=3, batch_size=2, d=2),
    "dropout_gauss": N.dropout(Ls.linear_units, XS, YS, d=4, n_units=2, sigma=0.1),
    "dropout_bern": N.dropout(Ls.linear_units, XS, YS, d=4, n_units=2, kind="bernoulli", p=0.1),
    "dropconnect_gauss": N.dropconnect(Ls.square_loss(Ls.parabola_model, X1, Y1), 2, sigma=0.1),
    "dropconnect_bern": N.dropconnect(Ls.square_loss(Ls.parabola_model, X1, Y1), 2, kind="bernoulli", p=0.1),
    "fig3_top": N.fig3_nondegenerate(),
    "fig3_bottom": N.fig3_degenerate(),
}


@pytest.mark.parametrize("name", ALL)
def test_zero_noise_is_the_loss_and_shapes_broadcast(name: str) -> None:
    noise = ALL[name]
    w = torch.randn(5, 3, noise.d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    zero = torch.zeros(noise.eta_dim, dtype=torch.float64)
    assert torch.allclose(noise.loss_hat(w, zero), noise.loss(w), rtol=0, atol=1e-14)
    eta = torch.from_numpy(noise.sample(3, np.random.default_rng(0)))
    assert eta.shape == (3, noise.eta_dim)
    assert noise.loss_hat(w, eta).shape == (5, 3)
    assert noise.regime in N.REGIMES and noise.clock


@pytest.mark.parametrize("name", ["perturbed_corr", "dropconnect_bern", "minibatch", "fig3_top"])
def test_sampler_mean_zero_and_covariance_sigma2_C(name: str) -> None:
    """Sample mean and covariance of η against 0 and σ² C̃, within 5 standard errors per entry."""
    noise, n = ALL[name], 200_000
    eta = noise.sample(n, np.random.default_rng(3))
    s2 = noise.sigma**2
    se_mean = np.sqrt(np.diag(s2 * noise.C.numpy()) / n)
    assert np.all(np.abs(eta.mean(0)) <= 5 * se_mean + 1e-15)
    prods = eta[:, :, None] * eta[:, None, :]
    se_cov = prods.std(0) / math.sqrt(n)
    assert np.all(np.abs(prods.mean(0) - s2 * noise.C.numpy()) <= 5 * se_cov + 1e-15)


def test_minibatch_covariance_by_enumerating_all_batches() -> None:
    """C̃ = (N I − 11ᵀ)/(N−1) and σ² = (N−B)/(N²B) against the exact law of sampling without replacement."""
    Nn, B = 5, 2
    noise = N.minibatch(lambda w: w[..., :1].expand(*w.shape[:-1], Nn) ** 2, N=Nn, batch_size=B, d=1)
    etas = []
    for batch in itertools.combinations(range(Nn), B):
        ind = np.zeros(Nn)
        ind[list(batch)] = 1.0
        etas.append(ind / B - 1.0 / Nn)
    etas = np.array(etas)
    assert np.allclose(etas.mean(0), 0.0)
    assert np.allclose(etas.T @ etas / len(etas), noise.sigma**2 * noise.C.numpy(), atol=1e-15)


def test_bernoulli_mask_law() -> None:
    """η_i ∈ {−1, p/(1−p)} with P(η_i = −1) = p (the weight is dropped), σ² = p/(1−p)."""
    p = 0.2
    noise = N.dropconnect(Ls.circle_loss, 2, kind="bernoulli", p=p)
    assert noise.sigma**2 == pytest.approx(p / (1 - p))
    eta = noise.sample(100_000, np.random.default_rng(5))
    assert set(np.unique(np.round(eta, 12))) == {-1.0, round(p / (1 - p), 12)}
    frac = (eta == -1.0).mean()
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / eta.size)


def test_sgld_and_plain_pgd_steps_match_their_iterate_definitions() -> None:
    """NGD with L̂ = L + η·w and η = −σξ is w − α∇L + √(2α/β) ξ (SGLD) and w − α∇L + σ_ξ ξ (plain PGD)."""
    lr, beta, sigma_xi = 0.1, 50.0, 0.03
    w = torch.tensor([[0.3, 1.2]], dtype=torch.float64, requires_grad=True)
    xi = torch.tensor([[0.7, -1.1]], dtype=torch.float64)
    grad_L = torch.autograd.grad(Ls.circle_loss(w).sum(), w)[0]
    for noise, scale in (
        (N.sgld(Ls.circle_loss, 2, lr=lr, beta=beta), math.sqrt(2 * lr / beta)),
        (N.plain_pgd(Ls.circle_loss, 2, lr=lr, sigma_xi=sigma_xi), sigma_xi),
    ):
        eta = -noise.sigma * xi
        g = torch.autograd.grad(noise.loss_hat(w, eta).sum(), w)[0]
        assert torch.allclose(w - lr * g, w - lr * grad_L + scale * xi, atol=1e-14)


def test_anti_pgd_is_perturbed_gd_in_shifted_variables() -> None:
    """§7.7: w_{k+1} = w_k − α∇L(w_k) + ξ_{k+1} − ξ_k equals z + ξ for z_{k+1} = z_k − α∇_z L̂(z_k, ξ_k)."""
    noise, lr = N.anti_pgd(Ls.circle_loss, 2, sigma=0.1), 0.1
    xi = torch.from_numpy(noise.sample(51, np.random.default_rng(2)))
    w = torch.tensor([0.2, 1.4], dtype=torch.float64) + xi[0]
    z = w - xi[0]
    for k in range(50):
        wl = w.detach().requires_grad_(True)
        w = w - lr * torch.autograd.grad(Ls.circle_loss(wl), wl)[0] + xi[k + 1] - xi[k]
        zl = z.detach().requires_grad_(True)
        z = z - lr * torch.autograd.grad(noise.loss_hat(zl, xi[k]), zl)[0]
    assert torch.allclose(w, z + xi[50], atol=1e-12)


@pytest.mark.parametrize(
    "build",
    [
        lambda: N.perturbed(Ls.circle_loss, 2, C=[[1.0, 2.0], [2.0, 1.0]]),  # not PSD
        lambda: N.perturbed(Ls.circle_loss, 0),
        lambda: N.dropconnect(Ls.circle_loss, 2, kind="bernoulli"),  # neither p nor sigma
        lambda: N.dropconnect(Ls.circle_loss, 2, kind="bernoulli", p=1.0),
        lambda: N.dropconnect(Ls.circle_loss, 2, kind="gaussian", p=0.1),
        lambda: N.dropconnect(Ls.circle_loss, 2, kind="uniform"),
        lambda: N.minibatch(per_sample, N=3, batch_size=3, d=2),  # B = N: no noise
        lambda: N.sgld(Ls.circle_loss, 2, lr=0.0, beta=1.0),
        lambda: N.perturbed(Ls.circle_loss, 2).sample(3, np.random.default_rng(0)),  # no sigma
        lambda: N.perturbed(Ls.circle_loss, 2, sigma=-0.1),
        lambda: N.dropconnect(Ls.circle_loss, 2, kind="bernoulli", sigma=math.inf),
        lambda: ALL["minibatch"].sample(3, np.random.default_rng(0), 0.5),  # minibatch level is fixed
        lambda: N.perturbed(Ls.circle_loss, 2, C=[[1.0, 0.5], [0.0, 1.0]]),  # not symmetric
        lambda: N.perturbed(Ls.circle_loss, 2, C=[[math.nan, 0.0], [0.0, 1.0]]),
        lambda: N.perturbed(Ls.circle_loss, 2, C="identity"),
        lambda: N.additive(Ls.circle_loss, 2, C=[[1.0, 0.0, 0.0]]),  # wrong shape
        lambda: N.label_noise(Ls.product_model, [["a"]], YS, d=2),
        lambda: N.label_noise(Ls.product_model, XS, torch.tensor([1.0, math.nan, 2.0]), d=2),
        lambda: N.check_params(ALL["perturbed"], "w"),
        lambda: N.check_params(ALL["perturbed"], torch.zeros(3)),  # d = 3, not 2
    ],
)
def test_invalid_inputs_raise_config_error(build) -> None:
    with pytest.raises(ConfigError):
        build()


def test_confusable_parameters_are_keyword_only() -> None:
    """Learning rate, batch size and noise level cannot be passed by position (docs/conventions.md)."""
    with pytest.raises(TypeError):
        N.sgld(Ls.circle_loss, 2, 0.1, 200.0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        N.minibatch(per_sample, 3, 2, 2)  # type: ignore[misc]
    with pytest.raises(TypeError):
        N.perturbed(Ls.circle_loss, 2, None, 0.1)  # type: ignore[misc]


def test_minibatch_level_uses_the_batch_factor() -> None:
    """σ²C̃ = c(B, N)(N I − 11ᵀ)/N² with c(B, N) = batch_factor(B, N, replacement=False) (= (N−B)/(B(N−1)))."""
    from noiseprobe.probes.operators.noise_covariance import batch_factor

    for Nn, B in ((2, 1), (5, 2), (7, 6)):
        noise = N.minibatch(lambda w: w[..., :1].expand(*w.shape[:-1], Nn) ** 2, N=Nn, batch_size=B, d=1)
        expected = batch_factor(B, Nn, replacement=False) * (Nn * np.eye(Nn) - 1.0) / Nn**2
        assert np.allclose(noise.sigma**2 * noise.C.numpy(), expected, rtol=1e-14, atol=1e-16)
        assert noise.sigma**2 == pytest.approx((Nn - B) / (Nn * Nn * B), rel=1e-14)


def test_fig3_minibatch_is_interpolating() -> None:
    """ℓ_i = ½(w₁w₂x_i − y_i)² with x = y = (1, 2): every ℓ_i and its gradient vanish on w₁w₂ = 1; σ = ½."""
    noise = N.fig3_minibatch()
    w = torch.tensor([[2.0, 0.5], [0.25, 4.0]], dtype=torch.float64, requires_grad=True)
    eta = torch.from_numpy(noise.sample(2, np.random.default_rng(0)))
    g = torch.autograd.grad(noise.loss_hat(w, eta).sum(), w)[0]
    assert noise.sigma == 0.5 and noise.regime == "trivial"
    assert torch.allclose(noise.loss(w), torch.zeros(2, dtype=torch.float64)) and torch.all(g == 0)
