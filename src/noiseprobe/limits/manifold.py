"""Geometry of the zero-loss set Γ = {L = 0} (paper 003; docs/theory/singular_limits.md §1, §3, §6).

* Limit map ``Φ(w) = lim_{t→∞} W(t)``, ``Ẇ = −∇L(W)``, ``W(0) = w`` — the *continuous* gradient flow's
  limit (not the GD map, which differs at O(α)); integrated by ``scipy.integrate.solve_ivp`` until
  ``|∇L| ≤ gtol`` (:func:`limit_map`).
* On Γ (Morse–Bott: ``ker ∇²L = T_wΓ``, rank of ``H = ∇²L`` equal to the codimension c):
  ``∂Φ = P`` the orthogonal tangent projector (§3.1) (:func:`tangent_projector`), and for symmetric Σ
  with blocks ``Σ_TT = PΣP``, ``Σ_TN = PΣP_N``, ``Σ_NN = P_NΣP_N`` (§3.3):

      ∂²Φ[Σ] = −H^† ∇³L[Σ_TT]  − 2 P ∇³L[Σ_TN H^†]  − P ∇³L[𝓛_H^{-1}(Σ_NN)]                (§3.3)

  (normal second fundamental form II(Σ_TT); tangential mixed term; tangential noise-driven term), with
  ``𝓛_H^{-1}(Σ_NN) = S``, ``HS + SH = Σ_NN``, i.e. ``S_ij = Σ_ij/(λ_i + λ_j)`` in H's normal eigenbasis
  (:func:`phi_second_derivative`).
* :func:`classify_regime` decides between Theorem A (``P∇Reg ≢ 0`` on Γ) and Theorem B (∇_w L̂ affine
  in η) for a given noise, numerically on sample points of Γ.

The normal space at a point is spanned by the eigenvectors of the c largest eigenvalues of H; c is
estimated once from points on Γ (:func:`codimension`) and then held fixed, since off Γ the tangential
eigenvalues are O(dist) and a relative threshold would misclassify them. ``loss`` maps (..., d) to (...);
every function here is batched over the leading dims of w and works in float64.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from noiseprobe.core.errors import ConfigError, NumericalError
from noiseprobe.core.validation import check_array, check_choice, check_int, check_real
from noiseprobe.limits.losses import derivatives, gradient, hessian, leaf, vjp_sum
from noiseprobe.limits.noises import Noise, check_params, covariance_root
from noiseprobe.limits.regulariser import grad_regulariser

LossFn = Callable[[Tensor], Tensor]
ODE_METHODS = ("DOP853", "RK45", "Radau", "BDF", "LSODA")
IMPLICIT = ("Radau", "BDF", "LSODA")


def _as_w(w: Tensor | np.ndarray) -> Tensor:
    try:
        return torch.as_tensor(w, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError("w", w, "an array of numbers of shape (..., d)") from None


def codimension(loss: LossFn, w_on_gamma: Tensor, rtol: float = 1e-6) -> int:
    """Codimension c of Γ = rank of ∇²L at points of Γ (eigenvalues above ``rtol``·max); checks it is constant."""
    check_real("rtol", rtol, lo=0.0, lo_open=True, hi=1.0, hi_open=True)
    lam = torch.linalg.eigvalsh(hessian(loss, w_on_gamma))
    ranks = (lam.abs() > rtol * lam.abs().amax(-1, keepdim=True)).sum(-1).unique()
    if ranks.numel() != 1:
        raise NumericalError(
            f"codimension: the Hessian rank varies over the points ({ranks.tolist()}); are all "
            "points on Γ and is Γ Morse–Bott?"
        )
    return int(ranks.item())


@dataclass(frozen=True)
class Geometry:
    """Derivatives of L at w (..., d): gradient ``grad``, Hessian eigenvalues ``lam`` (ascending) and
    eigenvectors ``V``, the normal indicator ``normal`` (d,) of the eigen-pairs (the top c), tangent
    projector ``P``, pseudo-inverse ``H_pinv`` (on the c normal eigenvectors) and ``T = ∇³L``."""

    grad: Tensor
    lam: Tensor
    V: Tensor
    normal: Tensor
    P: Tensor
    H_pinv: Tensor
    T: Tensor | None


def _finite_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of w with non-finite entries replaced by 0 (so eigh never sees NaN; w itself when all rows are
    finite), and the finite mask."""
    ok = torch.isfinite(w).all(-1)
    return (w if bool(ok.all()) else torch.where(ok[..., None], w, torch.zeros_like(w))), ok


def _nan_rows(x: Tensor, ok: Tensor) -> Tensor:
    """x with the rows (leading dims of ``ok``) where ``ok`` is False set to NaN."""
    if bool(ok.all()):
        return x
    return x.masked_fill(~ok.reshape(*ok.shape, *([1] * (x.dim() - ok.dim()))), math.nan)


def _spectrum(loss: LossFn, w: Tensor, order: int) -> tuple[tuple[Tensor, ...], Tensor, Tensor, Tensor]:
    """Derivatives of L up to ``order`` and the eigen-decomposition (ascending) of ∇²L at the finite rows
    of w (zeros elsewhere), with the finite-row mask."""
    safe, ok = _finite_rows(w)
    derivs = derivatives(loss, safe, order)
    lam, V = torch.linalg.eigh(derivs[1])
    return derivs, lam, V, ok


def _projector(V: Tensor, tangent: int) -> Tensor:
    """``P = V_T V_Tᵀ`` on the first ``tangent`` eigenvectors."""
    Vt = V[..., :tangent]
    return Vt @ Vt.transpose(-1, -2)


def _pinv(lam: Tensor, V: Tensor, tangent: int) -> Tensor:
    """``H^† = V_N diag(1/λ_N) V_Nᵀ`` on the eigenvectors after the first ``tangent``."""
    Vn = V[..., tangent:]
    return (Vn / lam[..., None, tangent:]) @ Vn.transpose(-1, -2)


def geometry(loss: LossFn, w: Tensor, codim: int, third: bool = True) -> Geometry:
    """Eigen-decomposition of ∇²L at w with the top ``codim`` eigenvectors taken as normal (NaN rows stay NaN)."""
    w = _as_w(w)
    d = w.shape[-1]
    c = check_int("codim", codim, lo=0, hi=d)
    derivs, lam, V, ok = _spectrum(loss, w, 3 if third else 2)
    normal = torch.zeros(d, dtype=torch.float64)
    normal[d - c :] = 1.0
    return Geometry(
        _nan_rows(derivs[0], ok),
        _nan_rows(lam, ok),
        _nan_rows(V, ok),
        normal,
        _nan_rows(_projector(V, d - c), ok),
        _nan_rows(_pinv(lam, V, d - c), ok),
        _nan_rows(derivs[2], ok) if third else None,
    )


def _codim(loss: LossFn, w: Tensor, codim: int | None) -> int:
    return codimension(loss, w) if codim is None else check_int("codim", codim, lo=0, hi=w.shape[-1])


def tangent_projector(loss: LossFn, w: Tensor, codim: int | None = None) -> Tensor:
    """``P = P_{T_wΓ}`` (= ∂Φ on Γ, §3.1), shape (..., d, d): projector onto the kernel of ∇²L(w) on Γ
    (the span of the d − codim lowest eigenvectors of ∇²L).

    w should lie on Γ; ``codim=None`` estimates the codimension there.
    """
    w = _as_w(w)
    _, _, V, ok = _spectrum(loss, w, 2)
    return _nan_rows(_projector(V, w.shape[-1] - _codim(loss, w, codim)), ok)


def contract3(T: Tensor, S: Tensor) -> Tensor:
    """``∇³L[S]_i = Σ_jk ∂_i∂_j∂_k L · S_jk``, shape (..., d)."""
    return torch.einsum("...ijk,...jk->...i", T, S)


def phi_second_derivative_terms(
    loss: LossFn, w: Tensor, Sigma: Tensor, codim: int | None = None, geo: Geometry | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The three terms of ∂²Φ[Σ] at w ∈ Γ (§3.3), each (..., d):
    ``II(Σ_TT) = −H^†∇³L[Σ_TT]`` (normal), ``−2P∇³L[Σ_TN H^†]`` and ``−P∇³L[𝓛_H^{-1}(Σ_NN)]`` (tangential).
    """
    w, Sigma = _as_w(w), _as_w(Sigma)
    d = w.shape[-1]
    if Sigma.dim() < 2 or Sigma.shape[-2:] != (d, d):
        raise ConfigError("Sigma", tuple(Sigma.shape), f"a symmetric matrix of shape (d, d) or (..., d, d), d = {d}")
    if geo is None:
        geo = geometry(loss, w, _codim(loss, w, codim))
    if geo.T is None:
        raise ConfigError("geo", "geometry(..., third=False)", "a Geometry with third derivatives (third=True)")
    Sigma = Sigma.expand(*w.shape, d)
    P, Hp, V, lam, T, normal = geo.P, geo.H_pinv, geo.V, geo.lam, geo.T, geo.normal
    PN = torch.eye(d, dtype=torch.float64) - P
    Vt = V.transpose(-1, -2)
    s_nn = Vt @ (PN @ Sigma @ PN) @ V
    denom = lam[..., :, None] + lam[..., None, :]
    keep = normal[..., :, None] * normal[..., None, :]
    S = V @ (keep * s_nn / torch.where(keep.bool(), denom, torch.ones_like(denom))) @ Vt
    ii = -(Hp @ contract3(T, P @ Sigma @ P)[..., None])[..., 0]
    mixed = -2.0 * (P @ contract3(T, P @ Sigma @ PN @ Hp)[..., None])[..., 0]
    noise = -(P @ contract3(T, S)[..., None])[..., 0]
    return ii, mixed, noise


def phi_second_derivative(
    loss: LossFn, w: Tensor, Sigma: Tensor, codim: int | None = None, geo: Geometry | None = None
) -> Tensor:
    """``∂²Φ(w)[Σ] = Σ_ij ∂_i∂_jΦ(w) Σ_ij`` at w ∈ Γ from the three-term formula (§3.3), shape (..., d).

    Sigma: (d, d) or (..., d, d), symmetric. Special cases (§3.4): ``Σ_NN = cH`` gives ``−(c/2)P∇tr H``;
    ``Σ_NN = P_N`` gives ``−½P∇log pdet H``.
    """
    ii, mixed, noise = phi_second_derivative_terms(loss, w, Sigma, codim, geo)
    return ii + mixed + noise


# ------------------------------------------------------------------------------------------ limit map Φ
def limit_map(
    loss: LossFn,
    w0: Tensor,
    *,
    gtol: float = 1e-10,
    ltol: float = 1e-8,
    t_max: float = 1e5,
    method: str = "DOP853",
    rtol: float = 1e-11,
    atol: float = 1e-13,
) -> Tensor:
    """``Φ(w0) = lim_{t→∞} W(t)`` for the gradient flow ``Ẇ = −∇L(W)`` (docs/theory/singular_limits.md §1, trap 5), (..., d).

    All rows are integrated as one system by ``solve_ivp`` (``method``: ``"DOP853"`` adaptive explicit, the
    default; ``"Radau"``/``"BDF"``/``"LSODA"`` for stiff losses, with the exact block-diagonal Jacobian
    −∇²L) over windows of doubling length until every row has ``|∇L| ≤ gtol``. Near Γ the flow converges
    exponentially (Prop. 3.9), so ``|W − Φ(w0)| ≈ |∇L|/λ_min``. A row that has not converged by
    ``t_max``, becomes non-finite, or stops at a critical point with ``L > ltol`` (w0 outside the
    attractive neighbourhood U of Γ) is returned as NaN, with a warning.
    """
    shape = check_array("w0", w0, finite=False).shape  # numbers (a CPU copy, for the check only)
    if not shape or 0 in shape:  # non-finite rows pass: they are returned as NaN, like rows that fail
        raise ConfigError("w0", f"array of shape {shape}", "an array of shape (..., d), d >= 1")
    w0 = _as_w(w0)
    check_real("gtol", gtol, lo=0.0, lo_open=True)
    check_real("ltol", ltol, lo=0.0, lo_open=True)
    check_real("t_max", t_max, lo=0.0, lo_open=True)
    check_choice("method", method, ODE_METHODS)
    shape, d = w0.shape, w0.shape[-1]
    y = w0.reshape(-1, d).numpy().copy()
    live = np.isfinite(y).all(-1)
    active = _flow_to_rest(loss, y, live, gtol=gtol, t_max=t_max, method=method, rtol=rtol, atol=atol)
    with torch.no_grad():
        off = live & ~active & ~(loss(torch.from_numpy(y)).numpy() <= ltol)
    if active.any() or off.any():
        warnings.warn(
            f"limit_map: {int(active.sum())} row(s) did not reach |∇L| <= {gtol} by t = {t_max}, "
            f"{int(off.sum())} stopped at a critical point with L > {ltol}",
            RuntimeWarning,
            stacklevel=2,
        )
    y[~live | active | off] = np.nan
    return torch.from_numpy(y).reshape(shape)


def _flow_to_rest(
    loss: LossFn,
    y: np.ndarray,
    live: np.ndarray,
    *,
    gtol: float,
    t_max: float,
    method: str,
    rtol: float,
    atol: float,
) -> np.ndarray:
    """The integration of :func:`limit_map`: flows the rows ``y`` (n, d) in place over windows of doubling
    length until every live row has ``|∇L| ≤ gtol`` or ``t_max`` is reached; clears ``live`` for rows that
    fail or become non-finite. Returns the rows still active (not at rest) at the end."""
    d = y.shape[-1]

    def rhs(_: float, flat: np.ndarray) -> np.ndarray:
        return -gradient(loss, torch.from_numpy(flat.reshape(-1, d))).numpy().ravel()

    def jac(_: float, flat: np.ndarray) -> np.ndarray | scipy.sparse.csr_matrix:
        blocks = -hessian(loss, torch.from_numpy(flat.reshape(-1, d))).numpy()
        return (
            scipy.sparse.block_diag(list(blocks), format="csr")
            if method != "LSODA"
            else scipy.linalg.block_diag(*blocks)
        )

    def integrate(rows: np.ndarray, span: float) -> bool:
        sol = solve_ivp(
            rhs,
            (0.0, span),
            y[rows].ravel(),
            method=method,
            rtol=rtol,
            atol=atol,
            **({"jac": jac} if method in IMPLICIT else {}),
        )
        end = sol.y[:, -1].reshape(-1, d)
        if sol.status != 0 or not np.isfinite(end).all():
            return False
        y[rows] = end
        return True

    t, window = 0.0, 1.0
    with np.errstate(all="ignore"):
        while True:
            g = np.linalg.norm(rhs(0.0, y[live].ravel()).reshape(-1, d), axis=-1) if live.any() else np.zeros(0)
            active: np.ndarray = live.copy()
            active[live] = ~(g <= gtol)
            live[live] = np.isfinite(g)
            active &= live
            if not active.any() or t >= t_max:
                break
            # one system for all active rows; if it fails (a row leaves U), integrate rows one by one
            rows = np.flatnonzero(active)
            if not integrate(rows, window):
                for r in rows:
                    live[r] = integrate(np.array([r]), window)
            t, window = t + window, 2.0 * window
    return active


def newton_project(loss: LossFn, w: Tensor, codim: int, *, tol: float = 1e-12, max_iter: int = 20) -> Tensor:
    """Project points near Γ onto Γ by normal Newton steps ``w ← w − H(w)^† ∇L(w)`` (H^† on the top
    ``codim`` eigenvectors). Converges quadratically to the nearest point of Γ up to O(dist²); used as the
    retraction that keeps integrators on Γ. Rows that fail to reach ``|∇L| ≤ tol`` become NaN."""
    w = _as_w(w)
    check_real("tol", tol, lo=0.0, lo_open=True)
    tangent = w.shape[-1] - check_int("codim", codim, lo=0, hi=w.shape[-1])
    g = gradient(loss, w)
    for _ in range(check_int("max_iter", max_iter, lo=1)):
        if not bool((g.norm(dim=-1) > tol).any()):
            return w
        derivs, lam, V, ok = _spectrum(loss, w, 2)
        w = w - _nan_rows((_pinv(lam, V, tangent) @ derivs[0][..., None])[..., 0], ok)
        g = gradient(loss, w)
    return w.masked_fill(~(g.norm(dim=-1) <= tol * 1e3)[..., None], math.nan)


# ------------------------------------------------------------------------------------------ regimes
@dataclass(frozen=True)
class RegimeReport:
    """Which theorem applies to a noise, decided on sample points of Γ (docs/theory/singular_limits.md §6, trap 6).

    regime: ``"A"`` (Theorem A: P∇Reg ≢ 0), ``"nonlocal"`` (Theorem A with Reg_B, Bernoulli masks),
    ``"B"`` (Reg constant on Γ and ∇_w L̂ affine in η), ``"trivial"`` (additionally Σ = G C̃ Gᵀ = 0 on Γ),
    or ``"undetermined"`` (Reg constant on Γ but ∇_w L̂ not affine: neither theorem as stated).
    """

    regime: str
    declared: str
    theorem: str
    clock: str
    max_tangential_grad_reg: float
    max_tangential_grad_reg_laplacian: float
    affine_in_eta: bool
    max_affine_residual: float
    max_noise_covariance: float
    max_tangential_noise: float
    deterministic_limit: bool
    codim: int
    reason: str

    @property
    def consistent(self) -> bool:
        """True when the measured regime is the one the noise declares."""
        return self.regime == self.declared

    def __str__(self) -> str:
        return (
            f"regime {self.regime} ({self.theorem}, {self.clock}); declared {self.declared}; "
            f"max|P∇Reg| = {self.max_tangential_grad_reg:.3g}, affine in η: {self.affine_in_eta} "
            f"(residual {self.max_affine_residual:.3g}), max|GC̃Gᵀ| = {self.max_noise_covariance:.3g}, "
            f"max|PG| = {self.max_tangential_noise:.3g}. {self.reason}"
        )


def noise_jacobian(noise: Noise, w: Tensor, eta: Tensor | None = None) -> Tensor:
    """``G(w) = ∇_w∇_η L̂(w, η)`` at η (default 0), shape (..., d, m), ``G_ij = ∂_{w_i}∂_{η_j} L̂``."""
    x = leaf(check_params(noise, w))
    e = leaf(torch.zeros(*x.shape[:-1], noise.eta_dim) if eta is None else eta)
    lh = noise.loss_hat(x, e)
    if noise.eta_dim < x.shape[-1]:  # one backward pass per η_j or per w_i, whichever are fewer
        ge = vjp_sum(lh, e, create_graph=True)
        return torch.stack([vjp_sum(ge[..., j], x) for j in range(noise.eta_dim)], -1)
    gw = vjp_sum(lh, x, create_graph=True)
    return torch.stack([vjp_sum(gw[..., i], e) for i in range(x.shape[-1])], -2)


def classify_regime(
    noise: Noise, w_on_gamma_samples: Tensor, *, tol: float = 1e-8, n_eta: int = 4, seed: int = 0
) -> RegimeReport:
    """Decide which limit theorem applies to ``noise`` from points of Γ (n, d).

    Measures ``max |P∇Reg|`` (Reg_B for Bernoulli masks, with the Laplacian value beside it), whether
    ∇_w L̂ is affine in η (``max |∂_η∇_w L̂(w, η) − G(w)|`` over ``n_eta`` standard-normal η per point),
    ``max |G C̃ Gᵀ|`` and ``max |P G C̃^{1/2}|``. Quantities below ``tol`` (relative to 1 + their scale)
    count as zero.
    """
    w = check_params(noise, w_on_gamma_samples, "w_on_gamma_samples").reshape(-1, noise.d)
    check_real("tol", tol, lo=0.0, lo_open=True)
    loss_max = float(noise.loss(w).abs().max())
    if not loss_max <= 1e-8:
        raise ConfigError(
            "w_on_gamma_samples", f"max L = {loss_max:.3g}", "points of Γ (L <= 1e-8); map them with limit_map"
        )
    c = codimension(noise.loss, w)
    P = tangent_projector(noise.loss, w, c)
    tg = float((P @ grad_regulariser(noise, w)[..., None]).norm(dim=(-2, -1)).max())
    tg_lap = float((P @ grad_regulariser(noise, w, "laplacian")[..., None]).norm(dim=(-2, -1)).max())
    G = noise_jacobian(noise, w)
    gen = torch.Generator().manual_seed(check_int("seed", seed))
    etas = torch.randn(
        check_int("n_eta", n_eta, lo=1), *w.shape[:-1], noise.eta_dim, generator=gen, dtype=torch.float64
    )
    resid = max(float((noise_jacobian(noise, w, e) - G).abs().max()) for e in etas)
    scale = 1.0 + float(G.abs().max())
    affine = resid <= tol * scale
    B = G @ covariance_root(noise.C)
    cov = float((B @ B.transpose(-1, -2)).abs().max())
    tang = float((P @ B).abs().max())
    if tg > tol:
        regime = "nonlocal" if noise.regime == "nonlocal" else "A"
        reason = "P∇Reg does not vanish on Γ: deterministic constrained gradient flow."
    elif affine and cov <= tol:
        regime, reason = "trivial", "Reg constant and G C̃ Gᵀ = 0 on Γ: no motion on either clock."
    elif affine:
        regime = "B"
        reason = "Reg constant on Γ and ∇_w L̂ affine in η: SDE on Γ" + (
            " (all noise normal, PG = 0: deterministic drift)." if tang <= tol else "."
        )
    else:
        regime = "undetermined"
        reason = "Reg constant on Γ but ∇_w L̂ is not affine in η: neither theorem applies as stated (trap 6)."
    theorem = {
        "A": "Theorem A",
        "nonlocal": "Theorem A with non-local Reg_B",
        "B": "Theorem B",
        "trivial": "trivial limit",
        "undetermined": "none",
    }[regime]
    clock = {"A": "t = α σ² k", "nonlocal": "t = α σ² k", "B": "t = α² σ² k"}.get(regime, "—")
    return RegimeReport(
        regime,
        noise.regime,
        theorem,
        clock,
        tg,
        tg_lap,
        affine,
        resid,
        cov,
        tang,
        regime != "B" or tang <= tol,
        c,
        reason,
    )
