"""The capture pass of the per-sample-gradient engine: which modules are units, and their calls.

One forward pass of the batch with a forward hook on every *unit* (a module that consumes trainable
parameters, with its layer rule from :mod:`noiseprobe.probes.rules`) records each call's arguments and
differentiable outputs. The pass is repeated, with the fix, when it finds that

* a unit's output was changed in place afterwards (``ReLU(inplace=True)``): the unit's output is cloned;
* a unit never ran although its parameters are in the autograd graph and no unit that ran handles them:
  the nearest ancestor that ran consumes them (its forward uses them itself) and becomes one vmap unit.

A vmap unit that draws random numbers in training mode (dropout) is refused; an output with a batch axis of
length 1 (a batch-shared input such as position ids ``arange(T)[None]``) is expanded to N so that its
gradient is per sample. :func:`capture` returns the units with their calls and the per-sample losses.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

from noiseprobe.core.errors import ConfigError, NoPerSampleGradients, NumericalError
from noiseprobe.probes.rules import Call, Rule, VmapRule, rule_for, tensor_leaves
from noiseprobe.probes.rules.base import Named
from noiseprobe.probes.rules.norm import BatchNormRule
from noiseprobe.probes.sample_losses import model_output
from noiseprobe.probes.wrappers import eager

#: loss_fn(model_output, targets) -> per-sample losses of shape (N,)
PerSampleLoss = Callable[[Any, Any], Tensor]
#: forward(model, batch) -> model output
Forward = Callable[[nn.Module, Any], Any]


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(**batch)`` for a dict, ``model(*batch)`` for a tuple or list, else ``model(batch)``."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


class Root(nn.Module):
    """``model_output(forward(model, batch))`` as one module: the root that hooks and vmap see."""

    def __init__(self, model: nn.Module, forward: Forward) -> None:
        super().__init__()
        self.model, self.fn = model, forward

    def forward(self, batch: Any) -> Tensor:
        return model_output(self.fn(self.model, batch))


class _SubtreeVmapRule(VmapRule[nn.Module]):
    """vmap over a module that consumes its submodules' parameters (detected at run time, or the whole model)."""

    consumes_children = True


@dataclass
class Unit:
    """A module that consumes trainable parameters: its label, rule, parameters (local names) and recorded
    calls; ``clone``: its output is changed in place downstream, so the hook hands on a copy."""

    name: str
    module: nn.Module
    rule: Rule[Any]
    params: Named
    calls: list[Call] = field(default_factory=list)
    clone: bool = False


_WARNED: set[tuple[str, str]] = set()


def display(name: str) -> str:
    """The label of a module of the wrapped model: "model" for the model itself, "model.blocks.0.attn"..."""
    return name if name.startswith("model") else "model"


def check_finite(field_name: str, obj: Any) -> None:
    """ConfigError naming the argument (or dict key) when a floating tensor in ``obj`` is not finite."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (tuple, list)) else None
    if items is not None:
        for k, v in items:
            check_finite(f"{field_name}[{k!r}]", v)
    elif (
        isinstance(obj, Tensor)
        and obj.is_floating_point()
        and not torch.isfinite(obj.sum())
        and not torch.isfinite(obj).all()
    ):  # the sum is one pass without a mask; the mask rules out overflow
        raise ConfigError(field_name, f"a tensor of shape {tuple(obj.shape)} containing NaN or inf", "finite values")


def _reachable(fn: Any) -> set[int]:
    """ids of the leaf tensors (parameters) the autograd graph below ``fn`` accumulates into."""
    seen, stack, found = set(), [fn], set()
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        if hasattr(f, "variable"):
            found.add(id(f.variable))
        stack.extend(nxt for nxt, _ in f.next_functions)
    return found


def _rng_state(device: torch.device) -> list[Tensor]:
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def find_units(root: Root, trainable: set[int], consumers: set[str], chunk_size: int | None) -> list[Unit]:
    """The units of ``root``: modules with trainable parameters and their rules (``consumers``: one vmap
    unit each over its subtree); BatchNorm in training mode refused."""
    units: list[Unit] = []
    covered: list[str] = []
    for name, m in root.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            BatchNormRule().validate(display(name), m)
        if any(name == c or name.startswith(c + ".") or c == "" for c in covered):
            continue
        rule = rule_for(m) if name not in consumers else None
        if rule is None:
            rule = _SubtreeVmapRule() if name in consumers else VmapRule()
            rule.chunk_size = chunk_size
        params = [(n, p) for n, p in rule.params(m) if id(p) in trainable]
        if rule.consumes_children:
            covered.append(name)
        if not params:
            continue
        rule.validate(display(name), m)
        if type(rule) is VmapRule:
            key = (type(m).__name__, display(name))
            if key not in _WARNED:
                _WARNED.add(key)
                warnings.warn(
                    f"per-sample gradients: {key[0]} {key[1]} has no layer rule; its parameters "
                    "use vmap(grad) over this module alone (N × its parameter count numbers)",
                    stacklevel=5,
                )
        units.append(Unit(name, m, rule, params))
    return units


def record(
    root: Root, units: list[Unit], loss_fn: PerSampleLoss, x: Any, y: Any, device: torch.device
) -> tuple[Tensor, set[str]]:
    """One forward pass recording every unit's calls; returns the per-sample losses and the modules that
    must become vmap units (an in-place change of a unit's output is fixed here by cloning it)."""
    active, fired, handles = [True], set(), []
    versions: list[tuple[Unit, weakref.ref[Tensor], int]] = []  # weak: the outputs are not kept
    leaves_x = [t for t in tensor_leaves(x) if isinstance(t, Tensor) and t.dim() > 0]
    n_hint = leaves_x[0].shape[0] if leaves_x else 1

    def post(unit: Unit, mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
        if not active[0]:
            return None
        rng = rng_before.pop(id(unit), None)  # recorded for vmap units in training mode
        if rng is not None and any(not torch.equal(a, b) for a, b in zip(rng, _rng_state(device))):
            raise NoPerSampleGradients(
                display(unit.name),
                f"{type(mod).__name__} drawing random numbers in training mode",
                "eval mode or no dropout in modules without a layer rule "
                "(their random draws cannot be replayed sample by sample)",
            )
        ret = None
        if unit.rule.batch_axis_zero and isinstance(out, Tensor) and out.dim() > 0 and out.shape[0] == 1 < n_hint:
            out = ret = out.expand(n_hint, *out.shape[1:])  # shared by the batch: per-sample gradients
        leaves = tensor_leaves(out)
        pos = [i for i, t in enumerate(leaves) if isinstance(t, Tensor) and t.requires_grad]
        if pos:  # a call without differentiable outputs (under no_grad) contributes nothing
            outs: list[Tensor] = [leaves[i] for i in pos]
            call = Call(
                display(unit.name),
                args,
                kwargs,
                [torch.empty(o.shape, dtype=o.dtype, device="meta") for o in outs],
                pos,
                edges=[get_gradient_edge(o) for o in outs],
                devices=[o.device for o in outs],
            )
            for k, o in enumerate(outs):  # before any in-place change: the gradient of the output as returned
                o.register_hook(partial(call.receive, k))  # type: ignore[no-untyped-call]  # unannotated in torch
                versions.append((unit, weakref.ref(o), o._version))
            unit.calls.append(call)
        return out.clone() if unit.clone and isinstance(out, Tensor) else ret

    def pre(unit: Unit) -> None:
        if active[0]:
            rng_before[id(unit)] = _rng_state(device)

    rng_before: dict[int, list[Tensor]] = {}
    for u in units:
        u.calls = []
        handles.append(u.module.register_forward_hook(lambda *a, u=u: post(u, *a), with_kwargs=True))
        if isinstance(u.rule, VmapRule) and u.module.training:
            handles.append(u.module.register_forward_pre_hook(lambda *a, u=u: pre(u)))
    for name, m in root.named_modules():
        handles.append(m.register_forward_pre_hook(lambda *a, name=name: fired.add(name) if active[0] else None))
    try:
        with torch.enable_grad(), eager():  # compiled submodules run eagerly: hooks fire, dynamo sees none
            losses = loss_fn(root(x), y)
    finally:
        active[0] = False
        for h in handles:
            h.remove()
    check_losses(losses)
    changed = {id(u) for u, ref, v in versions if (t := ref()) is not None and t._version != v}
    if changed:
        for u in units:
            u.clone = u.clone or id(u) in changed
        return record(root, units, loss_fn, x, y, device)
    return losses, _consumers_of_idle(units, losses, fired)


def _consumers_of_idle(units: list[Unit], losses: Tensor, fired: set[str]) -> set[str]:
    """The modules that consume the parameters of units that never ran (each then becomes one vmap unit;
    a warning names it): the closest ancestor that ran."""
    idle = [u for u in units if not u.calls]
    if not idle:
        return set()
    graph = _reachable(losses.grad_fn) - {id(p) for u in units if u.calls for _, p in u.params}
    redo = set()
    for u in idle:  # a parameter in the graph that no unit that ran handles (a tied one is handled)
        if any(id(p) in graph for _, p in u.params):
            parts = u.name.split(".")
            ancestors = [".".join(parts[:i]) for i in range(len(parts) - 1, -1, -1)]
            consumer = next(a for a in ancestors if a in fired)
            warnings.warn(
                f"per-sample gradients: {display(u.name)} never runs but its parameters are "
                f"used: {display(consumer)} consumes them and becomes one vmap unit",
                stacklevel=6,
            )
            redo.add(consumer)
    return redo


def check_losses(losses: Any) -> None:
    """ConfigError unless ``losses`` is an (N,) tensor; NumericalError if it is not finite (valid input,
    non-finite numbers: e.g. a diverging run)."""
    if not isinstance(losses, Tensor) or losses.dim() != 1 or losses.shape[0] < 1:
        shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ConfigError(
            "loss_fn",
            f"a loss returning {shape}",
            "a per-sample loss returning shape (N,), N >= 1, e.g. reduction='none'",
        )
    if not torch.isfinite(losses).all():
        raise NumericalError("non-finite per-sample losses at the current weights")


def capture(
    root: Root, trainable: set[int], loss_fn: PerSampleLoss, x: Any, y: Any, consumers: set[str], chunk_size: int | None
) -> tuple[list[Unit], Tensor]:
    """The units of ``root`` with their calls on batch ``x``, and the per-sample losses (module docstring)."""
    device = next(p.device for p in root.parameters() if id(p) in trainable)
    names = set(consumers)
    while True:
        units = find_units(root, trainable, names, chunk_size)
        losses, redo = record(root, units, loss_fn, x, y, device)
        if not redo:
            return units, losses
        names |= redo
