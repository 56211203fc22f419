"""Regularisers against closed forms (docs/theory/singular_limits.md §7), finite-difference Laplacians, Monte Carlo of
(E L̂ − L)/σ², and the exact Bernoulli expectation by enumerating all masks (§7.2)."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from noiseprobe.core.errors import ConfigError
from noiseprobe.limits import losses as Ls
from noiseprobe.limits import noises as N
from noiseprobe.limits import regulariser as R
from noiseprobe.limits.mlp import MLPLoss

X1 = torch.ones(1, 1, dtype=torch.float64)
Y1 = torch.ones(1, dtype=torch.float64)
PARABOLA = Ls.square_loss(Ls.parabola_model, X1, Y1)  # L = ½(w₁ + w₂² − 1)²


def circle_points(n: int = 7, radius: float = 1.0) -> torch.Tensor:
    th = torch.linspace(0.1, 2 * math.pi - 0.3, n, dtype=torch.float64)
    return radius * torch.stack([th.cos(), th.sin()], -1)


def fd_hessian(loss, w: torch.Tensor, h: float = 1e-4) -> torch.Tensor:
    """Central finite-difference Hessian of loss at rows of w (independent of autograd)."""
    d = w.shape[-1]
    E = torch.eye(d, dtype=torch.float64) * h
    H = torch.empty(*w.shape, d, dtype=torch.float64)
    for i in range(d):
        for j in range(d):
            H[..., i, j] = (
                loss(w + E[i] + E[j]) - loss(w + E[i] - E[j]) - loss(w - E[i] + E[j]) + loss(w - E[i] - E[j])
            ) / (4 * h * h)
    return H


def test_perturbed_is_half_laplacian_and_correlated_is_half_e_H_e() -> None:
    """§7.1: Reg = ½ tr ∇²L for C̃ = I; Reg_C = ½ tr(C̃∇²L) = ½ eᵀ∇²L e for C̃ = ½·ones (Fig. 4 right)."""
    w = torch.cat([circle_points(), circle_points(5, 1.3)])
    H = fd_hessian(Ls.circle_loss, w)
    reg = R.regulariser(N.perturbed(Ls.circle_loss, 2), w)
    assert torch.allclose(reg, 0.5 * H.diagonal(dim1=-2, dim2=-1).sum(-1), atol=1e-6)
    e = torch.tensor([1.0, 1.0], dtype=torch.float64) / math.sqrt(2)
    reg_c = R.regulariser(N.perturbed(Ls.circle_loss, 2, C=[[0.5, 0.5], [0.5, 0.5]]), w)
    assert torch.allclose(reg_c, 0.5 * torch.einsum("i,...ij,j->...", e, H, e), atol=1e-6)
    # on Γ (unit circle): Reg_C = ½ λ (n·e)², λ = 1.5 + cos θ, n = w
    on = circle_points()
    expected = 0.5 * (1.5 + on[:, 0]) * (on @ e) ** 2
    assert torch.allclose(
        R.regulariser(N.perturbed(Ls.circle_loss, 2, C=[[0.5, 0.5], [0.5, 0.5]]), on), expected, atol=1e-12
    )


def test_fig3_top_is_a_over_2_not_the_captions_2a() -> None:
    """§7.8: Reg = ½∂²_η L̂ = a(w)/2; the caption's printed 2a(w) is 4× larger."""
    w = torch.cat([circle_points(), circle_points(4, 0.7)])
    a = 1.0 - 0.7 * torch.cos(2 * w[:, 0])
    noise = N.fig3_nondegenerate()
    assert torch.allclose(R.regulariser(noise, w), a / 2, atol=1e-14)
    assert torch.allclose(R.fig3_caption_regulariser(w), 4 * R.regulariser(noise, w), atol=1e-14)
    grad_a = torch.stack([1.4 * torch.sin(2 * w[:, 0]), torch.zeros_like(a)], -1)
    assert torch.allclose(R.grad_regulariser(noise, w), grad_a / 2, atol=1e-14)


def test_degenerate_noises_have_constant_regulariser() -> None:
    """§7.4–7.6, §7.8: label noise Reg = ½ (Δ_η L̂ = 1 with the 1/(2N) convention), minibatch, SGLD, Fig. 3
    bottom Reg ≡ 0; their gradients vanish everywhere."""
    w = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    X = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    y = torch.tensor([1.0, 0.3], dtype=torch.float64)
    per_sample = lambda v: 0.5 * (Ls.product_model(v, X) - y) ** 2  # noqa: E731
    cases = [
        (N.label_noise(Ls.product_model, X, y, d=2), 0.5),
        (N.minibatch(per_sample, N=2, batch_size=1, d=2), 0.0),
        (N.additive(Ls.circle_loss, 2), 0.0),
        (N.fig3_degenerate(), 0.0),
    ]
    for noise, value in cases:
        assert torch.allclose(R.regulariser(noise, w), torch.full((6,), value, dtype=torch.float64), atol=1e-14)
        assert torch.allclose(R.grad_regulariser(noise, w), torch.zeros(6, 2, dtype=torch.float64), atol=1e-14)


def test_dropout_regulariser_closed_form_and_exact_for_bernoulli() -> None:
    """§7.3: Reg = (1/(2N)) Σ_n Σ_j u_nj² for square loss; L̂ is quadratic in η, so Reg_B = Reg_Lap and
    E L̂ − L = σ² Reg exactly for Bernoulli masks (checked by enumerating the 4 masks)."""
    X = torch.tensor([[1.0], [2.0], [-0.5]], dtype=torch.float64)
    y = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    w = torch.tensor([[0.9, 1.1, 0.4, -0.7], [0.2, 0.3, 1.5, 0.1]], dtype=torch.float64)
    p = 0.3
    noise = N.dropout(Ls.linear_units, X, y, d=4, n_units=2, kind="bernoulli", p=p)
    u = Ls.linear_units(w, X)
    closed = 0.5 * (u**2).sum(-1).mean(-1)
    assert torch.allclose(R.regulariser(noise, w, "laplacian"), closed, atol=1e-13)
    assert torch.allclose(R.nonlocal_regulariser(noise, w), closed, atol=1e-13)
    exact = torch.zeros(2, dtype=torch.float64)
    for keep in itertools.product([0, 1], repeat=2):
        prob = math.prod((1 - p) if k else p for k in keep)
        eta = torch.tensor(keep, dtype=torch.float64) / (1 - p) - 1.0
        exact += prob * noise.loss_hat(w, eta)
    assert torch.allclose((exact - noise.loss(w)) / (p / (1 - p)), closed, atol=1e-12)


def test_dropconnect_laplacian_and_nonlocal_closed_forms() -> None:
    """§7.2 on f = w₁ + w₂², y = 1 (r = f − 1): Reg_Lap = ½(w₁²·1 + w₂²(4w₂² + 2r)),
    Reg_B = ½(w₂²−1)² + ½(w₁−1)² − 2L + w₁ r + 2w₂² r."""
    w = torch.tensor([[0.3, 0.5], [1.2, -0.4], [0.96, 0.2], [0.5, math.sqrt(0.5)]], dtype=torch.float64)
    r = w[:, 0] + w[:, 1] ** 2 - 1
    L = 0.5 * r**2
    lap = 0.5 * (w[:, 0] ** 2 + w[:, 1] ** 2 * (4 * w[:, 1] ** 2 + 2 * r))
    nonloc = 0.5 * (w[:, 1] ** 2 - 1) ** 2 + 0.5 * (w[:, 0] - 1) ** 2 - 2 * L + w[:, 0] * r + 2 * w[:, 1] ** 2 * r
    bern = N.dropconnect(PARABOLA, 2, kind="bernoulli", p=0.01)
    gauss = N.dropconnect(PARABOLA, 2, kind="gaussian", sigma=0.1)
    assert torch.allclose(R.regulariser(gauss, w), lap, atol=1e-13)
    assert torch.allclose(R.regulariser(bern, w, "laplacian"), lap, atol=1e-13)
    assert torch.allclose(R.regulariser(bern, w), nonloc, atol=1e-13)  # "auto" → non-local
    assert torch.allclose(R.nonlocal_regulariser(bern, w), nonloc, atol=1e-13)
    # gradient by autodiff vs central differences of the closed form
    h = 1e-6
    for form in ("laplacian", "nonlocal"):
        g = R.grad_regulariser(bern, w, form)
        fd = torch.stack(
            [
                (R.regulariser(bern, w + h * e, form) - R.regulariser(bern, w - h * e, form)) / (2 * h)
                for e in torch.eye(2, dtype=torch.float64)
            ],
            -1,
        )
        assert torch.allclose(g, fd, atol=1e-7)


def test_bernoulli_dropconnect_follows_nonlocal_not_laplacian() -> None:
    """Exact E L̂ over the 4 masks: (E L̂ − L)/σ² → Reg_B as p → 0 (error O(p)), and stays far from Reg_Lap
    on Γ where L is not quadratic along the axes (§7.2, trap 3)."""
    w = torch.tensor(
        [[1 - 0.6**2, 0.6], [0.5, math.sqrt(0.5)]], dtype=torch.float64
    )  # on Γ: Reg_B − Reg_Lap = −1.5 w₂⁴
    for p in (1e-3, 1e-4):
        noise = N.dropconnect(PARABOLA, 2, kind="bernoulli", p=p)
        exact = torch.zeros(2, dtype=torch.float64)
        for keep in itertools.product([0, 1], repeat=2):
            prob = math.prod((1 - p) if k else p for k in keep)
            exact += prob * noise.loss_hat(w, torch.tensor(keep, dtype=torch.float64) / (1 - p) - 1.0)
        excess = (exact - noise.loss(w)) / (p / (1 - p))
        assert torch.allclose(excess, R.nonlocal_regulariser(noise, w), atol=20 * p)
        assert (excess - R.regulariser(noise, w, "laplacian")).abs().min() > 0.15


def gauss_hermite_expectation(noise: N.Noise, w: torch.Tensor, sigma: float, nodes: int = 6) -> torch.Tensor:
    """E L̂(w, η), η = σ R ξ, R Rᵀ = C̃, ξ ~ N(0, I_r), by tensor-product Gauss–Hermite quadrature: exact for
    L̂ polynomial in η of degree < 2·nodes (every case below), independent of autodiff and of the sampler."""
    x, wts = np.polynomial.hermite_e.hermegauss(nodes)
    wts = wts / wts.sum()
    R = N.covariance_root(noise.C).numpy()
    grid = np.array(list(itertools.product(x, repeat=R.shape[1])))  # (nodes^r, r)
    weight = np.prod(np.array(list(itertools.product(wts, repeat=R.shape[1]))), -1)
    eta = torch.from_numpy(sigma * grid @ R.T)
    return (noise.loss_hat(w[..., None, :], eta) * torch.from_numpy(weight)).sum(-1)


@pytest.mark.parametrize("case", ["perturbed", "perturbed_corr", "dropconnect_gauss", "fig3_top"])
def test_excess_loss_monte_carlo_and_its_small_noise_limit(case: str) -> None:
    """(E L̂(w, η) − L(w))/σ²: the Monte Carlo estimate equals the exact (Gauss–Hermite) expectation within
    4 SE, at points of Γ; and Reg is its σ → 0 limit. L̂ is polynomial in η, so the exact excess is a
    polynomial in σ² of degree <= 2 and Richardson extrapolation from σ and σ/2 recovers the limit exactly."""
    if case == "dropconnect_gauss":
        noise = N.dropconnect(PARABOLA, 2, sigma=0.1)
        w = torch.tensor([[1 - 0.3**2, 0.3], [0.5, math.sqrt(0.5)]], dtype=torch.float64)
    else:
        noise = {
            "perturbed": N.perturbed(Ls.circle_loss, 2),
            "perturbed_corr": N.perturbed(Ls.circle_loss, 2, C=[[0.5, 0.5], [0.5, 0.5]]),
            "fig3_top": N.fig3_nondegenerate(),
        }[case]
        w = circle_points(4)

    def exact_excess(sigma: float) -> torch.Tensor:
        return (gauss_hermite_expectation(noise, w, sigma) - noise.loss(w)) / sigma**2

    sigma = 0.02
    mean, se = R.excess_loss(noise, w, sigma=sigma, n_samples=100_000, generator=np.random.default_rng(11))
    assert torch.all((mean - exact_excess(sigma)).abs() <= 4 * se)
    limit = (4 * exact_excess(0.1) - exact_excess(0.2)) / 3
    assert torch.allclose(limit, R.regulariser(noise, w), atol=1e-10)


def test_invalid_form_raises() -> None:
    with pytest.raises(ConfigError):
        R.regulariser(N.fig3_nondegenerate(), torch.zeros(2, dtype=torch.float64), form="cubic")
    with pytest.raises(ConfigError):
        R.excess_loss(
            N.fig3_nondegenerate(),
            torch.zeros(2, dtype=torch.float64),
            sigma=0.0,
            n_samples=10,
            generator=np.random.default_rng(0),
        )
    three = torch.zeros(4, 3, dtype=torch.float64)  # d = 3 for a noise on d = 2 parameters
    for call in (
        lambda: R.regulariser(N.fig3_nondegenerate(), three),
        lambda: R.grad_regulariser(N.fig3_nondegenerate(), three),
        lambda: R.excess_loss(
            N.fig3_nondegenerate(), three, sigma=0.1, n_samples=10, generator=np.random.default_rng(0)
        ),
    ):
        with pytest.raises(ConfigError, match=r"w = \(4, 3\).*d = 2"):
            call()


def _dense(noise: N.Noise) -> N.Noise:
    """The same noise without its exact rules: Reg by autodiff in η (one backward pass per coordinate)."""
    return dataclasses.replace(noise, reg_rules=None)


def _rule_cases() -> dict[str, tuple[N.Noise, torch.Tensor]]:
    X = torch.tensor([[1.0], [2.0], [-0.5]], dtype=torch.float64)
    y = torch.tensor([1.0, 0.3, 2.0], dtype=torch.float64)
    w2 = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w3 = torch.randn(2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w4 = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    mlp = MLPLoss(
        (3, 4, 2),
        torch.randn(9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)),
        torch.randn(9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4)),
        bias=True,
    )
    deep = MLPLoss((2, 3, 3, 1), X.repeat(1, 2), y, activation="tanh")
    w_mlp = torch.randn(3, mlp.d, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    w_deep = torch.randn(2, deep.d, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    return {
        "perturbed": (N.perturbed(Ls.circle_loss, 3), w3),
        "perturbed_corr": (N.perturbed(Ls.circle_loss, 2, C=[[0.5, 0.5], [0.5, 0.5]]), w2),
        "dropconnect_gauss_circle": (N.dropconnect(Ls.circle_loss, 3, sigma=0.1), w3),
        "dropconnect_bern_parabola": (
            N.dropconnect(Ls.square_loss(Ls.parabola_model, X, y), 2, p=0.1, kind="bernoulli"),
            w2,
        ),
        "dropconnect_bern_product": (
            N.dropconnect(Ls.square_loss(Ls.product_model, X, y), 2, p=0.1, kind="bernoulli"),
            w2,
        ),
        "dropconnect_mlp": (N.dropconnect(mlp, mlp.d, sigma=0.1), w_mlp),
        "dropconnect_deep_mlp": (N.dropconnect(deep, deep.d, sigma=0.1), w_deep),
        "dropout": (N.dropout(Ls.linear_units, X, y, d=4, n_units=2, kind="bernoulli", p=0.1), w4),
        "fig3_top": (N.fig3_nondegenerate(), w2),
    }


@pytest.mark.parametrize("case", sorted(_rule_cases()))
def test_exact_rules_match_the_dense_eta_autodiff(case: str) -> None:
    """Every exact rule (both forms where it has them) against the η-autodiff path at small size."""
    noise, w = _rule_cases()[case]
    assert noise.reg_rules
    for form in noise.reg_rules:
        for fn in (R.regulariser, R.grad_regulariser):
            exact, dense = fn(noise, w, form), fn(_dense(noise), w, form)
            assert exact.shape == dense.shape
            assert torch.allclose(exact, dense, rtol=1e-11, atol=1e-12), (case, form, fn.__name__)


def test_hutchinson_estimate_is_unbiased_and_its_standard_error_is_right() -> None:
    """DropConnect on an MLP 3-4-2 (d = 26): 300 independent 8-probe estimates of Reg and ∇Reg. Their mean is
    within 4 SE of the exact value, and the mean reported SE² matches the spread of the estimates."""
    mlp = MLPLoss(
        (3, 4, 2),
        torch.randn(9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)),
        torch.randn(9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4)),
        bias=True,
    )
    noise = N.dropconnect(mlp, mlp.d, sigma=0.1)
    w = torch.randn(mlp.d, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    reg, grad = R.regulariser(noise, w), R.grad_regulariser(noise, w)
    rng = np.random.default_rng(11)
    reps = 300
    draws = [R.regulariser_estimate(noise, w, 8, rng, with_grad=True) for _ in range(reps)]
    est, se, gest, gse = (torch.stack([d[k] for d in draws]) for k in range(4))
    assert abs(float(est.mean() - reg)) < 4 * float(est.std()) / reps**0.5
    assert (gest.mean(0) - grad).abs().max() < 4 * float((gest.std(0) / reps**0.5).max())
    assert 0.75 < float((se**2).mean() / est.var()) < 1.33
    assert float(se.mean() / reg) > 0.01  # the estimate is noisy here: the check has teeth
    ratio = (gse**2).mean(0) / gest.var(0)
    assert 0.7 < float(ratio.median()) < 1.4


def test_estimate_validates_probes() -> None:
    with pytest.raises(ConfigError):
        R.regulariser_estimate(N.fig3_nondegenerate(), torch.zeros(2, dtype=torch.float64), 1, np.random.default_rng(0))
