"""Example losses of paper 003 and of the reference's test problems (singular_limits.md §8, §9.7–9.8),
and batched autodiff derivatives of any loss.

Every loss takes ``w`` of shape (..., d) and broadcasts over the leading dims, rows independent (the
library's derivatives differentiate the sum over rows, one backward pass per derivative direction).
Square losses use the ½ convention, ``L = (1/(2N)) Σ_n (f(w, x_n) − y_n)²``, unless said otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from noiseprobe.core.validation import check_choice

ModelFn = Callable[[Tensor, Tensor], Tensor]


def circle_loss(w: Tensor) -> Tensor:
    """The Fig. 1–4 reproduction loss (reference §8): ``L(w) = ⅛ b(w) (|w|² − 1)²``, ``b = 1.5 + w₁``.

    d = 2. Γ = {L = 0} is the unit circle; on Γ, ``∇²L = b w wᵀ`` and ``λ(θ) = ΔL|_Γ = 1.5 + cos θ``,
    so the minimiser of ΔL on Γ is θ = π (the green circle of Fig. 2).
    """
    r2 = (w * w).sum(-1)
    return 0.125 * (1.5 + w[..., 0]) * (r2 - 1.0) ** 2


def circle_angle(w: Tensor) -> Tensor:
    """Along-Γ coordinate θ = atan2(w₂, w₁) for :func:`circle_loss` (reference §8)."""
    return torch.atan2(w[..., 1], w[..., 0])


def fig3_a(w: Tensor) -> Tensor:
    """Fig. 3 (top) coefficient ``a(w) = 1 − 0.7 cos 2w₁`` [caption]."""
    return 1.0 - 0.7 * torch.cos(2.0 * w[..., 0])


def product_model(w: Tensor, X: Tensor) -> Tensor:
    """``f(w, x) = w₁ w₂ x`` (label-noise example, reference §9.7). X: (N, 1) → output (..., N)."""
    return (w[..., 0] * w[..., 1])[..., None] * X[:, 0]


def sum_model(w: Tensor, X: Tensor) -> Tensor:
    """``f(w, x) = (w₁ + w₂) x`` (linear DropConnect example, reference §7.2/§9.7). Output (..., N)."""
    return (w[..., 0] + w[..., 1])[..., None] * X[:, 0]


def parabola_model(w: Tensor, X: Tensor) -> Tensor:
    """``f(w, x) = (w₁ + w₂²) x`` (non-quadratic DropConnect example, reference §9.7). Output (..., N)."""
    return (w[..., 0] + w[..., 1] ** 2)[..., None] * X[:, 0]


def linear_units(w: Tensor, X: Tensor) -> Tensor:
    """Per-unit outputs ``a_j b_j x_n`` of a J-unit linear network, ``w = (a_1..a_J, b_1..b_J)``.

    Scalar inputs X: (N, 1); returns (..., N, J), whose sum over J is ``f(w, x_n)`` (reference §9.8).
    """
    J = w.shape[-1] // 2
    return (w[..., :J] * w[..., J:])[..., None, :] * X[:, :1]


def square_loss(model: ModelFn, X: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
    """``L(w) = (1/(2N)) Σ_n (f(w, x_n) − y_n)²`` (½ convention, full batch) for ``model(w, X) -> (..., N)``."""
    def loss(w: Tensor) -> Tensor:
        return 0.5 * ((model(w, X) - y) ** 2).mean(-1)
    return loss


# ------------------------------------------------------------------------------ batched derivatives
def leaf(x: Tensor) -> Tensor:
    """A float64 copy of x that requires grad (the variable to differentiate in)."""
    return torch.as_tensor(x, dtype=torch.float64).detach().requires_grad_(True)


def vjp_sum(y: Tensor, x: Tensor, create_graph: bool = False) -> Tensor:
    """``∇_x Σ y`` (zeros where y does not depend on x); rows of y must depend only on their rows of x."""
    if not y.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=create_graph, retain_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def gradient(loss: Callable[[Tensor], Tensor], w: Tensor) -> Tensor:
    """∇L(w), shape (..., d)."""
    x = leaf(w)
    return vjp_sum(loss(x), x).detach()


def derivatives(loss: Callable[[Tensor], Tensor], w: Tensor, order: int = 2) -> tuple[Tensor, ...]:
    """``(∇L, ∇²L)`` (order 2) or ``(∇L, ∇²L, ∇³L)`` (order 3) at w from one forward pass, shapes (..., d),
    (..., d, d), (..., d, d, d); d backward passes for ∇²L and d(d+1)/2 more for ``T_ijk = ∂_i∂_j∂_k L``."""
    check_choice("order", order, (2, 3))
    x = leaf(w)
    d = x.shape[-1]
    g = vjp_sum(loss(x), x, create_graph=True)
    H = torch.stack([vjp_sum(g[..., i], x, create_graph=order > 2) for i in range(d)], -2)
    if order == 2:
        return g.detach(), H.detach()
    T = torch.zeros(*x.shape, d, d, dtype=torch.float64)
    for i in range(d):
        for j in range(i, d):
            T[..., i, j, :] = T[..., j, i, :] = vjp_sum(H[..., i, j], x).detach()
    return g.detach(), H.detach(), T


def hessian(loss: Callable[[Tensor], Tensor], w: Tensor) -> Tensor:
    """∇²L(w), shape (..., d, d)."""
    return derivatives(loss, w)[1]


def third_derivative(loss: Callable[[Tensor], Tensor], w: Tensor) -> Tensor:
    """``T_ijk = ∂_i∂_j∂_k L(w)``, shape (..., d, d, d)."""
    return derivatives(loss, w, 3)[2]
