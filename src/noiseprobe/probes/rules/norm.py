"""Affine parameters of normalisation layers: y = x̂ ∘ γ + β, with x̂ the normalised input.

∇_γ ℓ_i = Σ g_i ∘ x̂_i and ∇_β ℓ_i = Σ g_i, summed over every axis that shares γ (positions, tokens);
x̂ is recomputed from the stored input (no grad). Stored explicitly: N × (|γ| + |β|) numbers.

| module | x̂ | shared over |
|---|---|---|
| LayerNorm / RMSNorm | over the trailing ``normalized_shape`` axes | leading non-batch axes |
| GroupNorm | over (channels of a group) × positions | positions |
| BatchNorm1d/2d/3d, eval mode | (x − running mean)/√(running var + eps) | positions |
| Hugging Face RMS norms (``HF_RMS_NORMS``) | x/√(mean(x²) + eps) over the last axis | leading non-batch axes |

BatchNorm in training mode (or without running statistics) normalises with the batch's statistics,
so samples interact and per-sample gradients are undefined: refused with
:class:`~noiseprobe.core.errors.NoPerSampleGradients` (the monitor then uses its micro-batch estimator).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from noiseprobe.core.errors import NoPerSampleGradients
from noiseprobe.probes.factors import RowsFactor
from noiseprobe.probes.rules.base import (
    Call,
    Named,
    Rule,
    accumulation_dtype,
    batch_leading,
    register_rule,
)


def _affine_rows(params: Named, xhat: Tensor, g: Tensor, channels_last: bool, size: int) -> RowsFactor:
    """Rows [Σ g∘x̂ | Σ g] with the affine axis last (``channels_last``, size ``size``) or at axis 1."""
    n = g.shape[0]
    if channels_last:
        xhat, g, axis = xhat.reshape(n, -1, size), g.reshape(n, -1, size), 1
    else:  # (N, C, positions) as laid out: no channels-last copy of x̂ and g
        xhat, g, axis = xhat.reshape(n, size, -1), g.reshape(n, size, -1), 2
    rows = [(g * xhat).sum(axis) if name == "weight" else g.sum(axis) for name, _ in params]
    return RowsFactor(torch.cat(rows, 1))


def _inputs(call: Call, n: int) -> tuple[Tensor, Tensor]:
    g = call.grads[0]
    dtype = accumulation_dtype(g)
    return batch_leading(call, call.input, n).to(dtype), g.to(dtype)


@register_rule(nn.LayerNorm)
class LayerNormRule(Rule[nn.LayerNorm]):
    """nn.LayerNorm: x̂ = (x − mean)/√(var + eps) over ``normalized_shape``."""

    def factor(self, module: nn.LayerNorm, call: Call, params: Named, n: int) -> RowsFactor:
        x, g = _inputs(call, n)
        xhat = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
        return _affine_rows(params, xhat, g, True, module.weight.numel())


@register_rule(nn.RMSNorm)
class RMSNormRule(Rule[nn.RMSNorm]):
    """nn.RMSNorm: x̂ = x/√(mean(x²) + eps) over ``normalized_shape``."""

    def factor(self, module: nn.RMSNorm, call: Call, params: Named, n: int) -> RowsFactor:
        x, g = _inputs(call, n)
        xhat = F.rms_norm(x, module.normalized_shape, None, module.eps)
        return _affine_rows(params, xhat, g, True, module.weight.numel())


@register_rule(nn.GroupNorm)
class GroupNormRule(Rule[nn.GroupNorm]):
    """nn.GroupNorm on (N, C, *): x̂ normalised per sample and group."""

    def factor(self, module: nn.GroupNorm, call: Call, params: Named, n: int) -> RowsFactor:
        x, g = _inputs(call, n)
        xhat = F.group_norm(x, module.num_groups, None, None, module.eps)
        return _affine_rows(params, xhat, g, False, module.num_channels)


@register_rule(_BatchNorm)
class BatchNormRule(Rule[_BatchNorm]):
    """BatchNorm1d/2d/3d in eval mode: x̂ = (x − running_mean)/√(running_var + eps) per channel (axis 1)."""

    def validate(self, name: str, module: _BatchNorm) -> None:
        if module.training or module.running_mean is None:
            state = "in training mode" if module.training else "without running statistics"
            raise NoPerSampleGradients(
                name,
                f"{type(module).__name__} {state}",
                "eval mode (model.eval(): running statistics, samples independent) or "
                "nn.GroupNorm instead of BatchNorm (batch statistics make samples interact)",
            )

    def factor(self, module: _BatchNorm, call: Call, params: Named, n: int) -> RowsFactor:
        x, g = _inputs(call, n)
        mean, var = module.running_mean, module.running_var
        assert mean is not None and var is not None  # validate() refuses modules without running statistics
        shape = (1, -1) + (1,) * (x.dim() - 2)
        xhat = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var.to(x.dtype).view(shape) + module.eps)
        return _affine_rows(params, xhat, g, False, module.num_features)


#: transformers' RMS-norm classes (recognised by name, without importing transformers): y = w ∘ x̂ (Llama,
#: Mistral, Mixtral, Qwen2/3, Phi-3, T5) or y = (1 + w) ∘ x̂ (Gemma 1–3): the same ∇_w ℓ_i = Σ g_i ∘ x̂_i
HF_RMS_NORMS = frozenset(
    {
        "LlamaRMSNorm",
        "MistralRMSNorm",
        "MixtralRMSNorm",
        "Qwen2RMSNorm",
        "Qwen3RMSNorm",
        "Phi3RMSNorm",
        "T5LayerNorm",
        "GemmaRMSNorm",
        "Gemma2RMSNorm",
        "Gemma3RMSNorm",
    }
)


def is_hf_rms_norm(module: nn.Module) -> bool:
    """A transformers RMS norm of :data:`HF_RMS_NORMS`: its class name, defined in ``transformers``, with its
    own ``forward``, one 1-D ``weight`` and an ``eps``/``variance_epsilon``."""
    cls = type(module)
    w = getattr(module, "weight", None)
    return (
        cls.__name__ in HF_RMS_NORMS
        and cls.__module__.startswith("transformers.")
        and "forward" in cls.__dict__
        and isinstance(w, Tensor)
        and w.dim() == 1
        and [n for n, _ in module.named_parameters(recurse=False)] == ["weight"]
        and isinstance(getattr(module, "variance_epsilon", getattr(module, "eps", None)), float)
    )


class HFRMSNormRule(Rule[nn.Module]):
    """transformers' RMS norms (:func:`is_hf_rms_norm`): x̂ = x/√(mean(x²) + eps) over the last axis, rounded
    as each family's forward rounds it (they normalise in float32 whatever the model's dtype), so that the
    per-sample gradients sum to autograd's gradient of the model as it runs."""

    def factor(self, module: nn.Module, call: Call, params: Named, n: int) -> RowsFactor:
        x = batch_leading(call, call.input, n)
        g = call.grads[0]
        dtype = accumulation_dtype(g)
        x32 = x.to(torch.float32)
        eps = float(getattr(module, "variance_epsilon", getattr(module, "eps", 0.0)))
        if type(module).__name__ == "T5LayerNorm":  # variance in float32, scaling in the input's dtype
            xhat = x * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        else:  # Llama family: x̂ in float32, cast to the input's dtype; Gemma: x̂ in float32
            xhat = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
            if not type(module).__name__.startswith("Gemma"):
                xhat = xhat.to(x.dtype)
        return _affine_rows(params, xhat.to(dtype), g.to(dtype), True, x.shape[-1])
