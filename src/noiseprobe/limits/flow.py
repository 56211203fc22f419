"""Limiting dynamics on Γ of paper 003's two theorems (docs/theory/singular_limits.md §4–§6, traps 1, 5, 7).

* Theorem A (fth:main1, eq. fthA:GF), non-degenerate noise, clock ``t = α σ² k``:
  ``∂_t W = −P_{T_WΓ} ∇Reg(W)``, ``W(0) = Φ(w0)``, Reg from :mod:`noiseprobe.limits.regulariser`
  (``½ tr(C̃ ∇²_η L̂(w,0))``, or the non-local Reg_B for Bernoulli masks) — :func:`constrained_flow`.
* Theorem B (fth:main2, eq. fthB:SDE), degenerate noise (∇_w L̂ = ∇L + Gη), clock ``t = α² σ² k``:
  ``dW = P G C̃^{1/2} dB + ½ ∂²Φ(W)[G C̃ Gᵀ] dt``, ``W(0) = Φ(w0)`` (Itô) — :func:`limiting_sde`.

Both integrators stay on Γ: after every step the iterate is mapped back by
:func:`noiseprobe.limits.manifold.newton_project`. The flow uses classical RK4; the SDE uses
Euler–Maruyama in ambient coordinates over a batch of paths (weak order 1 — the projection adds the
normal O(dt) part that keeps the tangential Brownian increment on Γ, which ½II(Σ_TT) also supplies).
The initial point is Φ(w0), the continuous gradient flow's limit (trap 5), never w0 itself.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from noiseprobe.core.errors import ConfigError, NumericalError
from noiseprobe.core.seeding import ReplicaStreams
from noiseprobe.core.validation import check_int, check_real
from noiseprobe.limits.manifold import (
    codimension,
    geometry,
    limit_map,
    newton_project,
    noise_jacobian,
    phi_second_derivative,
    tangent_projector,
)
from noiseprobe.limits.noises import Noise, check_params, covariance_root
from noiseprobe.limits.regulariser import grad_regulariser_rows


def _start(noise: Noise, w0: Tensor, codim: int | None) -> tuple[Tensor, int]:
    """Φ(w0) and the codimension of Γ (estimated at the finite rows of Φ(w0) unless given)."""
    w0 = check_params(noise, w0, "w0")
    W = limit_map(noise.loss, w0)
    ok = torch.isfinite(W).all(-1)
    if not bool(ok.any()):
        raise NumericalError(
            f"limit map Φ(w0) did not converge for any row of w0 = {w0.tolist()}: "
            "are the points in the attractive neighbourhood of Γ?"
        )
    c = codimension(noise.loss, W[ok]) if codim is None else check_int("codim", codim, lo=1, hi=noise.d - 1)
    return W, c


def _record_steps(n_steps: int, n_points: int) -> np.ndarray:
    """Step indices 0 … n_steps at which n_points outputs are recorded (evenly spaced, rounded)."""
    return np.unique(np.round(np.linspace(0, n_steps, n_points)).astype(int))


def constrained_flow(
    noise: Noise,
    w0: Tensor,
    t_end: float,
    n_points: int,
    *,
    form: str = "auto",
    dt: float = 0.1,
    codim: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Theorem A: ``∂_t W = −P∇Reg(W)`` on Γ from ``W(0) = Φ(w0)``, in the time ``t = α σ² k``.

    w0: (..., d) — every row is integrated at once (RK4 with step ≤ ``dt``, Newton projection onto Γ after
    each step). form: the regulariser (``"auto"``: Reg_B for Bernoulli masks, else ½tr(C̃∇²_ηL̂)).
    Returns ``t`` (n_points,) from 0 to t_end and ``W`` (n_points, ..., d); a row that leaves the
    neighbourhood of Γ is NaN from then on.
    """
    t_end = check_real("t_end", t_end, lo=0.0, lo_open=True)
    n_points = check_int("n_points", n_points, lo=2)
    dt = check_real("dt", dt, lo=0.0, lo_open=True)
    W, c = _start(noise, w0, codim)
    n_steps = (n_points - 1) * max(1, math.ceil(t_end / (n_points - 1) / dt))
    h = t_end / n_steps
    record = _record_steps(n_steps, n_points)
    keep = set(record.tolist())

    def velocity(x: Tensor) -> Tensor:
        grad_reg = grad_regulariser_rows(noise, x, form)  # first: a closed-form loss then reuses ∇²L for P
        return -(tangent_projector(noise.loss, x, c) @ grad_reg[..., None])[..., 0]

    out = [W]
    for k in range(1, n_steps + 1):
        k1 = velocity(W)
        k2 = velocity(W + 0.5 * h * k1)
        k3 = velocity(W + 0.5 * h * k2)
        k4 = velocity(W + h * k3)
        W = newton_project(noise.loss, W + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4), c)
        if k in keep:
            out.append(W)
    return torch.as_tensor(record * h, dtype=torch.float64), torch.stack(out)


def sde_drift(noise: Noise, W: Tensor, codim: int) -> tuple[Tensor, Tensor]:
    """Theorem-B coefficients at W ∈ Γ (n, d): the diffusion matrix ``P G R`` (n, d, r), ``R Rᵀ = C̃``, and the Itô
    drift ``½ ∂²Φ[G C̃ Gᵀ]`` (n, d) (docs/theory/singular_limits.md §5: ``½II(Σ_TT) − P∇³L[Σ_TN H^†] − ½P∇³L[𝓛_H^{-1}Σ_NN]``)."""
    B = noise_jacobian(noise, W) @ covariance_root(noise.C)
    geo = geometry(noise.loss, W, codim)
    drift = 0.5 * phi_second_derivative(noise.loss, W, B @ B.transpose(-1, -2), geo=geo)
    return geo.P @ B, drift


def limiting_sde(
    noise: Noise,
    w0: Tensor,
    t_end: float,
    n_steps: int,
    *,
    n_paths: int,
    seed: int,
    n_points: int | None = None,
    codim: int | None = None,
    path_offset: int = 0,
    block: int = 256,
) -> tuple[Tensor, Tensor]:
    """Theorem B: ``dW = P G C̃^{1/2} dB + ½∂²Φ[G C̃ Gᵀ] dt`` on Γ from ``W(0) = Φ(w0)``, ``t = α² σ² k``.

    w0: (d,) shared by all paths, or (n_paths, d). Euler–Maruyama with ``dt = t_end/n_steps`` on all paths
    at once, Newton projection onto Γ after every step. Brownian increments come from per-path streams
    keyed by (seed, path_offset + path index) (:mod:`noiseprobe.core.seeding`), drawn in blocks of
    ``block`` steps, so a path does not depend on how many paths run beside it. Returns ``t``
    (n_points,) and ``W`` (n_points, n_paths, d), recorded at ``n_points`` (default n_steps + 1) evenly
    spaced steps; a path that leaves the neighbourhood of Γ is NaN from then on.
    Requires a degenerate noise (regime ``"B"`` or ``"trivial"``): for Theorem-A noise the regulariser's
    drift dominates this clock by 1/α (trap 6).
    """
    if noise.regime not in ("B", "trivial"):
        raise ConfigError("noise", noise.name, "a degenerate noise (regime 'B' or 'trivial'); use constrained_flow")
    t_end = check_real("t_end", t_end, lo=0.0, lo_open=True)
    n_steps = check_int("n_steps", n_steps, lo=1)
    n_paths = check_int("n_paths", n_paths, lo=1)
    n_points = n_steps + 1 if n_points is None else check_int("n_points", n_points, lo=2, hi=n_steps + 1)
    block = check_int("block", block, lo=1)
    w0 = check_params(noise, w0, "w0")
    if w0.dim() > 2 or (w0.dim() == 2 and w0.shape[0] != n_paths):
        raise ConfigError("w0", tuple(w0.shape), f"shape (d,) or (n_paths, d) = ({n_paths}, {noise.d})")
    W, c = _start(noise, w0.expand(n_paths, noise.d), codim)
    dt = t_end / n_steps
    record = _record_steps(n_steps, n_points)
    keep = set(record.tolist())
    rank = covariance_root(noise.C).shape[1]  # B is r-dimensional, C̃^{1/2} = R (m, r)
    streams = ReplicaStreams(
        check_int("seed", seed, lo=0), range(check_int("path_offset", path_offset, lo=0), path_offset + n_paths)
    )
    out = [W]
    for k0 in range(0, n_steps, block):
        xi = torch.from_numpy(streams.normal((min(block, n_steps - k0), rank)))  # (paths, steps, rank C̃)
        for j in range(xi.shape[1]):
            diffusion, drift = sde_drift(noise, W, c)
            step = (diffusion @ xi[:, j, :, None])[..., 0] * math.sqrt(dt) + drift * dt
            W = newton_project(noise.loss, W + step, c)
            if k0 + j + 1 in keep:
                out.append(W)
    return torch.as_tensor(record * dt, dtype=torch.float64), torch.stack(out)
