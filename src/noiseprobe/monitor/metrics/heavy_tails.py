"""The tail index of the gradient noise (paper 002 §5): heavy-tailed or Gaussian?"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from noiseprobe.monitor.context import Context
from noiseprobe.monitor.metric import Metric, register_metric

#: noise directions whose per-sample projections feed the tail index, and the pool it is fitted on
TAIL_DIRECTIONS, TAIL_POOL, TAIL_MIN = 3, 4000, 1000


@register_metric
class TailIndex(Metric):
    """Tail index of the per-sample gradient projections (g_i − ḡ)·v on the top ``TAIL_DIRECTIONS``
    eigenvectors v of C *from the previous measurement's batch* (so directions and samples are
    independent), each standardised, pooled over recent measurements (the last ``TAIL_POOL`` values; NaN
    until ≥ ``TAIL_MIN``): ``tail_hill`` (top 10 %) and ``tail_mle`` (Clauset et al. 2009) with SEs,
    ``tail_normal_p`` (D'Agostino–Pearson's test of Gaussianity) and ``tail_samples``."""

    name = "tail_index"
    per_sample_products = True

    def __init__(self) -> None:
        self.dirs: Tensor | None = None
        self.pool: list[np.ndarray] = []

    def measure(self, ctx: Context) -> dict[str, float]:
        from scipy.stats import normaltest

        from noiseprobe.core.powerlaw import hill, powerlaw_mle

        grads, n = ctx.grads, ctx.grads.n
        pool = self.pool
        if self.dirs is not None and self.dirs.shape[0] == grads.num_params:
            proj = grads.jvp(self.dirs.to(grads.dtype)).double().cpu().numpy()  # (n, k) = g_i·v
            proj = proj - proj.mean(0)
            sd = proj.std(0, ddof=1)
            pool.append((proj[:, sd > 0] / sd[sd > 0]).ravel())
            while sum(len(p) for p in pool) - len(pool[0]) >= TAIL_POOL:
                pool.pop(0)
        # this batch's top noise directions, for the next measurement
        centred = ctx.gram - ctx.gram.mean(0, keepdims=True)
        centred = centred - centred.mean(1, keepdims=True)
        lam, u = np.linalg.eigh((centred + centred.T) / 2)
        k = min(TAIL_DIRECTIONS, n - 1)
        lam, u = lam[::-1][:k], u[:, ::-1][:, :k]
        keep = lam > n * np.finfo(float).eps * max(lam[0], 0.0)
        coeffs = torch.as_tensor(u[:, keep] / np.sqrt(lam[keep]), dtype=grads.dtype, device=ctx.device)
        self.dirs = grads.vjp(coeffs).detach() if keep.any() else None
        x = np.concatenate(pool) if pool else np.zeros(0)
        out = {
            "tail_hill": math.nan,
            "tail_hill_se": math.nan,
            "tail_mle": math.nan,
            "tail_mle_se": math.nan,
            "tail_normal_p": math.nan,
            "tail_samples": float(len(x)),
        }
        if len(x) >= TAIL_MIN:
            a = np.abs(x[x != 0])
            h = hill(a, max(10, len(a) // 10))
            m = powerlaw_mle(a)
            out.update(
                tail_hill=h.beta,
                tail_hill_se=h.se,
                tail_mle=m.beta,
                tail_mle_se=m.se,
                tail_normal_p=float(normaltest(x).pvalue),
            )
        return out
