"""Along-Γ theory of the circle loss against the closed forms of docs/theory/singular_limits.md §8 and against small-step GD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from noiseprobe.core.errors import ConfigError
from noiseprobe.limits import circle as C
from noiseprobe.limits import noises as N
from noiseprobe.limits.losses import circle_loss
from noiseprobe.limits.manifold import limit_map
from noiseprobe.limits.regulariser import regulariser

W_TOP = [0.0, 1.5]


def test_flow_angle_matches_closed_form() -> None:
    """Figs. 1–2: dθ/dt = ½ sin θ, i.e. tan(θ/2) = tan(θ₀/2) e^{t/2} from θ₀ = θ(Φ(w0)) (docs/theory/singular_limits.md §8)."""
    t, th = C.flow_angle(N.perturbed(circle_loss, 2), W_TOP, 4.0, dt=0.05)
    th0 = float(C.unwrapped_angle(limit_map(circle_loss, torch.tensor(W_TOP, dtype=torch.float64))))
    assert th0 == pytest.approx(1.5989, abs=1e-4)
    assert np.allclose(th, 2 * np.arctan(math.tan(th0 / 2) * np.exp(t / 2)), atol=1e-6)


def test_sde_angle_matches_the_deterministic_theorem_b_flow() -> None:
    """Fig. 3 bottom: G = w is normal to Γ, so the limit is dθ/dt = ¼ sin θ/(1.5 + cos θ) (docs/theory/singular_limits.md §8)."""
    t, th = C.sde_angle(N.fig3_degenerate(), W_TOP, 2.0, dt=0.01, seed=0)
    th0 = th[0]
    ref = solve_ivp(
        lambda _, y: 0.25 * np.sin(y) / (1.5 + np.cos(y)), (0.0, 2.0), [th0], t_eval=t, rtol=1e-11, atol=1e-12
    ).y[0]
    assert np.max(np.abs(th - ref)) < 2e-3  # Euler–Maruyama, weak order 1 in dt


def test_argmin_on_circle_closed_forms() -> None:
    """argmin on Γ of Reg_C = ½tr(C̃∇²L): π for C̃ = I, 3π/4 for C̃ = ½·ones; Fig. 3 top: a/2 minimal at π/2."""
    ind = N.perturbed(circle_loss, 2)
    cor = N.perturbed(circle_loss, 2, C=[[0.5, 0.5], [0.5, 0.5]])
    top = N.fig3_nondegenerate()
    assert C.argmin_on_circle(lambda w: regulariser(ind, w), 3.0) == pytest.approx(math.pi, abs=1e-6)
    assert C.argmin_on_circle(lambda w: regulariser(cor, w), 2.0) == pytest.approx(3 * math.pi / 4, abs=1e-6)
    assert C.argmin_on_circle(lambda w: regulariser(top, w), 1.5) == pytest.approx(math.pi / 2, abs=1e-6)
    # the branch nearest the reference: π − 2π when the reference is near −π
    assert C.argmin_on_circle(lambda w: regulariser(ind, w), -3.0) == pytest.approx(-math.pi, abs=1e-6)


def test_gradient_flow_time_matches_small_step_gd() -> None:
    """The event-located gradient-flow time vs plain GD with a tiny step (first order in α); 0 when already close."""
    g = torch.func.grad(circle_loss)
    alpha, w, k = 1e-3, torch.tensor(W_TOP, dtype=torch.float64), 0
    while abs(float(w.norm()) - 1.0) >= 0.05:
        w, k = w - alpha * g(w), k + 1
    assert C.gradient_flow_time(W_TOP, 0.05) == pytest.approx(alpha * k, abs=5 * alpha)
    assert C.gradient_flow_time([0.0, 1.01], 0.05) == 0.0


def test_unwrapped_angle_follows_a_path_across_the_branch_cut() -> None:
    th = np.linspace(3.0, 3.4, 9)
    W = np.stack([np.cos(th), np.sin(th)], -1)
    assert np.allclose(C.unwrapped_angle(W), th)


@pytest.mark.parametrize(
    "call",
    [
        lambda: C.gradient_flow_time([0.0, 1.5, 0.0], 0.05),
        lambda: C.gradient_flow_time([0.0, math.nan], 0.05),
        lambda: C.gradient_flow_time(W_TOP, 0.0),
        lambda: C.flow_angle(N.perturbed(circle_loss, 2), W_TOP, 1.0, dt=0.0),
        lambda: C.argmin_on_circle(lambda w: w[..., 0], math.nan),
    ],
)
def test_invalid_inputs_raise_config_error(call) -> None:
    with pytest.raises(ConfigError):
        call()
