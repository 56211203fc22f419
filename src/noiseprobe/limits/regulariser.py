"""Regularisers of paper 003's Theorem A, by autodiff in η (docs/theory/singular_limits.md §4, §7.2).

* Laplacian form (Theorem A, eq. fthA:GF, generalised to ``Cov η = σ² C̃``):
  ``Reg(w) = ½ tr(C̃ ∇²_η L̂(w, 0)) = ½ Σ_ij C̃_ij ∂_{η_i}∂_{η_j} L̂(w, 0)``  (= ½ Δ_η L̂ for C̃ = I).
  It is the limit of ``(E L̂(w, η) − L(w))/σ²`` as σ → 0 for η = σξ with ξ of fixed law.
* Non-local form for rescaled Bernoulli masks (§7.2, corrected; not the Laplacian): every moment of
  η is O(p), and to first order in p only single-unit drops matter:
  ``Reg_B(w) = Σ_i [L̂(w, −e_i) − L(w) + ∂_{η_i} L̂(w, 0)]`` (= ``lim_{p→0} (E L̂ − L)/σ²``, σ² = p/(1−p)).
  For DropConnect this is ``Σ_i [L(w − w_i e_i) − L(w) + w_i ∂_i L(w)]``, on Γ the loss with weight i
  dropped alone. It equals the Laplacian form when L̂ is at most quadratic along each η_i axis.

``form="auto"`` picks the form that drives the dynamics: ``"nonlocal"`` for noises of regime
``"nonlocal"`` (Bernoulli masks), ``"laplacian"`` otherwise. All functions take w of shape (..., d)
and return (...) or (..., d).

Where the noise carries an exact rule for the form (``Noise.reg_rules``, :mod:`~noiseprobe.limits.reg_rules`:
closed-form losses, DropConnect's w²-weighted Hessian diagonal, Dropout, Fig. 3) :func:`regulariser` and
:func:`grad_regulariser` use it (and so does :func:`~noiseprobe.limits.flow.constrained_flow`); otherwise
they differentiate L̂ in η, one backward pass per column of ``C̃^{1/2}``. For large noise dimensions
without a rule, :func:`regulariser_estimate` is an unbiased Hutchinson estimate with its standard error.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from noiseprobe.core.validation import check_choice, check_int, check_real
from noiseprobe.limits.losses import fig3_a, leaf, vjp_sum
from noiseprobe.limits.noises import Noise, check_params, covariance_root
from noiseprobe.limits.reg_rules import RegRule

FORMS = ("auto", "laplacian", "nonlocal")


def _laplacian(noise: Noise, x: Tensor) -> Tensor:
    """``½ tr(C̃ ∇²_η L̂(x, 0)) = ½ Σ_k u_kᵀ ∇²_η L̂ u_k`` over the columns u_k of C̃^{1/2} (one backward
    pass each), differentiable in x."""
    eta = leaf(torch.zeros(*x.shape[:-1], noise.eta_dim))
    g = vjp_sum(noise.loss_hat(x, eta), eta, create_graph=True)
    R = covariance_root(noise.C)
    return 0.5 * sum(
        (vjp_sum(g @ u, eta, create_graph=True) @ u for u in R.T), torch.zeros(x.shape[:-1], dtype=torch.float64)
    )


def _nonlocal(noise: Noise, x: Tensor) -> Tensor:
    """``Σ_i [L̂(x, −e_i) − L(x) + ∂_{η_i} L̂(x, 0)]``, differentiable in x."""
    eta = leaf(torch.zeros(*x.shape[:-1], noise.eta_dim))
    base = noise.loss_hat(x, eta)
    slope = vjp_sum(base, eta, create_graph=True)
    drops = noise.loss_hat(x[..., None, :], -torch.eye(noise.eta_dim, dtype=torch.float64))  # (..., m)
    return (drops - base[..., None]).sum(-1) + slope.sum(-1)


def _form(noise: Noise, form: str) -> str:
    check_choice("form", form, FORMS)
    if form == "auto":
        return "nonlocal" if noise.regime == "nonlocal" else "laplacian"
    return form


def _reg(noise: Noise, x: Tensor, form: str) -> Tensor:
    return (_nonlocal if _form(noise, form) == "nonlocal" else _laplacian)(noise, x)


def _rule(noise: Noise, form: str) -> RegRule | None:
    return (noise.reg_rules or {}).get(_form(noise, form))


def regulariser(noise: Noise, w: Tensor, form: str = "auto") -> Tensor:
    """Reg(w), shape (...): Laplacian ``½ tr(C̃ ∇²_η L̂(w,0))`` (Thm A) or non-local Reg_B (§7.2), exact."""
    w = check_params(noise, w, finite=True)
    rule = _rule(noise, form)
    return rule(w, False)[0] if rule is not None else _reg(noise, leaf(w), form).detach()


def grad_regulariser(noise: Noise, w: Tensor, form: str = "auto") -> Tensor:
    """∇_w Reg(w), shape (..., d), exact: the noise's rule, else autodiff."""
    return grad_regulariser_rows(noise, check_params(noise, w, finite=True), form)


def grad_regulariser_rows(noise: Noise, w: Tensor, form: str = "auto") -> Tensor:
    """:func:`grad_regulariser` on a batch whose NaN rows (paths that left Γ, in the flows) stay NaN."""
    w = check_params(noise, w)
    rule = _rule(noise, form)
    grad = None if rule is None else rule(w, True)[1]
    if grad is not None:
        return grad
    x = leaf(w)
    return vjp_sum(_reg(noise, x, form), x).detach()


def regulariser_estimate(
    noise: Noise, w: Tensor, n_probes: int, generator: np.random.Generator, *, with_grad: bool = False
) -> tuple[Tensor, ...]:
    """Unbiased Hutchinson estimate of the Laplacian ``Reg = ½ tr(C̃ ∇²_η L̂(w,0))`` and its standard error.

    Probes ``u = R z`` (``R Rᵀ = C̃``, z Rademacher) give ``s = ½ uᵀ ∇²_η L̂(w,0) u`` with ``E s = Reg``
    (exact on the diagonal of ``Rᵀ∇²_ηL̂R``, so the variance is ``½ Σ_{i≠j}`` of its squared off-diagonal
    entries); ``∇_w s`` (u fixed) is unbiased for ∇Reg. For DropConnect ``∇²_η L̂ = D_w ∇²L D_w``: the
    w²-weighted Hessian diagonal. All ``n_probes`` probes run as one batch: a forward pass and two backward
    passes (three with the gradient), whatever the noise dimension. Returns ``(Reg, SE)`` (...) each, and with
    ``with_grad`` also ``(∇Reg, SE)`` (..., d) each; SE = sample sd over probes / √n_probes.
    """
    n = check_int("n_probes", n_probes, lo=2)
    w = check_params(noise, w)
    R = covariance_root(noise.C)
    z = torch.from_numpy(2.0 * generator.integers(0, 2, size=(n, *w.shape[:-1], R.shape[1])) - 1.0)
    u = (z @ R.T).to(w.device)
    x = leaf(w.expand(n, *w.shape).contiguous())
    eta = leaf(torch.zeros(*x.shape[:-1], noise.eta_dim, dtype=x.dtype, device=x.device))
    g = vjp_sum(noise.loss_hat(x, eta), eta, create_graph=True)
    s = 0.5 * (u * vjp_sum((g * u).sum(-1), eta, create_graph=with_grad)).sum(-1)  # (n, ...)
    out = (s.detach().mean(0), s.detach().std(0) / n**0.5)
    if not with_grad:
        return out
    gs = vjp_sum(s, x).detach()
    return out + (gs.mean(0), gs.std(0) / n**0.5)


def nonlocal_regulariser(noise: Noise, w: Tensor) -> Tensor:
    """The Bernoulli-mask regulariser ``Reg_B = Σ_i [L̂(w,−e_i) − L(w) + ∂_{η_i}L̂(w,0)]`` (§7.2), shape (...)."""
    return regulariser(noise, w, form="nonlocal")


def fig3_caption_regulariser(w: Tensor) -> Tensor:
    """The regulariser as *printed* in the Fig. 3 caption, ``½Δ_η L̂(w,0) = 2a(w)`` — a typo (reference
    §7.8, trap 2): the stated L̂ gives ``a(w)/2`` (:func:`regulariser` of ``fig3_nondegenerate``)."""
    return 2.0 * fig3_a(torch.as_tensor(w, dtype=torch.float64))


def excess_loss(
    noise: Noise, w: Tensor, *, sigma: float, n_samples: int, generator: np.random.Generator
) -> tuple[Tensor, Tensor]:
    """Monte Carlo ``(E_η L̂(w, η) − L(w))/σ²`` and its standard error, shape (...) each.

    The generic definition of the regulariser (docs/theory/singular_limits.md §10 trap 3): it tends to Reg as σ → 0 (to Reg_B
    for Bernoulli masks). The same η draws are used for every w.
    """
    sigma = check_real("sigma", sigma, lo=0.0, lo_open=True)
    n = check_int("n_samples", n_samples, lo=2)
    w = check_params(noise, w)
    eta = torch.from_numpy(np.asarray(noise.sample(n, generator, sigma), dtype=np.float64))
    diff = (noise.loss_hat(w[..., None, :], eta) - noise.loss(w)[..., None]) / sigma**2  # (..., n)
    return diff.mean(-1), diff.std(-1) / n**0.5
