"""Layer rules: one small class per kind of module, giving its parameters' per-sample gradients in
factored form (:mod:`~noiseprobe.probes.rules.base` says what a rule is and how to add one; the list
with costs is docs/per_sample_layers.md).

:func:`rule_for` picks the rule of a module: the first entry of ``RULES`` whose type matches, then
transformers' ``Conv1D`` (recognised by name, never imported), else the vmap fallback.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from noiseprobe.probes.rules.base import Call, Rule
from noiseprobe.probes.rules.conv import ConvRule
from noiseprobe.probes.rules.fallback import (
    MultiheadAttentionRule,
    VmapRule,
    tensor_leaves,
)
from noiseprobe.probes.rules.linear import (
    EmbeddingRule,
    LinearRule,
    TransformersConv1DRule,
    is_transformers_conv1d,
)
from noiseprobe.probes.rules.norm import (
    BatchNormRule,
    GroupNormRule,
    LayerNormRule,
    RMSNormRule,
)
from noiseprobe.probes.rules.recurrent import RecurrentRule

RULES: list[tuple[tuple[type[nn.Module], ...], Rule[Any]]] = [
    ((nn.Linear,), LinearRule()),
    ((nn.Embedding,), EmbeddingRule()),
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), ConvRule()),
    ((nn.LayerNorm,), LayerNormRule()),
    ((nn.RMSNorm,), RMSNormRule()),
    ((nn.GroupNorm,), GroupNormRule()),
    ((nn.modules.batchnorm._BatchNorm,), BatchNormRule()),
    ((nn.MultiheadAttention,), MultiheadAttentionRule()),
    ((nn.LSTM, nn.GRU, nn.RNN), RecurrentRule()),
]


def rule_for(module: nn.Module) -> Rule[Any] | None:
    """The rule of ``module``, or None when it has no rule (the engine then uses :class:`VmapRule`)."""
    for types, rule in RULES:
        for t in types:  # a subclass keeps the rule unless it overrides forward
            if isinstance(module, t) and type(module).forward is t.forward:
                return rule
    if is_transformers_conv1d(module):
        return TransformersConv1DRule()
    return None


__all__ = ["RULES", "Call", "Rule", "VmapRule", "rule_for", "tensor_leaves"]
