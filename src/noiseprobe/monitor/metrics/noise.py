"""The gradient-noise scale (McCandlish et al. 2018) and the SGD temperature (paper 002).

Each value comes from the context's one noise-scale computation (:attr:`Context.noise`,
:mod:`noiseprobe.monitor.gns`) or its per-sample Gram matrix; N samples measured, S the update's batch size.
"""

from __future__ import annotations

from collections import deque

import torch.distributed as dist
from torch import nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_int
from noiseprobe.monitor import ddp
from noiseprobe.monitor.context import Context
from noiseprobe.monitor.gns import NoiseScale, pooled_b_simple, two_batch
from noiseprobe.monitor.metric import Metric, register_metric


@register_metric
class TrSigma(Metric):
    """``tr_sigma`` (+ ``tr_sigma_se``): unbiased tr Σ = Σ_i |g_i − ḡ|²/(N − 1), jackknife SE."""

    name = "tr_sigma"
    gradients_only = True

    def measure(self, ctx: Context) -> dict[str, float]:
        return {"tr_sigma": ctx.noise.tr_sigma, "tr_sigma_se": ctx.noise.tr_sigma_se}


@register_metric
class GSq(Metric):
    """``g_sq`` (+ ``g_sq_se``): unbiased |G|² = |ḡ|² − tr Σ/N (McCandlish et al. 2018, App. A)."""

    name = "g_sq"
    gradients_only = True

    def measure(self, ctx: Context) -> dict[str, float]:
        return {"g_sq": ctx.noise.g_sq, "g_sq_se": ctx.noise.g_sq_se}


@register_metric
class BSimple(Metric):
    """``b_simple`` = tr Σ / |G|² (McCandlish et al. eq. 2.8) with ``b_simple_lo``/``b_simple_hi``, its
    95 % Fieller–jackknife interval."""

    name = "b_simple"
    gradients_only = True

    def measure(self, ctx: Context) -> dict[str, float]:
        ns = ctx.noise
        return {"b_simple": ns.b_simple, "b_simple_lo": ns.b_simple_lo, "b_simple_hi": ns.b_simple_hi}


@register_metric
class Temperature(Metric):
    """``temperature`` = Σ_g lr_g tr Σ_g / S over the optimizer's parameter groups g (= lr·tr C for sampling
    with replacement, C = Σ/S; paper 002, eq. 2); NaN without an optimizer."""

    name = "temperature"
    gradients_only = True

    def param_vectors(self, top_k: int) -> int:
        return 1  # the diagonal of Σ where the learning rate differs between parameter groups

    def measure(self, ctx: Context) -> dict[str, float]:
        groups = ctx.group_slices()
        if not groups:
            return {"temperature": float("nan")}
        n_trained = sum(b - a for _, ranges in groups for a, b in ranges)
        if len({lr for lr, _ in groups}) == 1 and n_trained == ctx.num_params:
            # one learning rate for every parameter: lr·tr Σ/S, no per-parameter diagonal needed
            return {"temperature": groups[0][0] * ctx.noise.tr_sigma / ctx.batch_size}
        diag = ctx.sigma_diagonal
        total = sum(lr * float(sum(diag[a:b].sum() for a, b in ranges)) for lr, ranges in groups)
        return {"temperature": total / ctx.batch_size}


@register_metric
class TopKC(Metric):
    """``c_eig_1`` … ``c_eig_k``: the k = min(top_k, N − 1) largest eigenvalues of C = M/S,
    M = (1/N) Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ (paper 002, Prop. 1), from the centred Gram matrix."""

    name = "top_k_c"
    gradients_only = True

    def measure(self, ctx: Context) -> dict[str, float]:
        return {f"c_eig_{i + 1}": float(v) for i, v in enumerate(ctx.c_eigenvalues())}


@register_metric
class BSimpleAvg(Metric):
    """``b_simple_avg`` (+ ``_lo``, ``_hi``): McCandlish et al.'s practical estimator over the last
    ``window`` measurements, Σ_k tr Σ̂_k / Σ_k |Ĝ_k|² (a ratio of averages), with Fieller's interval from
    the summed jackknife (co)variances (:func:`~noiseprobe.monitor.gns.pooled_b_simple`)."""

    name = "b_simple_avg"
    gradients_only = True

    def __init__(self, window: int = 10) -> None:
        self.window = check_int("window", window, lo=1)
        self._recent: deque[NoiseScale] = deque(maxlen=self.window)

    def measure(self, ctx: Context) -> dict[str, float]:
        self._recent.append(ctx.noise)
        b, lo, hi = pooled_b_simple(list(self._recent))
        return {"b_simple_avg": b, "b_simple_avg_lo": lo, "b_simple_avg_hi": hi}


@register_metric
class TwoBatch(Metric):
    """DDP only, ``TwoBatch(ddp_model)``: McCandlish et al.'s App. A estimator from the per-rank gradient
    norms |G_local|² and the all-reduced |G_global|² of the training step's own backward (a communication
    hook registered on ``ddp_model`` here; :mod:`noiseprobe.monitor.ddp`): ``two_batch_g_sq``,
    ``two_batch_tr_sigma``, ``two_batch_b_simple``."""

    name = "two_batch"
    in_all = False
    needs = "ddp_model"

    def __init__(self, ddp_model: nn.Module) -> None:
        group = ddp.process_group(ddp_model) if isinstance(ddp_model, nn.Module) else None
        if group is None:
            raise ConfigError(
                "ddp_model", type(ddp_model).__name__, "a DistributedDataParallel model in a world of >= 2 ranks"
            )
        self.group = group
        self.hook = ddp.GradNormHook(group)
        ddp_model.register_comm_hook(None, self.hook.allreduce)  # type: ignore[operator]  # typed nn.Module, a DistributedDataParallel here
        self._norms: tuple[float, float] | None = None

    def on_step(self, step: int, loss: object) -> None:
        self._norms = self.hook.take()  # this step's norms (every rank takes at every step)

    def measure(self, ctx: Context) -> dict[str, float]:
        small, big = self._norms if self._norms is not None else self.hook.take()
        self._norms = None
        world = dist.get_world_size(self.group)
        b_big = ctx.batch_size
        g_sq, tr = two_batch(small, big, b_big // world, b_big)
        return {
            "two_batch_g_sq": g_sq,
            "two_batch_tr_sigma": tr,
            "two_batch_b_simple": tr / g_sq if g_sq > 0 else float("nan"),
        }
