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
per-sample gradients are not defined, a plain ConfigError where they are defined but unsupported), and decorate
the class with ``@register_rule(ModuleType)`` where it is defined (Opacus's ``@register_grad_sampler`` style):
the package's own rules do so in their files, and a user does the same for a module of their own
(``npb.register_rule``), without editing any table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge

from noiseprobe.core.errors import ConfigError
from noiseprobe.probes.factors import Factor

Named = list[tuple[str, nn.Parameter]]

#: the module type a rule handles (:func:`register_rule` pairs each rule with it)
M = TypeVar("M", bound=nn.Module)


@dataclass
class Call:
    """One call of a unit: its arguments, its differentiable output tensors (``positions`` in the
    flattened output) and, after the backward pass, the gradients of Σ_i ℓ_i with respect to them.

    The capture pass keeps no output: ``outputs`` are stand-ins of their shapes and dtypes on the meta
    device, ``devices`` their devices, ``edges`` their places in the autograd graph, and tensor hooks hand
    each output's gradient to ``sink(k, gradient)`` when the backward pass reaches it."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: list[Tensor]
    positions: list[int]
    grads: list[Tensor] = field(default_factory=list)
    edges: list[GradientEdge] = field(default_factory=list)
    devices: list[torch.device] = field(default_factory=list)
    sink: Callable[[int, Tensor], None] | None = None

    def receive(self, k: int, grad: Tensor) -> None:
        """The tensor hook of output k: hands its gradient to the sink, if one is set."""
        if self.sink is not None:
            self.sink(k, grad)

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
        raise BatchAxisError(call.name, f"input of shape {tuple(t.shape)}", n)
    return t.detach()


class BatchAxisError(ConfigError):
    """A layer's input does not have the batch on axis 0; ``advice`` names the remedies of
    :func:`~noiseprobe.probes.persample.per_sample_gradients` (a caller without them re-raises with its own)."""

    def __init__(self, field: str, value: Any, n: int, advice: str | None = None) -> None:
        self.n = n
        self.advice = advice or "make the model batch-first, or use method='func'"
        super().__init__(
            field,
            value,
            f"inputs with the batch of N = {n} on axis 0 ({self.advice}; nn.MultiheadAttention with "
            "batch_first=False is handled)",
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.field, self.value, self.n, self.advice))


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


R = TypeVar("R", bound=type[Rule[Any]])

#: module type -> the rule of its instances (filled by :func:`register_rule`; read by ``rule_for``)
REGISTRY: dict[type[nn.Module], Rule[Any]] = {}


def register_rule(*module_types: type[nn.Module]) -> Callable[[R], R]:
    """Class decorator: instances of ``module_types`` (and of their subclasses that keep the type's
    ``forward``) get their per-sample gradients from one instance of the decorated :class:`Rule` subclass::

        @register_rule(MyLayer)
        class MyLayerRule(Rule[MyLayer]):
            def factor(self, module, call, params, n): ...

    A type that already has a rule, a type that is not an ``nn.Module`` subclass, or a decorated object
    that is not a :class:`Rule` subclass is a one-line ConfigError."""
    if not module_types:
        raise ConfigError("register_rule", "no module type", "one or more nn.Module subclasses")
    for t in module_types:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise ConfigError("register_rule", repr(t), "nn.Module subclasses (module types, not instances)")
        if t in REGISTRY:
            raise ConfigError(
                "register_rule", t.__qualname__, f"a module type without a rule (it has {type(REGISTRY[t]).__name__})"
            )

    def register(cls: R) -> R:
        if not (isinstance(cls, type) and issubclass(cls, Rule)):
            raise ConfigError("register_rule", repr(cls), "a subclass of noiseprobe.probes.rules.base.Rule")
        rule = cls()
        for t in module_types:
            if t in REGISTRY:  # registered between the decorator's call and its application
                raise ConfigError("register_rule", t.__qualname__, "a module type without a rule")
            REGISTRY[t] = rule
        return cls

    return register
