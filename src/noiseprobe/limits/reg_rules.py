"""Exact regularisers from the structure of a noise (docs/theory/singular_limits.md §7.1–7.3, §7.8).

A rule ``rule(w, with_grad) -> (Reg (...), ∇Reg (..., d) or None)`` gives the regulariser of one form
(``"laplacian"``: ``½ tr(C̃ ∇²_η L̂(w,0))``; ``"nonlocal"``: Reg_B) from derivatives of L in w alone,
where the η-autodiff of :mod:`noiseprobe.limits.regulariser` needs one backward pass per noise dimension.
The noise builders attach them (``Noise.reg_rules``) where the loss allows:

* perturbed, ``L̂ = L(w + η)``, closed-form L (:class:`~noiseprobe.limits.losses.ClosedFormLoss`):
  ``Reg = ½ Σ_ij C̃_ij ∂_ij L``, ``∇Reg = ½ ∇³L[C̃]``;
* DropConnect, ``L̂ = L(w ∘ (1 + η))``: ``∇²_η L̂(w, 0) = D_w ∇²L D_w``, so
  ``Reg = ½ Σ_i w_i² ∂_ii L`` (a w²-weighted Hessian diagonal) and
  ``∂_k Reg = w_k ∂_kk L + ½ Σ_i w_i² ∂_iik L`` — closed form, or for a loss with an exact
  ``hessian_diagonal(w)`` (e.g. :class:`~noiseprobe.limits.mlp.MLPLoss`) Reg from it and ∇Reg by one
  backward pass through it; the non-local ``Reg_B = Σ_i [L(w − w_i e_i) − L(w) + w_i ∂_i L]`` with
  ``∂_k Reg_B = Σ_{i≠k} ∂_k L(w − w_i e_i) + (1 − d) ∂_k L + (∇²L w)_k``;
* Dropout, L̂ quadratic in η: ``Reg = (1/(2N)) Σ_n Σ_j u_nj²`` for both forms, ∇Reg by one backward pass;
* Fig. 3 top: ``Reg = a(w)/2``, ``∇Reg = (0.7 sin 2w₁, 0, …)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from noiseprobe.limits.losses import ClosedFormLoss, fig3_a, leaf, vjp_sum

RegRule = Callable[[Tensor, bool], tuple[Tensor, Tensor | None]]


def by_autograd(reg: Callable[[Tensor], Tensor]) -> RegRule:
    """The rule of a differentiable closed-form ``reg(w) -> (...)``: ∇Reg by one backward pass."""

    def rule(w: Tensor, with_grad: bool) -> tuple[Tensor, Tensor | None]:
        if not with_grad:
            with torch.no_grad():
                return reg(w), None
        x = leaf(w)
        value = reg(x)
        return value.detach(), vjp_sum(value, x).detach()

    return rule


def perturbed(loss: ClosedFormLoss, C: Tensor) -> RegRule:
    """``Reg = ½ tr(C̃∇²L)``, ``∇Reg = ½∇³L[C̃]`` (§7.1)."""

    def rule(w: Tensor, with_grad: bool) -> tuple[Tensor, Tensor | None]:
        derivs = loss.derivs(w, 3 if with_grad else 2)
        reg = 0.5 * (derivs[1] * C).sum((-2, -1))
        return reg, 0.5 * (derivs[2] * C).sum((-2, -1)) if with_grad else None

    return rule


def dropconnect_laplacian(loss: ClosedFormLoss) -> RegRule:
    """``Reg = ½ Σ_i w_i² ∂_ii L``, ``∂_k Reg = w_k ∂_kk L + ½ Σ_i w_i² ∂_iik L`` (§7.2, Gaussian masks)."""

    def rule(w: Tensor, with_grad: bool) -> tuple[Tensor, Tensor | None]:
        derivs = loss.derivs(w, 3 if with_grad else 2)
        hd = derivs[1].diagonal(dim1=-2, dim2=-1)
        w2 = w * w
        reg = 0.5 * (w2 * hd).sum(-1)
        if not with_grad:
            return reg, None
        return reg, w * hd + 0.5 * (derivs[2].diagonal(dim1=-2, dim2=-1) * w2[..., None, :]).sum(-1)

    return rule


def dropconnect_diagonal(hessian_diagonal: Callable[[Tensor], Tensor]) -> RegRule:
    """``Reg = ½ Σ_i w_i² ∂_ii L`` from an exact, differentiable Hessian diagonal; ∇Reg by one backward pass."""
    return by_autograd(lambda w: 0.5 * (w * w * hessian_diagonal(w)).sum(-1))


def dropconnect_nonlocal(loss: ClosedFormLoss) -> RegRule:
    """``Reg_B = Σ_i [L(w − w_i e_i) − L(w) + w_i ∂_i L]`` and its closed-form gradient (§7.2, Bernoulli masks)."""

    def rule(w: Tensor, with_grad: bool) -> tuple[Tensor, Tensor | None]:
        d = w.shape[-1]
        eye = torch.eye(d, dtype=w.dtype, device=w.device)
        dropped = w[..., None, :] * (1.0 - eye)  # row i: w with w_i = 0
        g_drop = loss.derivs(dropped, 1)[0] * (1.0 - eye) if with_grad else None  # ∂_k L(w − w_i e_i), i ≠ k
        g, *rest = loss.derivs(w, 2 if with_grad else 1)  # last: P at w reuses ∇²L
        reg = (loss(dropped) - loss(w)[..., None]).sum(-1) + (w * g).sum(-1)
        if g_drop is None:
            return reg, None
        return reg, g_drop.sum(-2) + (1 - d) * g + (rest[0] @ w[..., None])[..., 0]

    return rule


def fig3_top(w: Tensor, with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """``Reg = a(w)/2``, ``∇Reg = (0.7 sin 2w₁, 0, …)`` (Fig. 3 top, §7.8)."""
    if not with_grad:
        return 0.5 * fig3_a(w), None
    grad = torch.zeros_like(w)
    grad[..., 0] = 0.7 * torch.sin(2.0 * w[..., 0])
    return 0.5 * fig3_a(w), grad
