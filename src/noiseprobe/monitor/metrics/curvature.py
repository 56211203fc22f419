"""Curvature of the batch loss: sharpness and the edge of stability (Cohen et al. 2021, 2022), the top-k
Hessian eigenvalues and their overlap with the noise, and McCandlish et al.'s B_noise."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from noiseprobe.monitor.context import COLD_MIN_DIM, Context, Refused, top_eigen
from noiseprobe.monitor.metric import Metric, register_metric
from noiseprobe.monitor.microbatch import batch_samples
from noiseprobe.monitor.stability import step_scale
from noiseprobe.probes.eigensolvers import Eigenpairs
from noiseprobe.probes.operators import ParamOperator

#: Rademacher probes for tr(HΣ) (one batched block of Hessian-vector products)
B_NOISE_PROBES = 16
#: the running mean and standard error of ``batch_sharpness`` are over the last this many measurements
BATCH_SHARPNESS_WINDOW = 20


class _Scaled(ParamOperator):
    """D^½ A D^½ for a diagonal scale d = D^½ (flat), e.g. per-parameter learning rates."""

    def __init__(self, a: ParamOperator, d: Tensor) -> None:
        super().__init__(a.names, a.shapes, a.device, a.torch_dtype)
        self.a, self.d = a, d.to(device=a.device, dtype=a.torch_dtype).reshape(-1, 1)

    def _mm(self, v: Tensor) -> Tensor:
        return self.d * self.a.mv(self.d * v)


@register_metric
class Sharpness(Metric):
    """``sharpness``: λ_max of the Hessian H of the batch's mean loss by Lanczos, warm-started from this
    metric's previous measurement (Cohen et al. 2021); with Adam the preconditioned sharpness λ_max(P⁻¹H)
    (Cohen et al. 2022); with per-group learning rates λ_max(Λ^½HΛ^½)/lr₀ (lr₀: the first group's).
    ``eos_ratio``: curvature over the optimizer's stability threshold, 1 at the edge of stability
    (:mod:`noiseprobe.monitor.stability`); ``sharpness_hvps``: the products this call used."""

    name = "sharpness"

    def __init__(self) -> None:
        self._warm: Eigenpairs | None = None

    def param_vectors(self, top_k: int) -> int:
        """Lanczos: 2·(k + COLD_MIN_DIM + 7) Krylov and product vectors."""
        return 2 * (1 + COLD_MIN_DIM + 7)

    def measure(self, ctx: Context) -> dict[str, float]:
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        scaled = None if ctx.optimizer is None else step_scale(ctx.optimizer, params)
        if scaled is None:  # no optimizer (or its state is not there yet): the plain Hessian
            pairs = self._warm = top_eigen(ctx.hessian, 1, self._warm)
            return {
                "sharpness": float(pairs.eigenvalues[0]),
                "eos_ratio": float("nan"),
                "sharpness_hvps": float(pairs.matvecs),
            }
        assert ctx.optimizer is not None
        s, rule = scaled
        pairs = self._warm = top_eigen(_Scaled(ctx.hessian, s.sqrt()), 1, self._warm)
        ratio = float(pairs.eigenvalues[0])
        group = ctx.optimizer.param_groups[0]
        lr0 = float(group["lr"])
        if rule == "adam":
            b1 = group["betas"][0]
            threshold = (2 + 2 * b1) / ((1 - b1) * lr0)
        else:
            mu = float(group.get("momentum", 0.0))
            threshold = (2 + 2 * mu) / (((1 + 2 * mu) if rule == "sgd-nesterov" else 1.0) * lr0)
        return {"sharpness": ratio * threshold, "eos_ratio": ratio, "sharpness_hvps": float(pairs.matvecs)}


def _update_batch(ctx: Context) -> None:
    """Refuse (a status) a measured batch that is not the update's: a gradient-accumulation micro-batch
    (``effective_batch_size`` ≠ the samples measured) or one data-parallel rank's share."""
    if ctx.group is not None:
        raise Refused("per-rank batch", "under data parallelism the measured batch is one rank's, not the update's")
    if ctx._batch_size is None:
        return
    n = batch_samples(ctx.inputs)
    if ctx._batch_size != n:
        raise Refused("accumulation micro-batch", f"{n} samples measured, effective batch size {ctx._batch_size}")


def _directional(ctx: Context, direction: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(g_B, v = direction(g_B), H_B v) on the measured batch, flat, float64: one Hessian-vector product."""
    h = ctx.hessian
    with torch.enable_grad():
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(h.loss, h.params, retain_graph=True)]).detach()
    v = direction(g)
    return g.double(), v.double(), h.mv(v[:, None].to(h.torch_dtype))[:, 0].double()


@register_metric
class BatchSharpness(Metric):
    """``batch_sharpness`` = g_Bᵀ H_B g_B / |g_B|², the curvature of the measured batch's mean loss along its
    own gradient (one Hessian-vector product; Andreyev & Beneventano, arXiv 2412.20553, whose batch
    sharpness is its expectation over batches), with ``batch_sharpness_mean`` and ``batch_sharpness_se``:
    the mean of this metric's last ``window`` values and its standard error std/√n (NaN below 2 values).
    Refused (status "accumulation micro-batch" or "per-rank batch") when the measured batch is not the
    update's (gradient accumulation: ``effective_batch_size`` ≠ the samples measured; DDP)."""

    name = "batch_sharpness"

    def __init__(self, window: int = BATCH_SHARPNESS_WINDOW) -> None:
        self.values: deque[float] = deque(maxlen=window)

    def param_vectors(self, top_k: int) -> int:
        """g_B, its scaled copy and one Hessian-vector product."""
        return 3

    def measure(self, ctx: Context) -> dict[str, float]:
        _update_batch(ctx)
        g, v, hv = _directional(ctx, lambda g: g)
        gg = float(g @ g)
        value = float(v @ hv) / gg if gg > 0 else math.nan
        if math.isfinite(value):
            self.values.append(value)
        w = np.asarray(self.values, dtype=float)
        return {
            "batch_sharpness": value,
            "batch_sharpness_mean": float(w.mean()) if w.size >= 2 else math.nan,
            "batch_sharpness_se": float(w.std(ddof=1) / w.size**0.5) if w.size >= 2 else math.nan,
        }


@register_metric
class EoSSRatio(Metric):
    """``eoss_ratio`` = (s⊙g_B)ᵀ H_B (s⊙g_B) / (g_Bᵀ(s⊙g_B)), s the per-parameter step scale of ``eos_ratio``
    (:func:`~noiseprobe.monitor.stability.step_scale`): η·batch_sharpness/2 for SGD without momentum, 1 at
    the edge of stochastic stability (Andreyev & Beneventano); with momentum or Adam the same quotient along
    the preconditioned step, an extension outside the paper's claim. NaN without an optimizer or before
    Adam's first step; refused like ``batch_sharpness``."""

    name = "eoss_ratio"

    def param_vectors(self, top_k: int) -> int:
        """g_B, its scaled copy and one Hessian-vector product."""
        return 3

    def measure(self, ctx: Context) -> dict[str, float]:
        _update_batch(ctx)
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        scaled = None if ctx.optimizer is None else step_scale(ctx.optimizer, params)
        if scaled is None:
            return {"eoss_ratio": math.nan}
        s = scaled[0].detach()
        g, v, hv = _directional(ctx, lambda g: s.to(g.dtype) * g)
        den = float(g @ v)
        return {"eoss_ratio": float(v @ hv) / den if den > 0 else math.nan}


@register_metric
class TopKH(Metric):
    """``h_eig_1`` … ``h_eig_k`` (Lanczos, warm-started; shared in the measurement with ``fluctuation``)
    and ``overlap_ch``: the overlap ‖U_Cᵀ U_H‖_F²/k of the top-k eigenspaces of C and H (1: equal)."""

    name = "top_k_h"
    per_sample_products = True

    def __init__(self) -> None:
        self._warm: Eigenpairs | None = None

    def param_vectors(self, top_k: int) -> int:
        """Lanczos: 2·(k + COLD_MIN_DIM + 7) Krylov and product vectors."""
        return 2 * (top_k + COLD_MIN_DIM + 7)

    def measure(self, ctx: Context) -> dict[str, float]:
        k = min(ctx.top_k, ctx.hessian.num_params)
        pairs = self._warm = ctx.hessian_top(k, self._warm)
        out = {f"h_eig_{i + 1}": float(v) for i, v in enumerate(pairs.eigenvalues)}
        kc = min(k, ctx.n - 1)
        centred = torch.as_tensor(ctx.gram)
        centred = centred - centred.mean(0, keepdim=True)
        centred = centred - centred.mean(1, keepdim=True)
        lam, u = torch.linalg.eigh(centred)
        lam, u = lam.flip(0)[:kc], u.flip(1)[:, :kc]
        keep = lam > ctx.n * torch.finfo(lam.dtype).eps * float(lam[0].clamp_min(0))
        coeffs = (u * torch.where(keep, lam.clamp_min(1e-300).rsqrt(), torch.zeros_like(lam))).to(ctx.grads.dtype)
        proj = coeffs.T @ ctx.grads.jvp(pairs.eigenvectors[:, :kc].to(ctx.grads.dtype))  # U_Cᵀ U_H, (kc, kc)
        out["overlap_ch"] = float((proj.double() ** 2).sum()) / kc
        return out


@register_metric
class BNoise(Metric):
    """``b_noise`` = tr(HΣ)/(GᵀHG) (McCandlish et al. eq. 2.6) with the unbiased denominator
    ``g_h_g`` = ḡᵀHḡ − tr(HΣ)/N; ``tr_h_sigma`` = tr(J_c H J_cᵀ)/(N−1) by ``B_NOISE_PROBES`` Hutchinson
    probes J_cᵀr (r Rademacher in sample space, a fresh seed per call; ``tr_h_sigma_se`` from the probes)."""

    name = "b_noise"
    per_sample_products = True

    def __init__(self) -> None:
        self.calls = 0

    def param_vectors(self, top_k: int) -> int:
        """The probe block J_cᵀr and its Hessian products, 2·B_NOISE_PROBES, and ḡ, Hḡ."""
        return 2 * B_NOISE_PROBES + 2

    def measure(self, ctx: Context) -> dict[str, float]:
        n, grads = ctx.n, ctx.grads
        gen = torch.Generator().manual_seed(self.calls)
        self.calls += 1
        r = (torch.randint(0, 2, (n, B_NOISE_PROBES), generator=gen) * 2 - 1).to(grads.dtype)
        r = r.to(ctx.hessian.device)
        u = grads.vjp(r - r.mean(0, keepdim=True))  # J_cᵀ r, (P, m)
        hu = ctx.hessian.mv(u)
        samples = (u * hu).sum(0).double() / (n - 1)
        tr_h_sigma, se = float(samples.mean()), float(samples.std() / B_NOISE_PROBES**0.5)
        gbar = grads.mean()
        g_h_g = float(gbar @ ctx.hessian.mv(gbar)) - tr_h_sigma / n
        return {
            "b_noise": tr_h_sigma / g_h_g if g_h_g > 0 else float("nan"),
            "tr_h_sigma": tr_h_sigma,
            "tr_h_sigma_se": se,
            "g_h_g": g_h_g,
        }
