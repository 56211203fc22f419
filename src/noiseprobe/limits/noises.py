"""The noise library of paper 003: each noise is a noise-injected loss ``L̂(w, η)`` with ``L̂(w, 0) = L(w)``.

Noisy gradient descent (Def. 3.1, eq. NGD-intro) is ``w_{k+1} = w_k − α ∇_w L̂(w_k, η_k)`` with η_k i.i.d.,
``E η = 0``, ``Cov η = σ² C̃`` (only w is differentiated). A :class:`Noise` carries L̂, its law (``C̃``
and a sampler) and the regime that docs/theory/singular_limits.md §6–§7 assigns to it:

* ``"A"``: non-degenerate, Theorem A, deterministic flow on the clock ``t = α σ² k``;
* ``"B"``: degenerate (∇_w L̂ affine in η, Reg constant), Theorem B, SDE on the clock ``t = α² σ² k``;
* ``"trivial"``: no motion on either clock (minibatch SGD in interpolation, §7.4);
* ``"nonlocal"``: Bernoulli masks — Theorem A clock, but the regulariser is the non-local ``Reg_B`` of
  §7.2 (every moment of a rescaled Bernoulli mask is O(p), so the Laplacian ½Δ_η L̂ is not the limit
  unless L̂ is quadratic in η).

:func:`noiseprobe.limits.manifold.classify_regime` checks the declared regime numerically.
All functions broadcast over leading dims of ``w`` (..., d) and ``eta`` (..., m); float64 throughout.
Samplers follow :mod:`noiseprobe.core.seeding`: ``sample(n, generator, sigma=None) -> ndarray (n, m)``
with a NumPy Generator (one per replica), so NGD results depend only on (seed, replica index).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.linalg import psd_factor
from noiseprobe.core.validation import check_array, check_choice, check_int, check_matrix, check_real
from noiseprobe.limits import reg_rules
from noiseprobe.limits.losses import ClosedFormLoss, ModelFn, circle_loss, fig3_a, product_model, square_loss
from noiseprobe.limits.reg_rules import RegRule
from noiseprobe.probes.operators.noise_covariance import batch_factor

LossFn = Callable[[Tensor], Tensor]
LossHatFn = Callable[[Tensor, Tensor], Tensor]
SampleFn = Callable[..., np.ndarray]

REGIMES = ("A", "B", "trivial", "nonlocal")
MASK_KINDS = ("gaussian", "bernoulli")


@dataclass(frozen=True)
class Noise:
    """A noise-injected loss and its noise law.

    name: short id; loss_hat: ``L̂(w (..., d), eta (..., m)) -> (...)``, broadcasting over leading dims
    with rows independent (derivatives are taken of the sum over rows); loss: ``L(w) = L̂(w, 0)``;
    eta_dim: m; C: C̃ (m, m), ``Cov η = σ² C̃`` (C̃ normalised so that σ² is the per-coordinate variance
    of i.i.d. noise, e.g. C̃ = I, or ½·ones for Fig. 4 right); sample: ``sample(n, generator, sigma=None)
    -> (n, m)`` draws of η (``sigma=None``: the noise's own ``sigma``); regime: one of :data:`REGIMES`;
    doc: L̂, regulariser and regime in words; d: number of parameters; sigma: the noise's natural level
    when its law fixes one (Bernoulli ``σ² = p/(1−p)``, minibatch, SGLD), else None; reg_rules: exact
    regularisers by form (``"laplacian"``, ``"nonlocal"``) from the structure of L̂
    (:mod:`~noiseprobe.limits.reg_rules`), used by :mod:`~noiseprobe.limits.regulariser` instead of
    autodiff in η where present.
    """

    name: str
    loss_hat: LossHatFn
    loss: LossFn
    eta_dim: int
    C: Tensor
    sample: SampleFn
    regime: str
    doc: str
    d: int
    sigma: float | None = None
    reg_rules: Mapping[str, RegRule] | None = field(default=None, compare=False, repr=False)

    @property
    def clock(self) -> str:
        """The time scale on which the limit lives (docs/theory/singular_limits.md §6)."""
        return {
            "A": "t = α σ² k",
            "nonlocal": "t = α σ² k",
            "B": "t = α² σ² k",
            "trivial": "none (no motion on t = α σ² k nor t = α² σ² k)",
        }[self.regime]


def check_params(noise: Noise, w: Tensor | np.ndarray, field: str = "w", *, finite: bool = False) -> Tensor:
    """``w`` as a float64 tensor (..., d) for ``noise`` (on w's device); ConfigError unless it is an array of
    numbers whose last dimension is ``noise.d``. NaN rows pass (they mark paths that have left Γ) unless
    ``finite`` (a point the user gives, as to :func:`~noiseprobe.limits.regulariser.regulariser`)."""
    allowed = f"a{' finite' if finite else 'n'} array of shape (..., d) with d = {noise.d} ({noise.name})"
    try:
        t = torch.as_tensor(w, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(field, w, allowed) from None
    if t.dim() == 0 or t.shape[-1] != noise.d:
        raise ConfigError(field, tuple(t.shape), allowed)
    if finite and not bool(torch.isfinite(t).all()):
        raise ConfigError(field, "array with non-finite entries", allowed)
    return t


# ----------------------------------------------------------------------------------------------- samplers
def _level(sigma: float | None) -> float | None:
    """A builder's default noise level: None or a finite σ >= 0."""
    return None if sigma is None else check_real("sigma", sigma, lo=0.0)


def _sigma(sigma: float | None, default: float | None) -> float:
    if sigma is None:
        if default is None:
            raise ConfigError("sigma", sigma, "a noise level >= 0 (this noise has no default level)")
        return default
    return check_real("sigma", sigma, lo=0.0)


def _covariance(C: Tensor | np.ndarray | Sequence[Sequence[float]] | None, m: int) -> Tensor:
    """C̃ as a symmetric positive semi-definite float64 (m, m) tensor (default I_m)."""
    if C is None:
        return torch.eye(m, dtype=torch.float64)
    return torch.from_numpy(check_matrix("C", C, m, psd=True))


def covariance_root(C: Tensor) -> Tensor:
    """R (m, r) with ``R Rᵀ = C̃`` (eigenvectors scaled by √λ for the r positive eigenvalues)."""
    return psd_factor(C, rtol=1e-14)


def _gaussian_sampler(C: Tensor, default_sigma: float | None) -> SampleFn:
    """η ~ N(0, σ² C̃) as σ R ξ with R Rᵀ = C̃, ξ ~ N(0, I_r) (singular C̃ allowed)."""
    root: np.ndarray = covariance_root(C).numpy()
    default_sigma = _level(default_sigma)

    def sample(n: int, generator: np.random.Generator, sigma: float | None = None) -> np.ndarray:
        out: np.ndarray = _sigma(sigma, default_sigma) * generator.standard_normal((n, root.shape[1])) @ root.T
        return out

    return sample


def _bernoulli_sampler(m: int, default_sigma: float | None) -> SampleFn:
    """Rescaled Bernoulli masks ``η_i = ζ_i/(1−p) − 1``, ζ_i ~ Bernoulli(1−p) i.i.d. (§7.2): E η = 0,
    Var η_i = σ² = p/(1−p), i.e. the drop probability is ``p = σ²/(1+σ²)``."""
    default_sigma = _level(default_sigma)

    def sample(n: int, generator: np.random.Generator, sigma: float | None = None) -> np.ndarray:
        s2 = _sigma(sigma, default_sigma) ** 2
        p = s2 / (1.0 + s2)
        return (generator.random((n, m)) >= p) / (1.0 - p) - 1.0

    return sample


def _mask_law(kind: str, m: int, p: float | None, sigma: float | None) -> tuple[SampleFn, float | None, str]:
    """Sampler, natural σ and regime of a Gaussian or Bernoulli multiplicative mask."""
    check_choice("kind", kind, MASK_KINDS)
    if kind == "bernoulli":
        if (p is None) == (sigma is None):
            raise ConfigError("p", p, "exactly one of p (drop probability in (0, 1)) or sigma for Bernoulli masks")
        if p is not None:
            sigma = math.sqrt(check_real("p", p, lo=0.0, hi=1.0, lo_open=True, hi_open=True) / (1.0 - p))
        return _bernoulli_sampler(m, sigma), sigma, "nonlocal"
    if p is not None:
        raise ConfigError("p", p, "None for Gaussian masks (give sigma instead)")
    return _gaussian_sampler(torch.eye(m, dtype=torch.float64), sigma), sigma, "A"


def _data(field: str, value: Tensor | np.ndarray) -> Tensor:
    """Data as a finite float64 tensor (a tensor stays on its device); ConfigError otherwise."""
    if isinstance(value, Tensor):
        t = value.to(torch.float64)
        if not bool(torch.isfinite(t).all()):
            raise ConfigError(field, f"tensor of shape {tuple(t.shape)} with non-finite entries", "finite numbers")
        return t
    return torch.from_numpy(check_array(field, value))


def _dim(field: str, value: int) -> int:
    return check_int(field, value, lo=1)


# ----------------------------------------------------------------------------------------------- builders
def perturbed(
    loss: LossFn,
    d: int,
    *,
    C: Tensor | np.ndarray | Sequence[Sequence[float]] | None = None,
    sigma: float | None = None,
) -> Noise:
    """Example 1.2 (Figs. 1, 2, 4): gradient at a perturbed point, ``L̂(w, η) = L(w + η)``, η ~ N(0, σ² C̃).

    ``Reg = ½ tr(C̃ ∇²L)`` (= ½ΔL for C̃ = I, §7.1); non-degenerate (Theorem A), ``t = α σ² k``.
    """
    d = _dim("d", d)
    c = _covariance(C, d)
    rules = {"laplacian": reg_rules.perturbed(loss, c)} if isinstance(loss, ClosedFormLoss) else None
    return Noise(
        "perturbed",
        lambda w, eta: loss(w + eta),
        loss,
        d,
        c,
        _gaussian_sampler(c, sigma),
        "A",
        "L̂(w,η) = L(w+η) (Example 1.2); Reg = ½ tr(C̃ ∇²L); Theorem A, t = ασ²k",
        d,
        sigma,
        rules,
    )


def anti_pgd(loss: LossFn, d: int, *, sigma: float | None = None) -> Noise:
    """Anti-correlated perturbed GD (§7.7): ``w_{k+1} = w_k − α∇L(w_k) + (ξ_{k+1} − ξ_k)``, ξ ~ N(0, σ² I).

    In ``z_k = w_k − ξ_k`` it is NGD with ``L̂(z, ξ) = L(z + ξ)`` — the same L̂ as :func:`perturbed`
    (simulate it in z, or with anti-correlated increments in w): Theorem A, ``Reg = ½ tr ∇²L``.
    """
    return replace(
        perturbed(loss, d, sigma=sigma),
        name="anti_pgd",
        doc="anti-PGD (§7.7): in z = w − ξ, L̂(z,ξ) = L(z+ξ); Reg = ½ tr∇²L; Theorem A, t = ασ²k",
    )


def additive(
    loss: LossFn,
    d: int,
    *,
    C: Tensor | np.ndarray | Sequence[Sequence[float]] | None = None,
    sigma: float | None = None,
) -> Noise:
    """Additive gradient noise (§7.6): ``L̂(w, η) = L(w) + η·w``, so ``∇_w L̂ = ∇L + η`` (affine, G = I).

    Reg ≡ 0: degenerate (Theorem B), ``t = α² σ² k``; limit = Brownian motion on Γ with drift
    ``−¼ P ∇ log pdet ∇²L`` (for C̃ = I).
    """
    d = _dim("d", d)
    c = _covariance(C, d)
    return Noise(
        "additive",
        lambda w, eta: loss(w) + (eta * w).sum(-1),
        loss,
        d,
        c,
        _gaussian_sampler(c, sigma),
        "B",
        "L̂(w,η) = L(w) + η·w (§7.6); Reg ≡ 0, G = I; Theorem B, t = α²σ²k",
        d,
        sigma,
    )


def sgld(loss: LossFn, d: int, *, lr: float, beta: float) -> Noise:
    """SGLD ``w_{k+1} = w_k − α∇L + √(2α/β) ξ`` (§7.6) = :func:`additive` with ``σ² = 2/(αβ)`` (η = −σξ).

    The Theorem-B clock is ``t = α²σ²k = 2αk/β``; the limit needs ``ασ² = 2/β → 0`` (low temperature).
    """
    sigma = math.sqrt(
        2.0 / (check_real("lr", lr, lo=0.0, lo_open=True) * check_real("beta", beta, lo=0.0, lo_open=True))
    )
    return replace(
        additive(loss, d, sigma=sigma),
        name="sgld",
        doc=f"SGLD (§7.6), lr={lr}, β={beta}: L̂ = L + η·w with σ² = 2/(αβ); Theorem B, t = 2αk/β",
    )


def plain_pgd(loss: LossFn, d: int, *, lr: float, sigma_xi: float) -> Noise:
    """Plain perturbed GD ``w_{k+1} = w_k − α∇L(w_k) + ξ_k``, ξ ~ N(0, σ_ξ² I) (§7.6) = :func:`additive`
    with ``η = −ξ/α``, σ = σ_ξ/α: Theorem B on the clock ``t = σ_ξ² k``, valid for σ_ξ² ≪ α."""
    sigma = check_real("sigma_xi", sigma_xi, lo=0.0) / check_real("lr", lr, lo=0.0, lo_open=True)
    return replace(
        additive(loss, d, sigma=sigma),
        name="plain_pgd",
        doc=f"plain PGD (§7.6), lr={lr}, σ_ξ={sigma_xi}: L̂ = L + η·w, σ = σ_ξ/α; Theorem B, t = σ_ξ²k",
    )


def label_noise(model_fn: ModelFn, X: Tensor, y: Tensor, d: int, *, sigma: float | None = None) -> Noise:
    """Example 1.8 (§7.5): ``L̂(w, η) = (1/(2N)) Σ_n (f(w, x_n) − y_n − η_n)²`` (½ convention, full batch).

    ``model_fn(w, X) -> (..., N)`` with d parameters; η ∈ ℝ^N i.i.d. N(0, σ²). Δ_η L̂ = 1 so Reg is constant and
    ``∇_w L̂ = ∇L − (1/N) Σ_n η_n ∇f_n`` is affine: Theorem B, ``t = α² σ² k``; the limit is the
    deterministic flow ``∂_t W = −(1/(4N)) P ∇ tr ∇²L(W)``.
    """
    X, y = _data("X", X), _data("y", y)
    N, d = _dim("len(y)", int(y.shape[0])), _dim("d", d)
    loss = square_loss(model_fn, X, y)

    def loss_hat(w: Tensor, eta: Tensor) -> Tensor:
        return 0.5 * ((model_fn(w, X) - y - eta) ** 2).mean(-1)

    c = torch.eye(N, dtype=torch.float64)
    return Noise(
        "label_noise",
        loss_hat,
        loss,
        N,
        c,
        _gaussian_sampler(c, sigma),
        "B",
        "label noise (Example 1.8): L̂ = (1/2N)Σ(f−y−η)²; Reg const, G = −(1/N)[∇f_n]; Theorem B, t = α²σ²k",
        d,
        sigma,
    )


def minibatch(per_sample_losses: Callable[[Tensor], Tensor], *, N: int, batch_size: int, d: int) -> Noise:
    """Example 1.7 (§7.4): minibatch SGD as ``L̂(w, η) = Σ_i (1/N + η_i) ℓ_i(w)``, ``L = (1/N) Σ_i ℓ_i``.

    ``per_sample_losses(w) -> (..., N)``; batches of size B drawn **without replacement**, so
    ``η_i = 1{i ∈ batch}/B − 1/N``: ``Cov η = c(B, N)(N I − 11ᵀ)/N²`` with c(B, N) = (N−B)/(B(N−1)) the batch
    factor (:func:`noiseprobe.probes.operators.noise_covariance.batch_factor`), i.e. σ² = c(B, N)(N−1)/N² = (N−B)/(N²B) and
    C̃ = (N I − 11ᵀ)/(N−1). L̂ is linear in η
    (Reg ≡ 0) and G = [∇ℓ_1 … ∇ℓ_N] = 0 on Γ in interpolation: trivial on both clocks.
    """
    N, d = _dim("N", N), _dim("d", d)
    B = check_int("batch_size", batch_size, lo=1, hi=N - 1)
    level = math.sqrt(batch_factor(B, N, replacement=False) * (N - 1)) / N
    c = (N * torch.eye(N, dtype=torch.float64) - 1.0) / (N - 1)

    def loss_hat(w: Tensor, eta: Tensor) -> Tensor:
        return ((1.0 / N + eta) * per_sample_losses(w)).sum(-1)

    def sample(n: int, generator: np.random.Generator, sigma: float | None = None) -> np.ndarray:
        if sigma is not None and not math.isclose(sigma, level, rel_tol=1e-9):
            raise ConfigError("sigma", sigma, f"{level!r} (minibatch noise has its level fixed by N and batch_size)")
        batch = np.argsort(generator.random((n, N)), axis=1)[:, :B]
        ind = np.zeros((n, N))
        np.put_along_axis(ind, batch, 1.0, axis=1)
        return ind / B - 1.0 / N

    return Noise(
        "minibatch",
        loss_hat,
        lambda w: per_sample_losses(w).mean(-1),
        N,
        c,
        sample,
        "trivial",
        f"minibatch SGD (Example 1.7), B={B} of N={N} without replacement: L̂ = Σ(1/N+η_i)ℓ_i; "
        "Reg ≡ 0 and G = 0 on Γ: trivial on both clocks",
        d,
        level,
    )


def dropconnect(
    loss: LossFn, d: int, *, kind: str = "gaussian", p: float | None = None, sigma: float | None = None
) -> Noise:
    """DropConnect (Example 1.3, §7.2, §7.9): weight masks, ``L̂(w, η) = L(w ⊙ (1 + η))``.

    ``kind="gaussian"``: η ~ N(0, σ² I), Theorem A with ``Reg_Lap = ½ Σ_i w_i² ∂²_ii L``.
    ``kind="bernoulli"``: weight i dropped with probability p, survivors rescaled by 1/(1−p)
    (σ² = p/(1−p)); Theorem A clock with the non-local ``Reg_B(w) = Σ_i [L(w − w_i e_i) − L(w) + w_i ∂_i L(w)]``
    (on Γ: the loss with weight i dropped alone, summed over i).
    Exact rules (:mod:`~noiseprobe.limits.reg_rules`) replace the d backward passes of autodiff in η when
    the loss is a :class:`~noiseprobe.limits.losses.ClosedFormLoss` (both forms) or has an exact
    ``hessian_diagonal(w)`` such as :class:`~noiseprobe.limits.mlp.MLPLoss` (Laplacian form).
    """
    d = _dim("d", d)
    sample, sigma, regime = _mask_law(kind, d, p, sigma)
    if isinstance(loss, ClosedFormLoss):
        rules = {"laplacian": reg_rules.dropconnect_laplacian(loss), "nonlocal": reg_rules.dropconnect_nonlocal(loss)}
    elif callable(diagonal := getattr(loss, "hessian_diagonal", None)):
        rules = {"laplacian": reg_rules.dropconnect_diagonal(diagonal)}
    else:
        rules = None
    return Noise(
        f"dropconnect_{kind}",
        lambda w, eta: loss(w * (1.0 + eta)),
        loss,
        d,
        torch.eye(d, dtype=torch.float64),
        sample,
        regime,
        f"{kind} DropConnect: L̂ = L(w⊙(1+η)); "
        + (
            "non-local Reg_B (§7.2), t = ασ²k, σ² = p/(1−p)"
            if regime == "nonlocal"
            else "Reg = ½Σ w_i²∂_iiL; Theorem A, t = ασ²k"
        ),
        d,
        sigma,
        rules,
    )


def dropout(
    unit_outputs: Callable[[Tensor, Tensor], Tensor],
    X: Tensor,
    y: Tensor,
    *,
    d: int,
    n_units: int,
    kind: str = "gaussian",
    p: float | None = None,
    sigma: float | None = None,
) -> Noise:
    """Dropout on hidden units (§7.3), square loss (½ convention), one mask per step shared by all samples:

    ``L̂(w, η) = (1/(2N)) Σ_n (Σ_j (1 + η_j) u_nj(w) − y_n)²``, ``u_nj = a_j φ(b_j·x_n)`` given by
    ``unit_outputs(w, X) -> (..., N, J)``. L̂ is exactly quadratic in η, so
    ``Reg = (1/(2N)) Σ_n Σ_j u_nj²`` is exact for any mean-0 mask, Bernoulli included (Reg_B = Reg_Lap).
    Theorem A, ``t = α σ² k`` (Bernoulli: σ² = p/(1−p)).
    """
    X, y = _data("X", X), _data("y", y)
    d, J = _dim("d", d), _dim("n_units", n_units)
    sample, sigma, regime = _mask_law(kind, J, p, sigma)

    def loss_hat(w: Tensor, eta: Tensor) -> Tensor:
        f = (unit_outputs(w, X) * (1.0 + eta)[..., None, :]).sum(-1)
        return 0.5 * ((f - y) ** 2).mean(-1)

    rule = reg_rules.by_autograd(lambda w: 0.5 * (unit_outputs(w, X) ** 2).sum(-1).mean(-1))
    return Noise(
        f"dropout_{kind}",
        loss_hat,
        lambda w: 0.5 * ((unit_outputs(w, X).sum(-1) - y) ** 2).mean(-1),
        J,
        torch.eye(J, dtype=torch.float64),
        sample,
        regime,
        f"{kind} Dropout (§7.3): L̂ = (1/2N)Σ(Σ_j(1+η_j)u_nj − y)²; Reg = (1/2N)ΣΣu_nj² (exact); Theorem A, t = ασ²k",
        d,
        sigma,
        {"laplacian": rule, "nonlocal": rule},
    )


def fig3_nondegenerate(loss: LossFn = circle_loss, d: int = 2, *, sigma: float | None = 0.1) -> Noise:
    """Fig. 3 top: ``L̂ = L(w) + ½ a(w) η²``, ``a = 1 − 0.7 cos 2w₁``, scalar η ~ N(0, σ²) (σ² = 0.01).

    ``Reg = ½ ∂²_η L̂(w, 0) = a(w)/2`` (Theorem A, ``t = α σ² k``). The caption prints "= 2a(w)", which
    contradicts its own L̂ (docs/theory/singular_limits.md §7.8: numerics match a/2 to 0.3 % and reject 2a);
    :func:`noiseprobe.limits.regulariser.fig3_caption_regulariser` gives the printed one for contrast.
    """
    c = torch.ones(1, 1, dtype=torch.float64)
    return Noise(
        "fig3_nondegenerate",
        lambda w, eta: loss(w) + 0.5 * fig3_a(w) * eta[..., 0] ** 2,
        loss,
        1,
        c,
        _gaussian_sampler(c, sigma),
        "A",
        "Fig. 3 top: L̂ = L + ½a(w)η²; Reg = a/2 (caption's '2a' is a typo); Theorem A, t = ασ²k",
        _dim("d", d),
        sigma,
        {"laplacian": reg_rules.fig3_top},
    )


def fig3_degenerate(loss: LossFn = circle_loss, d: int = 2, *, sigma: float | None = 0.1) -> Noise:
    """Fig. 3 bottom: ``L̂ = L(w) + ½ |w|² η``, scalar η ~ N(0, σ²): ``∇_w L̂ = ∇L + w η`` (affine, G = w).

    Reg ≡ 0: Theorem B, ``t = α² σ² k``. On the unit circle G is normal, so the SDE reduces to the
    deterministic flow ``∂_t W = −P ∇ ¼ log ΔL(W)`` [caption].
    """
    c = torch.ones(1, 1, dtype=torch.float64)
    return Noise(
        "fig3_degenerate",
        lambda w, eta: loss(w) + 0.5 * (w * w).sum(-1) * eta[..., 0],
        loss,
        1,
        c,
        _gaussian_sampler(c, sigma),
        "B",
        "Fig. 3 bottom: L̂ = L + ½|w|²η; Reg ≡ 0, G = w; Theorem B, t = α²σ²k",
        _dim("d", d),
        sigma,
    )


def fig3_minibatch() -> Noise:
    """Example 1.7 in interpolation (docs/theory/singular_limits.md §9.7): ``ℓ_i = ½(w₁w₂x_i − y_i)²`` on x = (1, 2), y = (1, 2),
    batch 1 of 2 without replacement. Γ = {w₁w₂ = 1}; every ℓ_i vanishes there, so G = 0: trivial."""
    X = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    y = torch.tensor([1.0, 2.0], dtype=torch.float64)
    return minibatch(lambda w: 0.5 * (product_model(w, X) - y) ** 2, N=2, batch_size=1, d=2)
