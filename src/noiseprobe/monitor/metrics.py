"""The monitor's metrics: each a function of a measurement :class:`Context` returning named values.

Quantities compute, instruments draw (as in Cockpit): a metric reads what it needs from the context,
which computes each shared ingredient (per-sample gradients, their Gram matrix, the noise scale) once per
measurement. N is the number of samples in the measured batch, S the batch size of the update
(``effective_batch_size``, default N), g_i the gradient of sample i's loss, ḡ their mean.

========================  ===========================================================================
``tr_sigma`` (+ ``_se``)  unbiased tr Σ = Σ_i |g_i − ḡ|²/(N − 1), jackknife SE (:mod:`.gns`)
``g_sq`` (+ ``_se``)      unbiased |G|² = |ḡ|² − tr Σ/N (McCandlish et al. 2018, App. A)
``b_simple``              tr Σ / |G|² with ``b_simple_lo``/``b_simple_hi``: 95 % Fieller–jackknife
``temperature``           Σ_g lr_g tr Σ_g / S over the optimizer's parameter groups g (= lr·tr C for
                          sampling with replacement, C = Σ/S; paper 002, eq. 2)
``top_k_c``               ``c_eig_1`` … ``c_eig_k``: the k largest eigenvalues of C = M/S,
                          M = (1/N) Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ (paper 002, Prop. 1)
========================  ===========================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.monitor.gns import NoiseScale, noise_scale
from noiseprobe.probes.persample import PerSampleGradients, per_sample_gradients


class _Forwarded(nn.Module):
    """``model`` called through the user's ``forward(model, inputs)``."""

    def __init__(self, model: nn.Module, forward: Callable[[nn.Module, Any], Tensor]) -> None:
        super().__init__()
        self.inner, self.fn = model, forward

    def forward(self, inputs: Any) -> Tensor:
        return self.fn(self.inner, inputs)


class Context:
    """One measurement: the batch, the model and optimizer, and the ingredients metrics share."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[Any, Any], Tensor], inputs: Any, targets: Any,
                 forward: Callable[[nn.Module, Any], Tensor] | None, optimizer: torch.optim.Optimizer | None,
                 batch_size: int | None, top_k: int, state: dict[str, Any]) -> None:
        self.model, self.loss_fn, self.inputs, self.targets = model, loss_fn, inputs, targets
        self.forward, self.optimizer, self.top_k, self.state = forward, optimizer, top_k, state
        self._batch_size = batch_size

    @cached_property
    def grads(self) -> PerSampleGradients:
        net = self.model if self.forward is None else _Forwarded(self.model, self.forward)
        return per_sample_gradients(net, self.loss_fn, self.inputs, self.targets)

    @property
    def n(self) -> int:
        return self.grads.n

    @property
    def batch_size(self) -> int:
        return self._batch_size if self._batch_size is not None else self.n

    @cached_property
    def gram(self) -> np.ndarray:
        return self.grads.gram().double().cpu().numpy()

    @cached_property
    def noise(self) -> NoiseScale:
        if self.n < 3:
            raise ConfigError("batch", f"{self.n} samples", "at least 3 samples to measure gradient noise")
        return noise_scale(self.gram)

    @cached_property
    def sigma_diagonal(self) -> Tensor:
        """diag Σ per parameter, unbiased: (N/(N−1)) [(1/N) Σ_i g_i² − ḡ²] (flat, trainable order)."""
        n, mean = self.n, self.grads.mean()
        return (self.grads.sq_sum() / n - mean ** 2) * (n / (n - 1))

    def group_slices(self) -> list[tuple[float, list[tuple[int, int]]]]:
        """(lr, flat index ranges) per optimizer parameter group, in the flat trainable order."""
        if self.optimizer is None:
            return []
        params = [p for p in self.model.parameters() if p.requires_grad]
        start, pos = 0, {}
        for p in params:
            pos[id(p)] = (start, start + p.numel())
            start += p.numel()
        out = []
        for group in self.optimizer.param_groups:
            lr = float(group["lr"])
            out.append((lr, [pos[id(p)] for p in group["params"] if id(p) in pos]))
        return out


def _tr_sigma(ctx: Context) -> dict[str, float]:
    return {"tr_sigma": ctx.noise.tr_sigma, "tr_sigma_se": ctx.noise.tr_sigma_se}


def _g_sq(ctx: Context) -> dict[str, float]:
    return {"g_sq": ctx.noise.g_sq, "g_sq_se": ctx.noise.g_sq_se}


def _b_simple(ctx: Context) -> dict[str, float]:
    ns = ctx.noise
    return {"b_simple": ns.b_simple, "b_simple_lo": ns.b_simple_lo, "b_simple_hi": ns.b_simple_hi}


def _temperature(ctx: Context) -> dict[str, float]:
    groups = ctx.group_slices()
    if not groups:
        return {"temperature": float("nan")}
    diag = ctx.sigma_diagonal
    total = sum(lr * float(sum(diag[a:b].sum() for a, b in ranges)) for lr, ranges in groups)
    return {"temperature": total / ctx.batch_size}


def _top_k_c(ctx: Context) -> dict[str, float]:
    n = ctx.n
    k = min(ctx.top_k, n - 1)
    centred = ctx.gram - ctx.gram.mean(0, keepdims=True)
    centred = (centred - centred.mean(1, keepdims=True)) / n
    lam = np.linalg.eigvalsh((centred + centred.T) / 2)[::-1][:k] / ctx.batch_size
    return {f"c_eig_{i + 1}": float(v) for i, v in enumerate(lam)}


#: name -> metric function (a context in, named values out)
METRICS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "tr_sigma": _tr_sigma,
    "g_sq": _g_sq,
    "b_simple": _b_simple,
    "temperature": _temperature,
    "top_k_c": _top_k_c,
}
DEFAULT: tuple[str, ...] = ("tr_sigma", "g_sq", "b_simple", "temperature", "top_k_c")


def resolve_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """"default", "all", or a list of metric names, checked."""
    if metrics == "default":
        return DEFAULT
    if metrics == "all":
        return tuple(METRICS)
    if isinstance(metrics, str) or not all(isinstance(m, str) for m in metrics):
        raise ConfigError("metrics", metrics, '"default", "all" or a list of names from ' + ", ".join(METRICS))
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise ConfigError("metrics", metrics, "names from " + ", ".join(METRICS))
    return tuple(dict.fromkeys(metrics))
