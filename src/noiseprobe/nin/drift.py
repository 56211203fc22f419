"""The NIW decay rate of eq. (2) without its second-order truncation, for a batched MLP ensemble.

Eq. (2) (corrected, reference §4 item 1) predicts d ln‖W_NI‖/dt = −η σε² Ŵᵀ⟨H⟩Ŵ per SGD step, with ⟨H⟩
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

import numpy as np
import torch

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_choice, check_int, check_real
from noiseprobe.nin.ensemble import LOSSES, MLPEnsemble, batch_losses


def shifted_loss(ens: MLPEnsemble, x: torch.Tensor, y: torch.Tensor, *, loss: str,
                 xi: np.ndarray) -> torch.Tensor:
    """F(σε ξ) per replica and node, (K, len(xi)): the mean clean loss over ``x`` (n, d_in) with every
    pre-activation at z^(ℓ_NI) shifted by σε ξ W_NI (the same ξ for every sample)."""
    check_choice("loss", loss, LOSSES)
    xi = np.asarray(xi, dtype=np.float64)
    if xi.ndim != 1 or not np.isfinite(xi).all():
        raise ConfigError("xi", xi.tolist(), "a 1-d array of finite unit noise values")
    out = torch.empty(ens.k, xi.size, dtype=torch.float64)
    with torch.no_grad():
        for j, v in enumerate(xi):
            logits, _ = ens.forward(x, torch.full((ens.k, x.shape[0]), float(v), dtype=ens.niw.dtype))
            out[:, j] = batch_losses(logits, y, loss).double().mean(1)
    return out


def smoothed_niw_rate(ens: MLPEnsemble, x: torch.Tensor, y: torch.Tensor, *, loss: str, lr: float,
                      nodes: int = 24) -> torch.Tensor:
    """Per-step decay rate of ln‖W_NI‖ per replica (K,), eq. (D1) of the module docstring, by
    ``nodes``-point Gauss-Hermite quadrature over ξ on the samples ``x``, ``y``."""
    check_real("lr", lr, lo=0.0, lo_open=True)
    check_int("nodes", nodes, lo=4, hi=200)
    xi, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    f = shifted_loss(ens, x, y, loss=loss, xi=xi)
    weights = torch.as_tensor((xi**2 - 1.0) * w, dtype=torch.float64)
    norm2 = ens.niw.detach().double().pow(2).sum(1).clamp_min(1e-300)
    return lr * (f @ weights) / norm2


__all__ = ["shifted_loss", "smoothed_niw_rate"]
