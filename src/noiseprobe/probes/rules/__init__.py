"""Layer rules: one small class per kind of module, giving its parameters' per-sample gradients in
factored form (:mod:`~noiseprobe.probes.rules.base` says what a rule is and how to add one; the list
with costs is docs/per_sample_layers.md).

Each rule is registered next to its definition with ``@register_rule(ModuleType)``; importing this
package imports the built-in rule files (a new file of rules is added to the imports below), and a
user registers a rule for their own module type the same way (``npb.register_rule``).

:func:`rule_for` picks the rule of a module: the registered rule of the nearest class in the module's
MRO whose ``forward`` the module still uses, then transformers' ``Conv1D`` (recognised by name, never
imported), else None (the engine's vmap fallback).
"""

from __future__ import annotations

from typing import Any

from torch import nn

# the built-in rules register themselves on import
from noiseprobe.probes.rules import conv, norm, recurrent  # noqa: F401
from noiseprobe.probes.rules.base import REGISTRY, Call, Rule, register_rule
from noiseprobe.probes.rules.fallback import VmapRule, tensor_leaves
from noiseprobe.probes.rules.linear import TransformersConv1DRule, is_transformers_conv1d

_CONV1D = TransformersConv1DRule()
_HF_RMS_NORM = norm.HFRMSNormRule()


def rule_for(module: nn.Module) -> Rule[Any] | None:
    """The rule of ``module``, or None when it has no rule (the engine then uses :class:`VmapRule`)."""
    for cls in type(module).__mro__:  # a subclass keeps the rule unless it overrides forward
        rule = REGISTRY.get(cls)
        if rule is not None and type(module).forward is cls.forward:  # type: ignore[attr-defined]
            return rule
    if is_transformers_conv1d(module):
        return _CONV1D
    if norm.is_hf_rms_norm(module):
        return _HF_RMS_NORM
    return None


__all__ = ["REGISTRY", "Call", "Rule", "VmapRule", "register_rule", "rule_for", "tensor_leaves"]
