"""Limit map Φ against conserved quantities and the value of docs/theory/singular_limits.md §8; P against the null space of a
finite-difference Hessian and against finite differences of Φ; ∂²Φ[Σ] (three-term formula) against second
finite differences of Φ on a curve (codim 1) and a codim-2 manifold in ℝ³; regime classification."""

from __future__ import annotations

import dataclasses
import math

import pytest
import scipy.linalg
import torch

from noiseprobe.core.errors import ConfigError
from noiseprobe.limits import losses as Ls
from noiseprobe.limits import manifold as M
from noiseprobe.limits import noises as N

X1 = torch.ones(1, 1, dtype=torch.float64)
Y1 = torch.ones(1, dtype=torch.float64)
PRODUCT = Ls.square_loss(Ls.product_model, X1, Y1)  # L = ½(w₁w₂ − 1)², Γ = hyperbola
TIGHT = {"gtol": 1e-13, "rtol": 1e-13, "atol": 1e-15}


def codim2_loss(w: torch.Tensor) -> torch.Tensor:
    """Γ = {w₁w₂ = 1, w₃ = 0} in ℝ³ (codimension 2, normal eigenvalues depend on the point)."""
    return (
        0.5 * (w[..., 0] * w[..., 1] - 1) ** 2
        + 0.5 * w[..., 2] ** 2 * (1 + w[..., 0] ** 2)
        + 0.1 * w[..., 2] ** 3 * w[..., 1]
    )


def fd_hessian(loss, w: torch.Tensor, h: float = 1e-4) -> torch.Tensor:
    d = w.shape[-1]
    E = torch.eye(d, dtype=torch.float64) * h
    return torch.stack(
        [
            torch.stack(
                [
                    (loss(w + E[i] + E[j]) - loss(w + E[i] - E[j]) - loss(w - E[i] + E[j]) + loss(w - E[i] - E[j]))
                    / (4 * h * h)
                    for j in range(d)
                ],
                -1,
            )
            for i in range(d)
        ],
        -2,
    )


def test_limit_map_conserves_the_flow_invariant_of_the_product_loss() -> None:
    """For L = ½(w₁w₂−1)², Ẇ = −∇L conserves w₁² − w₂², so Φ(w0) = (a, 1/a), a² = (c + √(c²+4))/2."""
    w0 = torch.tensor([[2.0, 0.2], [0.5, 0.6], [1.5, 1.5], [3.0, -0.1]], dtype=torch.float64)
    phi = M.limit_map(PRODUCT, w0)
    c = w0[:, 0] ** 2 - w0[:, 1] ** 2
    a = torch.sqrt((c + torch.sqrt(c**2 + 4)) / 2)
    assert torch.allclose(phi, torch.stack([a, 1 / a], -1), atol=1e-9)
    stiff = M.limit_map(PRODUCT, w0, method="LSODA")
    assert torch.allclose(stiff, phi, atol=1e-8)


def test_limit_map_reference_angle_and_failed_rows() -> None:
    """docs/theory/singular_limits.md §8: θ(Φ((0, 1.5))) = 1.5989 for the Fig. 1–2 loss; a NaN row stays NaN; a row at the critical
    point w = 0 of the product loss (L = ½, outside U) comes back NaN with a warning; the others converge."""
    w0 = torch.tensor([[0.0, 1.5], [math.nan, 1.0]], dtype=torch.float64)
    phi = M.limit_map(Ls.circle_loss, w0)
    assert abs(Ls.circle_angle(phi[0]).item() - 1.5989) < 5e-5
    assert abs(phi[0].norm().item() - 1.0) < 1e-10
    assert torch.isnan(phi[1]).all()
    with pytest.warns(RuntimeWarning):
        phi = M.limit_map(PRODUCT, torch.tensor([[0.0, 0.0], [2.0, 1.0]], dtype=torch.float64))
    assert torch.isnan(phi[0]).all() and abs(phi[1].prod().item() - 1.0) < 1e-10


@pytest.mark.parametrize("case", ["circle", "codim2"])
def test_tangent_projector_is_null_space_of_hessian_and_dphi(case: str) -> None:
    """P = projector on ker ∇²L (null space of a finite-difference Hessian) and P = ∂Φ on Γ (§3.1)."""
    if case == "circle":
        loss, w = (
            Ls.circle_loss,
            M.limit_map(Ls.circle_loss, torch.tensor([[0.3, 1.2], [-1.1, -0.2]], dtype=torch.float64), **TIGHT),
        )
    else:
        a = torch.tensor([0.7, 1.6], dtype=torch.float64)
        loss, w = codim2_loss, torch.stack([a, 1 / a, torch.zeros(2, dtype=torch.float64)], -1)
    assert M.codimension(loss, w) == (1 if case == "circle" else 2)
    P = M.tangent_projector(loss, w)
    H = fd_hessian(loss, w)
    for k in range(w.shape[0]):
        Nsp = torch.from_numpy(scipy.linalg.null_space(H[k].numpy(), rcond=1e-5))
        assert torch.allclose(P[k], Nsp @ Nsp.T, atol=1e-6)
    h, d = 1e-5, w.shape[-1]
    for k in range(w.shape[0]):
        plus = M.limit_map(loss, w[k] + h * torch.eye(d, dtype=torch.float64), **TIGHT)
        minus = M.limit_map(loss, w[k] - h * torch.eye(d, dtype=torch.float64), **TIGHT)
        dphi = ((plus - minus) / (2 * h)).T  # column j = ∂Φ/∂w_j
        assert torch.allclose(dphi, P[k], atol=1e-5)


def _second_difference(loss, w: torch.Tensor, v: torch.Tensor, h: float) -> torch.Tensor:
    pts = torch.stack([w + h * v, w - h * v])
    phi = M.limit_map(loss, pts, **TIGHT)
    return (phi[0] + phi[1] - 2 * w) / h**2


@pytest.mark.parametrize("case", ["circle", "codim2"])
def test_phi_second_derivative_against_finite_differences(case: str) -> None:
    """∂²Φ[vvᵀ] = (Φ(w+hv) − 2Φ(w) + Φ(w−hv))/h² for tangent, normal and mixed v (all three terms of §3.3)."""
    if case == "circle":
        loss, th = Ls.circle_loss, 2.3
        w = torch.tensor([math.cos(th), math.sin(th)], dtype=torch.float64)
        dirs = [
            torch.tensor(v, dtype=torch.float64)
            for v in ([math.cos(th), math.sin(th)], [-math.sin(th), math.cos(th)], [0.6, 0.8])
        ]
    else:
        loss, a = codim2_loss, 1.4
        w = torch.tensor([a, 1 / a, 0.0], dtype=torch.float64)
        dirs = [
            torch.tensor(v, dtype=torch.float64)
            for v in ([a, -1 / a, 0.0], [1 / a, a, 0.0], [0.0, 0.0, 1.0], [0.3, -0.5, 0.8])
        ]
    h = 2e-3
    for v in dirs:
        pred = M.phi_second_derivative(loss, w, torch.outer(v, v))
        fd = _second_difference(loss, w, v, h)
        assert torch.allclose(pred, fd, atol=2e-4 * max(1.0, pred.norm().item())), (v, pred, fd)


def test_phi_second_derivative_special_cases() -> None:
    """§3.4 on the unit circle: ∂²Φ[ττᵀ] = II = −w (unit curvature); ∂²Φ[nnᵀ] = −(1/(2λ)) P∇λ with
    λ = 1.5 + cos θ, so P∇λ = −sin θ τ; the II term is normal and the noise-driven term tangent."""
    th = torch.tensor([0.4, 2.0, 4.0], dtype=torch.float64)
    w = torch.stack([th.cos(), th.sin()], -1)
    tau = torch.stack([-th.sin(), th.cos()], -1)
    ii, mixed, noise = M.phi_second_derivative_terms(Ls.circle_loss, w, tau[:, :, None] * tau[:, None, :])
    assert torch.allclose(ii + mixed + noise, -w, atol=1e-10)
    lam = 1.5 + th.cos()
    # P∇λ along Γ: dλ/dθ = −sin θ, so P∇λ = −sin θ τ
    pred = M.phi_second_derivative(Ls.circle_loss, w, w[:, :, None] * w[:, None, :])
    assert torch.allclose(pred, (th.sin() / (2 * lam))[:, None] * tau, atol=1e-10)
    ii, mixed, noise = M.phi_second_derivative_terms(Ls.circle_loss, w, torch.eye(2, dtype=torch.float64))
    assert torch.allclose((ii * tau).sum(-1), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose((noise * w).sum(-1), torch.zeros(3, dtype=torch.float64), atol=1e-12)


def test_phi_second_derivative_terms_refuses_a_geometry_without_third_derivatives() -> None:
    """A Geometry built with third=False has T = None: a ConfigError naming ``geo``, not einsum's TypeError."""
    w = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    geo = M.geometry(Ls.circle_loss, w, 1, third=False)
    with pytest.raises(ConfigError, match="geo"):
        M.phi_second_derivative_terms(Ls.circle_loss, w, torch.eye(2, dtype=torch.float64), geo=geo)


def test_newton_project_lands_on_gamma_near_the_nearest_point() -> None:
    w = torch.tensor([[0.0, 1.05], [0.8, 0.7], [-0.9, 0.1]], dtype=torch.float64)
    out = M.newton_project(Ls.circle_loss, w, 1)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(Ls.circle_angle(out), Ls.circle_angle(w), atol=0.02)


def test_classify_regime_matches_the_reference_table() -> None:
    """§6–7: which theorem applies to each noise, decided from points of Γ."""
    th = torch.linspace(0.2, 6.0, 7, dtype=torch.float64)
    circle = torch.stack([th.cos(), th.sin()], -1)
    s = torch.linspace(-0.8, 0.8, 5, dtype=torch.float64)
    hyper = torch.stack([s.exp(), (-s).exp()], -1)
    parab = torch.stack([1 - s**2, s], -1)
    X = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    y = torch.tensor([1.0, 2.0], dtype=torch.float64)
    per_sample = lambda w: 0.5 * (Ls.product_model(w, X) - y) ** 2  # noqa: E731  (interpolated by w₁w₂ = 1)
    para = Ls.square_loss(Ls.parabola_model, X1, Y1)
    cases = [
        (N.perturbed(Ls.circle_loss, 2), circle, "A", True),
        (N.perturbed(Ls.circle_loss, 2, C=[[0.5, 0.5], [0.5, 0.5]]), circle, "A", True),
        (N.fig3_nondegenerate(), circle, "A", True),
        (N.fig3_degenerate(), circle, "B", True),  # G = w normal on the unit circle
        (N.additive(Ls.circle_loss, 2), circle, "B", False),  # SGLD: Brownian motion on Γ
        (N.label_noise(Ls.product_model, X1, Y1, d=2), hyper, "B", True),
        (N.minibatch(per_sample, N=2, batch_size=1, d=2), hyper, "trivial", True),
        (N.dropconnect(para, 2, sigma=0.1), parab, "A", True),
        (N.dropconnect(para, 2, kind="bernoulli", p=0.01), parab, "nonlocal", True),
    ]
    for noise, pts, regime, deterministic in cases:
        rep = M.classify_regime(noise, pts)
        assert rep.regime == regime and rep.consistent, (noise.name, str(rep))
        assert rep.deterministic_limit == deterministic, (noise.name, str(rep))
    # Reg ≡ 0 but ∇_w L̂ = ∇L + ⅓η³w is not affine in η: neither theorem applies as stated (trap 6)
    cubic = dataclasses.replace(
        N.fig3_degenerate(),
        name="cubic",
        loss_hat=lambda w, e: Ls.circle_loss(w) + (w * w).sum(-1) * e[..., 0] ** 3 / 6,
    )
    rep = M.classify_regime(cubic, circle)
    assert rep.regime == "undetermined" and not rep.consistent and not rep.affine_in_eta
    with pytest.raises(ConfigError):
        M.classify_regime(N.fig3_nondegenerate(), 1.2 * circle)  # not on Γ
    with pytest.raises(ConfigError, match="w_on_gamma_samples"):
        M.classify_regime(N.fig3_nondegenerate(), torch.zeros(4, 3, dtype=torch.float64))  # d = 3, not 2


def test_bad_arguments_raise_config_errors() -> None:
    w = torch.tensor([1.0, 0.0], dtype=torch.float64)
    with pytest.raises(ConfigError, match="Sigma"):
        M.phi_second_derivative(Ls.circle_loss, w, torch.eye(3, dtype=torch.float64))
    with pytest.raises(ConfigError, match="w = \\(3,\\)"):
        M.noise_jacobian(N.fig3_degenerate(), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ConfigError, match="order"):
        Ls.derivatives(Ls.circle_loss, w, order=4)
    with pytest.raises(ConfigError, match="tol"):
        M.newton_project(Ls.circle_loss, w, 1, tol=0.0)
    with pytest.raises(ConfigError, match="rtol"):
        M.codimension(Ls.circle_loss, w[None], rtol=-1.0)


def test_noise_jacobian_closed_forms() -> None:
    """G = ∇_w∇_η L̂: w for Fig. 3 bottom (L̂ = L + ½|w|²η); −(1/N)[∇f_n] for label noise (§7.5, §7.8)."""
    w = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(M.noise_jacobian(N.fig3_degenerate(), w)[..., 0], w, atol=1e-14)
    X = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    y = torch.ones(3, dtype=torch.float64)
    grad_f = torch.stack([w[:, 1:2] * X[:, 0], w[:, 0:1] * X[:, 0]], -2)  # (4, d, N)
    G = M.noise_jacobian(N.label_noise(Ls.product_model, X, y, d=2), w)
    assert torch.allclose(G, -grad_f / 3, atol=1e-14)
