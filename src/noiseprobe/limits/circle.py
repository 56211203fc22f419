"""Theory along Γ for the unit-circle reproduction loss of paper 003's Figs. 1–4 (docs/theory/singular_limits.md §8).

For :func:`~noiseprobe.limits.losses.circle_loss`, Γ is the unit circle and the along-Γ coordinate is the
angle θ = atan2(w₂, w₁), unwrapped along a path (it deviates from the angle of Φ(w) by ≈ ¼·dist²). This
module turns the generic limits of :mod:`~noiseprobe.limits.flow` into θ(t) curves, finds the minimisers
on Γ of a regulariser, and times the fast gradient-flow approach to Γ — the predictions the experiments
``sl-fig1`` … ``sl-fig4`` compare chain means with. Closed forms (docs/theory/singular_limits.md §8) are in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.integrate import solve_ivp
from scipy.optimize import minimize_scalar
from torch import Tensor

from noiseprobe.core.validation import check_array, check_int, check_real
from noiseprobe.limits.flow import constrained_flow, limiting_sde
from noiseprobe.limits.losses import circle_loss
from noiseprobe.limits.noises import Noise


def unwrapped_angle(W: Tensor | np.ndarray) -> np.ndarray:
    """θ = atan2(w₂, w₁) of W (..., 2), unwrapped along the first axis (a path) when W has more than one point."""
    W = np.asarray(W)
    theta = np.arctan2(W[..., 1], W[..., 0])
    return np.unwrap(theta, axis=0) if theta.ndim else theta


def flow_angle(noise: Noise, w0: Sequence[float], t_end: float, *, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Theorem A on the circle: (t, θ(t)) of ``∂_tW = −P∇Reg(W)`` from Φ(w0), on the clock t = ασ²k, with RK4
    steps ≤ dt recorded every ≤ dt (:func:`~noiseprobe.limits.flow.constrained_flow`)."""
    t_end, dt = check_real("t_end", t_end, lo=0.0, lo_open=True), check_real("dt", dt, lo=0.0, lo_open=True)
    n = max(2, math.ceil(t_end / dt) + 1)
    t, W = constrained_flow(noise, torch.tensor(w0, dtype=torch.float64), t_end, n, dt=dt)
    return t.numpy(), unwrapped_angle(W)


def sde_angle(
    noise: Noise, w0: Sequence[float], t_end: float, *, dt: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Theorem B on the circle for one path: (t, θ(t)) of the limiting SDE from Φ(w0), clock t = α²σ²k,
    Euler–Maruyama with ⌈t_end/dt⌉ steps. When G is normal to Γ (``fig3_degenerate``: G = w) the
    diffusion vanishes and the path is the deterministic flow ``−P∇¼ log ΔL``."""
    t_end, dt = check_real("t_end", t_end, lo=0.0, lo_open=True), check_real("dt", dt, lo=0.0, lo_open=True)
    n = max(1, math.ceil(t_end / dt))
    t, W = limiting_sde(noise, torch.tensor(w0, dtype=torch.float64), t_end, n, n_paths=1, seed=seed)
    return t.numpy(), unwrapped_angle(W[:, 0])


def gradient_flow_time(w0: Sequence[float] | np.ndarray, delta: float) -> float:
    """Time at which the gradient flow Ẇ = −∇L(W) of the circle loss from w0 first comes within ``delta`` of
    Γ (|‖W‖ − 1| = δ): 0 if w0 is that close already, inf if it does not come so close by t = 1000
    (event-located, rtol 1e-10)."""
    w0 = check_array("w0", w0, last_dim=2)
    delta = check_real("delta", delta, lo=0.0, lo_open=True)
    g = torch.func.grad(circle_loss)

    def rhs(_: float, w: np.ndarray) -> np.ndarray:
        return np.asarray(-g(torch.from_numpy(w)).numpy())

    def close(_: float, w: np.ndarray) -> float:
        return abs(math.hypot(w[0], w[1]) - 1.0) - delta

    if close(0.0, w0) <= 0.0:
        return 0.0
    close.terminal = True  # type: ignore[attr-defined]  # solve_ivp reads event flags set on the function
    sol = solve_ivp(rhs, (0.0, 1e3), w0, events=close, rtol=1e-10, atol=1e-12)
    return float(sol.t_events[0][0]) if len(sol.t_events[0]) else math.inf


def nearest_branch(theta: float, reference: float) -> float:
    """The representative θ + 2πn closest to ``reference``."""
    return theta + 2 * math.pi * round((reference - theta) / (2 * math.pi))


def argmin_on_circle(fn: Callable[[Tensor], Tensor], reference: float, *, grid: int = 720) -> float:
    """The local minimiser of θ ↦ fn(cos θ, sin θ) nearest to ``reference``, as the branch θ + 2πn nearest
    ``reference``: the local minima of a ``grid``-point scan, then bounded Brent to 1e-10 rad.
    ``fn`` maps points (..., 2) to values (...), e.g. ``lambda w: regulariser(noise, w)``."""
    reference = check_real("reference", reference)
    n = check_int("grid", grid, lo=8)
    theta = np.linspace(-math.pi, math.pi, n, endpoint=False)
    vals = fn(torch.from_numpy(np.stack([np.cos(theta), np.sin(theta)], -1))).numpy()
    minima = np.flatnonzero((vals <= np.roll(vals, 1)) & (vals <= np.roll(vals, -1)))
    i = minima[np.argmin([abs(nearest_branch(theta[j], reference) - reference) for j in minima])]
    h = theta[1] - theta[0]
    res = minimize_scalar(
        lambda th: float(fn(torch.tensor([math.cos(th), math.sin(th)], dtype=torch.float64))),
        bounds=(theta[i] - h, theta[i] + h),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return nearest_branch(float(res.x), reference)


__all__ = ["argmin_on_circle", "flow_angle", "gradient_flow_time", "nearest_branch", "sde_angle", "unwrapped_angle"]
