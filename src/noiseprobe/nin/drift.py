"""The NIW decay rate of eq. (2) without its second-order truncation, for a batched MLP ensemble.

Eq. (2) (corrected, docs/theory/noise_injection_nodes.md §4.1) predicts d ln‖W_NI‖/dt = −η σε² Ŵᵀ⟨H⟩Ŵ per SGD step, with ⟨H⟩
the local Hessian at z^(ℓ_NI) of each sample's loss, averaged over samples (``curv_niw``,
:meth:`~noiseprobe.nin.ensemble.MLPEnsemble.niw_curvature`). For a ReLU network that Hessian is the
autograd one, zero at the kinks: it misses the jump of ∂ℓ/∂z_j where a pre-activation z_j crosses 0.
For one sample the jump is met with a probability that vanishes with σε, but averaged over the data it
is met with probability ∝ σε|W_j| p(z_j = 0) and contributes at the same order σε² as ⟨H⟩
(docs/nin_probe.md, "the eq. (2) study").

The expected SGD step of ln‖W_NI‖ to first order in η is exact in closed form. With ε = σε ξ per sample
and F(u) = E_x ℓ_x(z_x + u W_NI) the clean loss with every pre-activation shifted by u W_NI, the NIW
gradient is E_x[ε ∇_z ℓ_x(z_x + ε W_NI)], and Stein's lemma twice (ξ ~ N(0, 1)) gives

    rate_smoothed = η Ŵ·E[∂L/∂W_NI]/‖W_NI‖ = η E_ξ[(ξ² − 1) F(σε ξ)] / ‖W_NI‖²              (D1)

which → η σε² F''(0) as σε → 0, with F''(0) = Ŵᵀ H_shift Ŵ ‖W_NI‖²: the Hessian of the data-averaged
loss along a common shift of the pre-activations (the kinks included). (D1) needs forward passes only:
F at the Gauss-Hermite nodes of ξ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from noiseprobe.core import divergence
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_choice, check_int, check_real
from noiseprobe.nin.ensemble import LOSSES, MLPEnsemble, batch_losses


def shifted_loss(ens: MLPEnsemble, x: torch.Tensor, y: torch.Tensor, *, loss: str, xi: np.ndarray) -> torch.Tensor:
    """F(σε ξ) per replica and node, (K, len(xi)): the mean clean loss over the samples ``x`` (n, d_in),
    or (K, n, d_in) per replica, with labels ``y`` (n,) or (K, n), every pre-activation at z^(ℓ_NI)
    shifted by σε ξ W_NI (the same ξ for every sample)."""
    check_choice("loss", loss, LOSSES)
    xi = np.asarray(xi, dtype=np.float64)
    if xi.ndim != 1 or not np.isfinite(xi).all():
        raise ConfigError("xi", xi.tolist(), "a 1-d array of finite unit noise values")
    d_in = ens.weights[0].shape[1]
    if not (x.dim() in (2, 3) and x.shape[-1] == d_in and (x.dim() == 2 or x.shape[0] == ens.k)):
        raise ConfigError("x", f"shape {tuple(x.shape)}", f"(n, {d_in}) or ({ens.k}, n, {d_in}) samples")
    if tuple(y.shape) not in ((x.shape[-2],), (ens.k, x.shape[-2])):
        raise ConfigError("y", f"shape {tuple(y.shape)}", f"labels ({x.shape[-2]},) or ({ens.k}, {x.shape[-2]})")
    out = torch.empty(ens.k, xi.size, dtype=torch.float64)
    with torch.no_grad():
        for j, v in enumerate(xi):
            logits, _ = ens.forward(x, torch.full((ens.k, x.shape[-2]), float(v), dtype=ens.niw.dtype))
            out[:, j] = batch_losses(logits, y, loss).double().mean(1)
    return out


def smoothed_niw_rate(
    ens: MLPEnsemble, x: torch.Tensor, y: torch.Tensor, *, loss: str, lr: float, nodes: int = 24
) -> torch.Tensor:
    """Per-step decay rate of ln‖W_NI‖ per replica (K,), eq. (D1) of the module docstring, by
    ``nodes``-point Gauss-Hermite quadrature over ξ on the samples ``x``, ``y`` (as :func:`shifted_loss`)."""
    check_real("lr", lr, lo=0.0, lo_open=True)
    check_int("nodes", nodes, lo=4, hi=200)
    xi, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    f = shifted_loss(ens, x, y, loss=loss, xi=xi)
    f = f - f @ torch.as_tensor(w, dtype=torch.float64)[:, None]  # E[ξ² − 1] = 0: less cancellation
    weights = torch.as_tensor((xi**2 - 1.0) * w, dtype=torch.float64)
    norm2 = ens.niw.detach().double().pow(2).sum(1).clamp_min(1e-300)
    return lr * (f @ weights) / norm2


@dataclass
class DecayMeasurement:
    """NIW norms and the two predicted rates per record (rows) and replica (columns): ``rate_local`` =
    η σε² Ŵᵀ⟨H⟩Ŵ (eq. 2 corrected, local Hessian), ``rate_smoothed`` = eq. (D1); ``diverged_step``
    (per replica, −1 if never): the step at which it diverged (:func:`measure_niw_decay`)."""

    steps: np.ndarray
    niw_norm: np.ndarray
    rate_local: np.ndarray
    rate_smoothed: np.ndarray
    diverged_step: np.ndarray

    def log_decay(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per replica: measured −ln(‖W_NI(T)‖/‖W_NI(0)‖) and the two rates integrated over the steps
        (trapezoid between records); NaN for a replica that diverged."""
        t = self.steps.astype(np.float64)
        bad = np.where(self.diverged_step >= 0, np.nan, 0.0)
        return (
            -np.log(self.niw_norm[-1] / self.niw_norm[0]) + bad,
            np.trapezoid(self.rate_local, t, axis=0) + bad,
            np.trapezoid(self.rate_smoothed, t, axis=0) + bad,
        )


def measure_niw_decay(
    ens: MLPEnsemble,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: str,
    lr: float,
    batch_size: int,
    steps: int,
    records: int = 40,
    probe_samples: int = 1000,
    seed: int = 0,
    nodes: int = 24,
) -> DecayMeasurement:
    """Train the ensemble in place by plain SGD for ``steps`` steps (each replica its own sample order,
    without replacement, and fresh unit noise ξ per sample and step) and record ‖W_NI‖ and both
    predicted rates on the first ``probe_samples`` samples at ``records`` evenly spaced steps (and 0).
    Fresh ξ per step is what the "epoch" NIN mode gives when each sample is seen once per epoch. A
    replica whose weights become non-finite or exceed 10⁸ × its largest initial weight (the divergence rule,
    :mod:`noiseprobe.core.divergence`) is marked diverged at that step (its integrals are NaN); training
    stops when every replica has."""
    check_choice("loss", loss, LOSSES)
    check_real("lr", lr, lo=0.0, lo_open=True)
    n = x.shape[0]
    check_int("batch_size", batch_size, lo=1, hi=n)
    check_int("steps", steps, lo=1)
    check_int("records", records, lo=1)
    check_int("probe_samples", probe_samples, lo=1)
    gen = torch.Generator().manual_seed(check_int("seed", seed, lo=0))
    x = x.to(ens.niw.dtype)
    xp, yp = x[:probe_samples], y[:probe_samples]
    every = max(1, steps // records)
    rec: dict[str, list[np.ndarray]] = {"steps": [], "niw_norm": [], "rate_local": [], "rate_smoothed": []}

    @torch.no_grad()
    def record(t: int) -> None:
        rec["steps"].append(np.asarray(t))
        rec["niw_norm"].append(ens.niw.detach().double().norm(dim=1).numpy())
        rec["rate_local"].append((lr * ens.sigma.double() ** 2 * ens.niw_curvature(xp, loss).double()).numpy())
        rec["rate_smoothed"].append(smoothed_niw_rate(ens, xp, yp, loss=loss, lr=lr, nodes=nodes).numpy())

    params = ens.parameters()
    for p in params:
        p.requires_grad_(True)
    diverged = np.full(ens.k, -1, dtype=np.int64)
    with torch.no_grad():
        start = torch.stack([p.detach().flatten(1).abs().amax(1).double() for p in params]).amax(0)
    limit = torch.from_numpy(divergence.bound(start.numpy()))[:, None]
    per_epoch = n // batch_size
    perm = torch.empty(0, dtype=torch.long)
    record(0)
    for t in range(1, steps + 1):
        s = (t - 1) % per_epoch
        if s == 0:
            perm = torch.rand(ens.k, n, generator=gen).argsort(1)
        idx = perm[:, s * batch_size : (s + 1) * batch_size]
        xi = torch.randn(ens.k, batch_size, generator=gen, dtype=torch.float64).to(x.dtype)
        logits, _ = ens.forward(x[idx], xi)
        grads = torch.autograd.grad(batch_losses(logits, y[idx], loss).mean(1).sum(), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)
            ok = torch.stack([(p.flatten(1).abs().double() <= limit).all(1) for p in params])  # False on NaN
            bad = (~ok.all(0)).cpu().numpy()
        diverged[bad & (diverged < 0)] = t
        if t % every == 0 or t == steps:
            record(t)
        if (diverged >= 0).all():
            break
    for p in params:
        p.requires_grad_(False)
    return DecayMeasurement(**{k: np.asarray(v) for k, v in rec.items()}, diverged_step=diverged)


__all__ = ["DecayMeasurement", "measure_niw_decay", "shifted_loss", "smoothed_niw_rate"]
