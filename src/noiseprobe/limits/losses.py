"""Example losses of paper 003 and of the test problems in docs/theory/singular_limits.md §8, §9.7–9.8,
and batched derivatives of any loss.

Every loss takes ``w`` of shape (..., d) and broadcasts over the leading dims, rows independent (the
library's derivatives differentiate the sum over rows, one backward pass per derivative direction).
Square losses use the ½ convention, ``L = (1/(2N)) Σ_n (f(w, x_n) − y_n)²``, unless said otherwise.

The bundled losses are :class:`ClosedFormLoss` objects: called, they give L; their ``derivs`` give ∇L,
∇²L and ∇³L in closed form, which :func:`derivatives` (and so the whole of :mod:`~noiseprobe.limits.manifold`
and :func:`~noiseprobe.limits.flow.constrained_flow`) uses instead of autograd. Any other callable
is differentiated by autograd; the two agree to rounding (tests/limits/test_losses.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from noiseprobe.core.validation import check_choice

ModelFn = Callable[[Tensor, Tensor], Tensor]
DerivsFn = Callable[[Tensor, int], tuple[Tensor, ...]]


class ClosedFormLoss:
    """A loss ``L(w)`` (..., d) -> (...) with closed-form derivatives.

    ``derivs(w, order)`` returns the first ``order`` (1–3) of ``(∇L, ∇²L, ∇³L)``, shapes (..., d),
    (..., d, d), (..., d, d, d), without autograd. It remembers its last evaluation: asked again for the
    same, unmodified tensor (``is`` and the same in-place version) and no higher order, it returns it,
    so that the tangent projector and ∇Reg at one point of a flow share one evaluation.
    """

    def __init__(self, value: Callable[[Tensor], Tensor], derivs: DerivsFn, doc: str) -> None:
        self._value, self._derivs, self.__doc__ = value, derivs, doc
        self._last: tuple[Tensor, int, tuple[Tensor, ...]] | None = None

    def __call__(self, w: Tensor) -> Tensor:
        return self._value(w)

    def derivs(self, w: Tensor, order: int) -> tuple[Tensor, ...]:
        last = self._last
        if last is not None and last[0] is w and last[1] == w._version and len(last[2]) >= order:
            return last[2][:order]
        out = self._derivs(w, order)
        self._last = (w, w._version, out)
        return out


def _sym3(a: Tensor, B: Tensor) -> Tensor:
    """``a_i B_jk + a_j B_ik + a_k B_ij`` for a (..., d) and symmetric B (..., d, d)."""
    return (
        a[..., :, None, None] * B[..., None, :, :]
        + a[..., None, :, None] * B[..., :, None, :]
        + a[..., None, None, :] * B[..., :, :, None]
    )


def _circle_value(w: Tensor) -> Tensor:
    r2 = (w * w).sum(-1)
    return 0.125 * (1.5 + w[..., 0]) * (r2 - 1.0) ** 2


def _circle_derivs(w: Tensor, order: int) -> tuple[Tensor, ...]:
    """With ``q = |w|² − 1``, ``b = 1.5 + w₁``: ``∇L = ⅛q²e₁ + ½bq w``;
    ``∇²L = ½q(e₁wᵀ + w e₁ᵀ) + b wwᵀ + ½bq I``; ``∇³L = sym(e₁ ⊗ (wwᵀ + ½q I)) + b sym(w ⊗ I)``
    (sym: the sum over the three placements of the vector's index)."""
    q = (w * w).sum(-1, keepdim=True) - 1.0  # (..., 1)
    b = w[..., :1] + 1.5
    g = (0.5 * b * q) * w
    g[..., :1] += 0.125 * q * q
    if order == 1:
        return (g,)
    ww = w[..., :, None] * w[..., None, :]
    H = b[..., None] * ww
    H.diagonal(dim1=-2, dim2=-1).add_(0.5 * b * q)
    half_qw = 0.5 * q * w
    H[..., 0, :] += half_qw
    H[..., :, 0] += half_qw
    if order == 2:
        return g, H
    M = ww.clone()
    M.diagonal(dim1=-2, dim2=-1).add_(0.5 * q)
    T = b[..., None, None] * _sym3(w, torch.eye(w.shape[-1], dtype=w.dtype, device=w.device).expand_as(ww))
    T[..., 0, :, :] += M
    T[..., :, 0, :] += M
    T[..., :, :, 0] += M
    return g, H, T


circle_loss = ClosedFormLoss(
    _circle_value,
    _circle_derivs,
    """The Fig. 1–4 reproduction loss (docs/theory/singular_limits.md §8):
``L(w) = ⅛ b(w) (|w|² − 1)²``, ``b = 1.5 + w₁``, with closed-form derivatives.

d = 2. Γ = {L = 0} is the unit circle; on Γ, ``∇²L = b w wᵀ`` and ``λ(θ) = ΔL|_Γ = 1.5 + cos θ``,
so the minimiser of ΔL on Γ is θ = π (the green circle of Fig. 2).
""",
)


def circle_angle(w: Tensor) -> Tensor:
    """Along-Γ coordinate θ = atan2(w₂, w₁) for :func:`circle_loss` (docs/theory/singular_limits.md §8)."""
    return torch.atan2(w[..., 1], w[..., 0])


def fig3_a(w: Tensor) -> Tensor:
    """Fig. 3 (top) coefficient ``a(w) = 1 − 0.7 cos 2w₁`` [caption]."""
    return 1.0 - 0.7 * torch.cos(2.0 * w[..., 0])


class QuadraticModel:
    """A model ``f(w, x) = g(w) x₁`` (scalar inputs X: (N, 1) → output (..., N)) whose ``g`` is a quadratic
    in the first k coordinates of w, ``g = c·w + ½ wᵀQw`` (c (k,), Q (k, k) symmetric), so that
    :func:`square_loss` of it has closed-form derivatives (∇g = c + Qw, ∇²g = Q, ∇³g = 0).
    ``g(w)`` itself is evaluated by the given expression."""

    def __init__(self, g: Callable[[Tensor], Tensor], c: list[float], Q: list[list[float]], doc: str) -> None:
        self.g, self.__doc__ = g, doc
        self.c, self.Q = torch.tensor(c, dtype=torch.float64), torch.tensor(Q, dtype=torch.float64)
        self._padded: dict[tuple[int, torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    def __call__(self, w: Tensor, X: Tensor) -> Tensor:
        return self.g(w)[..., None] * X[:, 0]

    def g_derivs(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """(∇g (..., d), ∇²g (d, d)), zero beyond the first k coordinates."""
        key = (w.shape[-1], w.dtype, w.device)
        if key not in self._padded:
            k, d = self.c.shape[0], w.shape[-1]
            self._padded[key] = (
                torch.nn.functional.pad(self.c, (0, d - k)).to(w),
                torch.nn.functional.pad(self.Q, (0, d - k, 0, d - k)).to(w),
            )
        c, Q = self._padded[key]
        return c + w @ Q, Q


product_model = QuadraticModel(
    lambda w: w[..., 0] * w[..., 1],
    [0.0, 0.0],
    [[0.0, 1.0], [1.0, 0.0]],
    """``f(w, x) = w₁ w₂ x`` (label-noise example, docs/theory/singular_limits.md §9.7). X: (N, 1) → output (..., N).""",
)
sum_model = QuadraticModel(
    lambda w: w[..., 0] + w[..., 1],
    [1.0, 1.0],
    [[0.0, 0.0], [0.0, 0.0]],
    """``f(w, x) = (w₁ + w₂) x`` (linear DropConnect example, docs/theory/singular_limits.md §7.2/§9.7). Output (..., N).""",
)
parabola_model = QuadraticModel(
    lambda w: w[..., 0] + w[..., 1] ** 2,
    [1.0, 0.0],
    [[0.0, 0.0], [0.0, 2.0]],
    """``f(w, x) = (w₁ + w₂²) x`` (non-quadratic DropConnect example, docs/theory/singular_limits.md §9.7). Output (..., N).""",
)


def linear_units(w: Tensor, X: Tensor) -> Tensor:
    """Per-unit outputs ``a_j b_j x_n`` of a J-unit linear network, ``w = (a_1..a_J, b_1..b_J)``.

    Scalar inputs X: (N, 1); returns (..., N, J), whose sum over J is ``f(w, x_n)`` (docs/theory/singular_limits.md §9.8).
    """
    J = w.shape[-1] // 2
    return (w[..., :J] * w[..., J:])[..., None, :] * X[:, :1]


def square_loss(model: ModelFn, X: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
    """``L(w) = (1/(2N)) Σ_n (f(w, x_n) − y_n)²`` (½ convention, full batch) for ``model(w, X) -> (..., N)``.

    For a :class:`QuadraticModel` (``f = g(w) x``) it is a :class:`ClosedFormLoss`: with ``A = mean x²``,
    ``r = A g − mean(x y)``: ``∇L = r∇g``, ``∇²L = A∇g∇gᵀ + r∇²g``, ``∇³L = A sym(∇g ⊗ ∇²g)`` (∇³g = 0).
    """

    def loss(w: Tensor) -> Tensor:
        return 0.5 * ((model(w, X) - y) ** 2).mean(-1)

    if not isinstance(model, QuadraticModel):
        return loss
    A, B = (X[:, 0] ** 2).mean(), (X[:, 0] * y).mean()

    def derivs(w: Tensor, order: int) -> tuple[Tensor, ...]:
        g1, g2 = model.g_derivs(w)
        r = (A * model.g(w) - B)[..., None]
        out = [r * g1]
        if order >= 2:
            out.append(A * g1[..., :, None] * g1[..., None, :] + r[..., None] * g2)
        if order >= 3:
            out.append(A * _sym3(g1, g2.expand_as(out[1])))
        return tuple(out)

    return ClosedFormLoss(loss, derivs, f"square loss (½ convention) of {model.__doc__}")


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
    """∇L(w), shape (..., d) (closed form for a :class:`ClosedFormLoss`)."""
    if isinstance(loss, ClosedFormLoss):
        return loss.derivs(torch.as_tensor(w, dtype=torch.float64), 1)[0]
    x = leaf(w)
    return vjp_sum(loss(x), x).detach()


def derivatives(loss: Callable[[Tensor], Tensor], w: Tensor, order: int = 2) -> tuple[Tensor, ...]:
    """``(∇L, ∇²L)`` (order 2) or ``(∇L, ∇²L, ∇³L)`` (order 3) at w, shapes (..., d), (..., d, d),
    (..., d, d, d): closed form for a :class:`ClosedFormLoss`, else by autograd from one forward pass
    (d backward passes for ∇²L and d(d+1)/2 more for ``T_ijk = ∂_i∂_j∂_k L``)."""
    check_choice("order", order, (2, 3))
    if isinstance(loss, ClosedFormLoss):
        return loss.derivs(torch.as_tensor(w, dtype=torch.float64), order)
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
