"""What a layer rule is: the per-sample-gradient pieces of the parameters one module consumes.

The engine (:mod:`noiseprobe.probes.persample`) runs one forward pass of the batch with a forward hook
on every *unit* (a module that consumes trainable parameters), recording each call's inputs and
outputs, and one backward pass of Σ_i ℓ_i to those outputs. Because sample i's loss depends on sample
i only, the output gradient of a call, sliced at sample i, is ∂ℓ_i/∂output_i. A rule turns one call
(inputs, output gradients) into a :class:`~noiseprobe.probes.factors.Factor` for the unit's parameters;
quantities (Gram, norms, products, diagonal) are computed by the factors, never by the rules — the
separation BackPACK makes between module derivatives and extensions.

To support a new layer: subclass :class:`Rule` parametrised by the module type (``Rule[nn.Linear]``),
implement :meth:`Rule.factor` (or :meth:`Rule.factors`, one factor per parameter group), and
:meth:`Rule.validate` for configurations it refuses (:class:`~noiseprobe.core.errors.NoPerSampleGradients` where
per-sample gradients are not defined, a plain ConfigError where they are defined but unsupported), and add it to
``RULES`` in :mod:`noiseprobe.probes.rules`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor, nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.probes.factors import Factor

Named = list[tuple[str, nn.Parameter]]

#: the module type a rule handles (``RULES`` in :mod:`noiseprobe.probes.rules` pairs each rule with it)
M = TypeVar("M", bound=nn.Module)


@dataclass
class Call:
    """One call of a unit: its arguments, its differentiable output tensors (``positions`` in the
    flattened output) and, after the backward pass, the gradients of Σ_i ℓ_i with respect to them."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: list[Tensor]
    positions: list[int]
    grads: list[Tensor] = field(default_factory=list)

    @property
    def input(self) -> Tensor:
        """The first argument, positional or keyword (the input of a single-input layer)."""
        first: Tensor = self.args[0] if self.args else next(iter(self.kwargs.values()))
        return first


def accumulation_dtype(t: Tensor) -> torch.dtype:
    """float32 for 16-bit floats (autocast activations), else the tensor's own floating dtype."""
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def batch_leading(call: Call, t: Tensor, n: int) -> Tensor:
    """``t`` detached, if its axis 0 is the batch of N samples (or 1: an input shared by the batch, e.g.
    position ids of shape (1, T), whose output the engine expands to N); else a one-line ConfigError."""
    if t.dim() > 0 and t.shape[0] == 1 < n:
        return t.detach().expand(n, *t.shape[1:])
    if t.dim() == 0 or t.shape[0] != n:
        raise ConfigError(
            call.name,
            f"input of shape {tuple(t.shape)}",
            f"inputs with the batch of N = {n} on axis 0 (make the model batch-first, or use "
            "method='func'; nn.MultiheadAttention with batch_first=False is handled)",
        )
    return t.detach()


class Rule(Generic[M]):
    """Per-sample gradients of the parameters a module consumes, from its calls' inputs and output
    gradients. ``consumes_children``: the module uses its submodules' parameters itself (their forward
    never runs), so this unit handles its whole subtree."""

    consumes_children = False
    #: the module's inputs and outputs have the batch on axis 0 (an output with axis 0 of length 1 is a
    #: batch-shared output, expanded to N by the engine so that its gradient is per sample)
    batch_axis_zero = True

    def params(self, module: M) -> Named:
        return list(module.named_parameters(recurse=self.consumes_children))

    def validate(self, name: str, module: M) -> None:
        """Raise ConfigError when the module's configuration makes samples interact or is unsupported."""

    def factor(self, module: M, call: Call, params: Named, n: int) -> Factor:
        """Per-sample gradients of ``params`` (in this order) contributed by ``call``."""
        raise NotImplementedError

    def factors(self, module: M, call: Call, params: Named, n: int) -> list[tuple[Named, Factor]]:
        """The contribution of ``call`` as factors over subsets of ``params`` (a rule whose parameters fall
        into several matrices, e.g. a recurrent layer's input and hidden weights, overrides this)."""
        return [(params, self.factor(module, call, params, n))]
