"""Limiting dynamics against closed-form flows on Γ (docs/theory/singular_limits.md §8, §9), docs/theory/singular_limits.md's tabulated
predictions, an independent intrinsic SDE simulation (§9.6), and a direct noisy-GD run (§9.3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from noiseprobe.core.errors import ConfigError
from noiseprobe.limits import flow as F
from noiseprobe.limits import losses as Ls
from noiseprobe.limits import noises as N

W_TOP = torch.tensor([0.0, 1.5], dtype=torch.float64)
X1 = torch.ones(1, 1, dtype=torch.float64)
Y1 = torch.ones(1, dtype=torch.float64)


def theta_ode(rhs, theta0: float, t: np.ndarray) -> np.ndarray:
    return solve_ivp(lambda _, y: rhs(y), (0, t[-1]), [theta0], t_eval=t, rtol=1e-12, atol=1e-12).y[0]


def test_theorem_a_fig12_closed_form_and_reference_values() -> None:
    """§8: dθ/dt = ½ sin θ ⇒ tan(θ/2) = tan(θ₀/2) e^{t/2}; §9.2's Thm A column 2.0760, 2.4546, 2.8799, 3.0449."""
    t, W = F.constrained_flow(N.perturbed(Ls.circle_loss, 2), W_TOP, 6.0, 7)
    th = Ls.circle_angle(W)
    assert torch.allclose(W.norm(dim=-1), torch.ones(7, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(th, 2 * torch.atan(torch.tan(th[0] / 2) * torch.exp(t / 2)), atol=1e-6)
    ref = torch.tensor([1.5989, 2.0760, 2.4546, 2.8799, 3.0449], dtype=torch.float64)
    assert torch.allclose(th[[0, 1, 2, 4, 6]], ref, atol=1e-4)


def test_theorem_a_fig3_top_and_fig4_correlated() -> None:
    """Fig. 3 top: dθ/dt = 0.7 sin θ sin(2cos θ) (Reg = a/2; §9.3 predictions 0.4186, 0.5820, 1.0603, 1.4210).
    Fig. 4 right, C̃ = ½·ones: θ = 2.1239, 2.2664 at t = 1, 2, end point 3π/4 (§8, §9.5)."""
    w0 = 1.3 * torch.tensor([math.cos(0.3), math.sin(0.3)], dtype=torch.float64)
    t, W = F.constrained_flow(N.fig3_nondegenerate(), w0, 3.0, 7)
    th = Ls.circle_angle(W)
    exact = theta_ode(lambda y: 0.7 * np.sin(y) * np.sin(2 * np.cos(y)), th[0].item(), t.numpy())
    assert np.allclose(th.numpy(), exact, atol=1e-6)
    assert torch.allclose(
        th[[1, 2, 4, 6]], torch.tensor([0.4186, 0.5820, 1.0603, 1.4210], dtype=torch.float64), atol=1e-4
    )
    corr = N.perturbed(Ls.circle_loss, 2, C=[[0.5, 0.5], [0.5, 0.5]])
    _, W = F.constrained_flow(corr, W_TOP, 2.0, 3)
    assert torch.allclose(Ls.circle_angle(W), torch.tensor([1.5989, 2.1239, 2.2664], dtype=torch.float64), atol=1e-4)
    _, W = F.constrained_flow(corr, W[-1], 13.0, 2, dt=0.25)  # t = 15 in all: §9.5 pred 2.3562
    assert abs(Ls.circle_angle(W[-1]).item() - 3 * math.pi / 4) < 2e-4


def test_dropconnect_flows_nonlocal_vs_laplacian_end_points() -> None:
    """§9.7: on f = w₁ + w₂² Bernoulli DropConnect (Reg_B) ends at w₂ = 1/√2, the Laplacian at 1/√5; on the
    linear model f = w₁ + w₂ both give u = w₁ − w₂ = u₀ e^{−t}."""
    para = Ls.square_loss(Ls.parabola_model, X1, Y1)
    bern = N.dropconnect(para, 2, kind="bernoulli", p=0.01)
    w0 = torch.tensor([[1 - 0.2**2, 0.2]], dtype=torch.float64)
    _, Wb = F.constrained_flow(bern, w0, 20.0, 2, dt=0.5)
    _, Wl = F.constrained_flow(bern, w0, 20.0, 2, form="laplacian", dt=0.5)
    assert abs(Wb[-1, 0, 1].item() - 1 / math.sqrt(2)) < 1e-4
    assert abs(Wl[-1, 0, 1].item() - 1 / math.sqrt(5)) < 1e-4
    lin = N.dropconnect(Ls.square_loss(Ls.sum_model, X1, Y1), 2, kind="bernoulli", p=0.02)
    t, W = F.constrained_flow(lin, torch.tensor([1.35, -0.35], dtype=torch.float64), 4.0, 5)
    assert torch.allclose(W[:, 0] - W[:, 1], 1.7 * torch.exp(-t), atol=1e-6)


def test_constrained_flow_keeps_bad_rows_nan_and_validates() -> None:
    w0 = torch.tensor([[0.0, 1.5], [math.nan, 0.0]], dtype=torch.float64)
    _, W = F.constrained_flow(N.perturbed(Ls.circle_loss, 2), w0, 1.0, 3)
    assert torch.isfinite(W[:, 0]).all() and torch.isnan(W[:, 1]).all()
    with pytest.raises(ConfigError):
        F.constrained_flow(N.perturbed(Ls.circle_loss, 2), w0, -1.0, 3)
    with pytest.raises(ConfigError):
        F.limiting_sde(N.perturbed(Ls.circle_loss, 2), W_TOP, 1.0, 10, n_paths=2, seed=0)  # Theorem-A noise
    for bad in (torch.zeros(3, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64)):  # d = 3; 3 rows ≠ 2 paths
        with pytest.raises(ConfigError, match="w0"):
            F.limiting_sde(N.additive(Ls.circle_loss, 2), bad, 1.0, 10, n_paths=2, seed=0)


def test_theorem_b_deterministic_cases() -> None:
    """Fig. 3 bottom: dθ/dt = ¼ sin θ/(1.5 + cos θ) (§8; §9.4 predictions 1.7783, 2.4151 at t = 1, 4).
    Label noise, f = w₁w₂: sinh 2s(t) = sinh 2s₀ e^{−t}, s = ½ log(w₁/w₂) (§9.7). Euler–Maruyama error O(dt)."""
    t, W = F.limiting_sde(N.fig3_degenerate(), W_TOP, 4.0, 200, n_paths=2, seed=0, n_points=5)
    th = Ls.circle_angle(W)
    assert torch.allclose(th[:, 0], th[:, 1])  # PG = 0: no Brownian part
    exact = theta_ode(lambda y: 0.25 * np.sin(y) / (1.5 + np.cos(y)), th[0, 0].item(), t.numpy())
    assert np.allclose(th[:, 0].numpy(), exact, atol=1.5e-3)
    assert abs(th[1, 0].item() - 1.7783) < 1.5e-3 and abs(th[4, 0].item() - 2.4151) < 1.5e-3
    noise = N.label_noise(Ls.product_model, X1, Y1, d=2)
    t, W = F.limiting_sde(noise, torch.tensor([2.0, 0.5], dtype=torch.float64), 3.0, 150, n_paths=1, seed=0, n_points=4)
    s = 0.5 * torch.log(W[:, 0, 0] / W[:, 0, 1])
    assert torch.allclose(torch.sinh(2 * s), torch.sinh(2 * s[0]) * torch.exp(-t), atol=5e-3)


def test_theorem_b_sgld_matches_intrinsic_simulation() -> None:
    """§7.6/§9.6: SGLD on the unit circle is dθ = dβ + ¼ sin θ/(1.5 + cos θ) dt. Our ambient SDE (PG dB + ½∂²Φ[P]
    dt, projected) against an intrinsic Euler–Maruyama run with 5·10⁴ paths: mean and std of θ(1) − θ₀
    within 4 combined standard errors."""
    n_paths, n_steps = 1000, 50
    w0 = torch.tensor([0.0, 1.0], dtype=torch.float64)
    _, W = F.limiting_sde(N.additive(Ls.circle_loss, 2), w0, 1.0, n_steps, n_paths=n_paths, seed=7)
    th = np.unwrap(Ls.circle_angle(W).numpy(), axis=0)[-1] - math.pi / 2
    rng = np.random.default_rng(1)
    ref = np.full(50_000, math.pi / 2)
    dt = 1.0 / 400
    for _ in range(400):
        ref += 0.25 * np.sin(ref) / (1.5 + np.cos(ref)) * dt + math.sqrt(dt) * rng.standard_normal(ref.size)
    ref -= math.pi / 2
    se_mean = math.hypot(th.std() / math.sqrt(n_paths), ref.std() / math.sqrt(ref.size))
    assert abs(th.mean() - ref.mean()) < 4 * se_mean
    assert ref.mean() > 4 * se_mean  # the drift is resolved by the test
    se_std = math.hypot(th.std() / math.sqrt(2 * n_paths), ref.std() / math.sqrt(2 * ref.size))
    assert abs(th.std() - ref.std()) < 4 * se_std


def test_sde_paths_do_not_depend_on_batching() -> None:
    """Streams keyed by (seed, global path index): paths 3..5 alone equal rows 3..5 of a 6-path run."""
    noise, w0 = N.additive(Ls.circle_loss, 2), torch.tensor([0.0, 1.0], dtype=torch.float64)
    _, full = F.limiting_sde(noise, w0, 0.2, 20, n_paths=6, seed=3, n_points=3, block=7)
    _, part = F.limiting_sde(noise, w0, 0.2, 20, n_paths=3, seed=3, n_points=3, path_offset=3)
    assert torch.allclose(full[:, 3:], part, atol=1e-12)


def test_theorem_a_against_noisy_gd() -> None:
    """§9.3: NGD with L̂ = L + ½a(w)η², α = 0.1, σ² = 0.01, 1000 steps (t = ασ²k = 1): the chain mean of θ is
    the flow's θ(1) plus docs/theory/singular_limits.md's finite-α bias +0.0023 (M = 2000 chains, std 0.018), within 4 combined
    SE; the caption's Reg = 2a(w) (θ(1) = 1.5333, §9.3) is rejected."""
    noise, lr, sigma, chains, steps = N.fig3_nondegenerate(), 0.1, 0.1, 200, 1000
    w = (1.3 * torch.tensor([math.cos(0.3), math.sin(0.3)], dtype=torch.float64)).repeat(chains, 1)
    eta = torch.from_numpy(noise.sample(chains * steps, np.random.default_rng(4), sigma)).reshape(steps, chains, 1)
    for k in range(steps):
        x = w.detach().requires_grad_(True)
        w = w - lr * torch.autograd.grad(noise.loss_hat(x, eta[k]).sum(), x)[0]
    th = Ls.circle_angle(w)
    _, W = F.constrained_flow(
        noise, w[0] * 0 + 1.3 * torch.tensor([math.cos(0.3), math.sin(0.3)], dtype=torch.float64), 1.0, 2
    )
    pred = Ls.circle_angle(W[-1]).item()
    se = th.std().item() / math.sqrt(chains)
    se_bias = 0.018 / math.sqrt(2000)  # SE of docs/theory/singular_limits.md's +0.0023
    assert abs(th.mean().item() - (pred + 0.0023)) < 4 * math.hypot(se, se_bias)
    assert abs(th.mean().item() - 1.5333) > 100 * se


def test_sde_with_singular_covariance_diffuses_along_the_noise_direction() -> None:
    """Additive noise with C̃ = ½·ones (rank 1, direction e = (1,1)/√2) at θ₀ = π/2: dθ = (τ·e) dβ + drift,
    τ = (−1, 0), so Var θ(t) = t/2 + O(t²); checked within 4 SE of the sample variance."""
    n_paths, t_end = 2000, 0.05
    noise = N.additive(Ls.circle_loss, 2, C=[[0.5, 0.5], [0.5, 0.5]])
    _, W = F.limiting_sde(noise, torch.tensor([0.0, 1.0], dtype=torch.float64), t_end, 5, n_paths=n_paths, seed=1)
    assert torch.allclose(W.norm(dim=-1), torch.ones(W.shape[:2], dtype=torch.float64), atol=1e-10)
    th = Ls.circle_angle(W[-1]).numpy()
    var = th.var()
    assert abs(var - t_end / 2) < 4 * var * math.sqrt(2 / n_paths)


def test_dropout_two_unit_network_equalises_products() -> None:
    """§9.8: f = Σ_j a_j b_j x, one datum (1, 1), Bernoulli Dropout on the 2 units, w0 = (a, b) = (1.5, 0.5,
    0.6, 0.2) on Γ (c₁ = a₁b₁ = 0.9): Thm A predicts c₁ = 0.789, 0.555, 0.500 at t = 0.5, 2, 6 and conserves
    a₁² − b₁² = 1.89 (the rescaling direction along which Reg is flat)."""
    noise = N.dropout(Ls.linear_units, X1, Y1, d=4, n_units=2, kind="bernoulli", p=0.02)
    t, W = F.constrained_flow(noise, torch.tensor([1.5, 0.5, 0.6, 0.2], dtype=torch.float64), 6.0, 13)
    c1 = W[:, 0] * W[:, 2]
    assert torch.allclose(c1[[1, 4, 12]], torch.tensor([0.789, 0.555, 0.500], dtype=torch.float64), atol=1e-3)
    assert torch.allclose(W[:, 0] ** 2 - W[:, 2] ** 2, torch.full((13,), 1.89, dtype=torch.float64), atol=1e-9)


def _flow_cases() -> list[tuple[N.Noise, list[float], list[list[float]]]]:
    """Noises on closed-form losses, w0, and W at t = 1, 2 from the implementation before closed forms
    (autograd derivatives, η-autodiff regulariser; commit 43283e1)."""
    para = Ls.square_loss(Ls.parabola_model, X1, Y1)
    return [
        (
            N.perturbed(Ls.circle_loss, 2, C=[[0.5, 0.5], [0.5, 0.5]]),
            [0.0, 1.5],
            [[-0.5253702222401742, 0.8508737447960841], [-0.6408595101825959, 0.7676581844861183]],
        ),
        (
            N.fig3_nondegenerate(),
            [1.2, 0.5],
            [[0.7220771605996026, 0.6918125281753839], [0.3138054361011953, 0.9494873081159859]],
        ),
        (
            N.dropconnect(para, 2, kind="bernoulli", p=0.01),
            [0.96, 0.2],
            [[0.7293430692863547, 0.5202469901053207], [0.5705133322068326, 0.6553523234056375]],
        ),
        (
            N.dropconnect(para, 2, sigma=0.1),
            [0.96, 0.2],
            [[0.8377468027098418, 0.4028066500073686], [0.8045366038246111, 0.4421124248145361]],
        ),
        (
            N.perturbed(Ls.circle_loss, 3),
            [0.3, 1.2, -0.4],
            [
                [-0.2679630519934426, 0.9139891807290301, -0.30466306024301015],
                [-0.6496355023266686, 0.7212325163947471, -0.24041083879824915],
            ],
        ),
    ]


@pytest.mark.parametrize("case", range(5))
def test_closed_form_flow_keeps_the_previous_trajectories(case: int) -> None:
    """The closed-form path (derivatives and exact regulariser rules) gives the previous implementation's
    trajectory, and the autograd path (plain-function loss, no rule) today's, both to 1e-10."""
    noise, w0, expected = _flow_cases()[case]
    w0 = torch.tensor(w0, dtype=torch.float64)
    _, W = F.constrained_flow(noise, w0, 2.0, 3)
    assert torch.allclose(W[1:], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-10)
    plain = N.Noise(
        noise.name,
        noise.loss_hat,
        lambda v: noise.loss(v),
        noise.eta_dim,
        noise.C,
        noise.sample,
        noise.regime,
        noise.doc,
        noise.d,
        noise.sigma,
    )
    assert not isinstance(plain.loss, Ls.ClosedFormLoss) and plain.reg_rules is None
    _, W_auto = F.constrained_flow(plain, w0, 2.0, 3)
    assert torch.allclose(W, W_auto, rtol=0, atol=1e-10)
