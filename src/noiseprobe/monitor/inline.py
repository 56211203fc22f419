"""No extra pass: per-sample gradients from the training step's own forward and backward (#20.4).

``NoiseMonitor(..., inline=True)`` arms hooks for the steps it measures (at construction for step 0, then
after each ``mon.step`` whose successor is measured) and disarms them otherwise, so unmeasured steps run
without a hook. While armed, a forward hook on every *unit* (a module whose selected parameters have a
factored layer rule, :func:`~noiseprobe.probes.capture.find_units`) records the call's inputs, and a
tensor hook on its outputs records their gradients in the user's own backward; a hook on the model
records its output and that output's gradient. Per-example quantities taken inside the training step's
backward are how the gradient-noise scale is tracked at scale (Gray, Tiwari, Bergsma & Hestness 2024,
arXiv 2411.00999).

The user's backward differentiates ``c·s·mean_i ℓ_i`` (``loss = c·mean(loss_fn(output, targets))``, s a
GradScaler's scale, 1 without one), not the engine's Σ_i ℓ_i, so each captured gradient is
(c·s/N)·∂ℓ_i/∂(output of sample i). At ``mon.step(batch, optimizer, loss=loss)`` the monitor recomputes
the per-sample losses from the captured (detached) model output, ℓ = loss_fn(output, targets), and:

* fits the captured output gradient G to R = ∂(Σ_i ℓ_i)/∂output by least squares, κ = ⟨G, R⟩/⟨R, R⟩, and
  requires ‖G − κR‖ ≤ tol·‖G‖ (tol by precision: :data:`GRAD_TOL`): the backward was that of a constant
  times the mean of ``loss_fn`` — else a ConfigError naming ``loss`` (the first measurement raises it);
* divides every captured unit-output gradient by κ: they are then the gradients of Σ_i ℓ_i, what the
  two-pass engine computes, and the layer rules turn them into factored per-sample gradients
  (:meth:`~noiseprobe.probes.persample.HookFactors.from_calls`);
* reports ``loss_scale`` c = loss / mean_i ℓ_i (from the loss value) and ``grad_scale`` s = N κ / c (the
  rest of the gradient's factor: a GradScaler's scale, divided out above).

Under gradient accumulation every forward of the model with gradients enabled whose output received a
gradient is one micro-batch: the targets of ``batch`` are split in the order of those forwards, each
micro-batch gets its own κ_j and c_j (``loss=`` one value per micro-batch), and the units' calls are
concatenated along the batch axis (``loss_scale`` and ``grad_scale`` are the means over micro-batches).
Under autocast the captured activations and gradients carry the step's precision (16-bit); the factors
accumulate in float32.

Refused (a ``status``, or a ConfigError at construction where it is known then): a selected parameter
outside a factored-rule layer (no rule, or a per-module vmap rule such as nn.MultiheadAttention's), or
used by a module other than its owner when the owner does not run; BatchNorm with batch statistics;
activation checkpointing (a unit's forward re-run inside the backward); a compiled model (arming hooks
would recompile it). No hook raises: a failure inside one is recorded and becomes the measurement's
status (and one warning), and the user's forward and backward go on unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from noiseprobe.core.errors import ConfigError, NoPerSampleGradients, NumericalError
from noiseprobe.monitor.context import Refused
from noiseprobe.probes.capture import Root, Unit, check_losses, default_forward, display, find_units
from noiseprobe.probes.persample import HookFactors, Selection, select_parameters
from noiseprobe.probes.rules import Call, VmapRule, rule_for, tensor_leaves
from noiseprobe.probes.rules.base import accumulation_dtype
from noiseprobe.probes.rules.fallback import tree_map
from noiseprobe.probes.sample_losses import model_output
from noiseprobe.probes.wrappers import unwrap

#: relative residual ‖G − κR‖/‖G‖ allowed between the captured output gradient and the recomputed one
GRAD_TOL = {torch.float64: 1e-8, torch.float32: 1e-4}
#: the same for 16-bit outputs (autocast, half models): their gradients are rounded to 8 or 11 bits
GRAD_TOL_16 = 3e-2


#: measurements running in this process (any monitor's): their own passes are not the training step's
_MEASURING = [0]


@contextmanager
def measuring() -> Iterator[None]:
    """Inside, armed hooks record nothing: a monitor's own passes (another monitor's two-pass measurement)
    are not the training step's."""
    _MEASURING[0] += 1
    try:
        yield
    finally:
        _MEASURING[0] -= 1


def _in_backward() -> bool:
    """True inside an autograd backward (a forward run there is activation checkpointing's recomputation)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and int(task()) != -1


def compiled_part(model: nn.Module) -> str | None:
    """The name of the first compiled part of ``model`` (a ``torch.compile`` wrapper or a module compiled
    in place with ``module.compile()``), else None."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    optimized = getattr(eval_frame, "OptimizedModule", ())
    for name, m in model.named_modules():
        if (optimized and isinstance(m, optimized)) or getattr(m, "_compiled_call_impl", None) is not None:
            return name or "model"
    return None


def _detach(obj: Any) -> Any:
    return tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, obj)


def _first_batch(obj: Any) -> int:
    """Length of axis 0 of the first tensor with ≥ 1 dimension in ``obj`` (1 if none)."""
    for t in tensor_leaves(obj):
        if isinstance(t, Tensor) and t.dim() > 0:
            return int(t.shape[0])
    return 1


@dataclass
class _Pass:
    """One armed forward of the model (a micro-batch): each unit's calls (by unit index), the pending output
    gradients of each call, the tensors whose in-place change would make the record stale, the model's
    output and its gradient."""

    n: int
    calls: dict[int, list[Call]] = field(default_factory=dict)
    grads: dict[int, list[Tensor | None]] = field(default_factory=dict)  # id(call) -> one per output
    versions: list[tuple[Tensor, int]] = field(default_factory=list)
    output: Tensor | None = None
    out_grad: Tensor | None = None


class InlineCapture:
    """The hooks of the inline mode and what they recorded (module docstring). ``model``: the user's model
    (DDP / DataParallel wrappers are looked through); ``params``: the selected parameters (:func:`~noiseprobe.probes.persample.select_parameters`).
    Construction refuses, with a ConfigError, what is known then to be unmeasurable inline."""

    def __init__(self, model: nn.Module, params: Selection | None = None) -> None:
        part = compiled_part(model)
        if part is not None:
            raise ConfigError(
                "model",
                f"compiled ({part})",
                "an uncompiled model with inline=True (arming and disarming hooks would recompile it), or inline=False",
            )
        model = unwrap(model)
        self.model, self.params = model, params
        self.selected = select_parameters(model, params)
        owned: dict[int, bool] = {}
        for m in model.modules():
            rule = rule_for(m)
            if rule is not None:
                for _, p in rule.params(m):
                    owned[id(p)] = owned.get(id(p), False) or not isinstance(rule, VmapRule)
        modules = dict(model.named_modules())
        for name, p in self.selected:
            if not owned.get(id(p), False):
                owner = modules.get(name.rpartition(".")[0], model)
                raise ConfigError(
                    "params",
                    f"{name} (in {type(owner).__name__})",
                    "parameters of modules with a factored layer rule with inline=True (docs/per_sample_layers.md): "
                    "select others with params=, or inline=False",
                )
        self.root = Root(model, default_forward)
        try:
            self.units = self._find_units()
        except NoPerSampleGradients as err:
            raise ConfigError(
                err.module, err.reason, "per-sample gradients with inline=True: eval mode, or inline=False"
            ) from None
        self._handles: list[RemovableHandle] = []
        self._current: _Pass | None = None
        self.passes: list[_Pass] = []
        self.fault: BaseException | None = None
        self.refusal: tuple[str, str] | None = None
        self.touched: set[int] = set()

    def _find_units(self) -> list[Unit]:
        return find_units(self.root, {id(p) for _, p in self.selected}, set(), None)

    @property
    def armed(self) -> bool:
        return bool(self._handles)

    # -- arming -----------------------------------------------------------------------------------
    def arm(self) -> None:
        """Clear what was recorded and hook the model for the next step (its forwards and backwards)."""
        self.disarm()
        self.passes, self._current, self.fault, self.refusal, self.touched = [], None, None, None, set()
        try:
            self.units = self._find_units()
        except NoPerSampleGradients as err:  # the model was switched to training BatchNorm since construction
            self.refusal = ("batch statistics", f"{err.module}: {err.reason}")
            return
        except Exception as exc:  # noqa: BLE001 — recorded, the measurement's status says so
            self.fault = exc
            return
        model = self.model
        handles = self._handles
        for i, u in enumerate(self.units):
            handles.append(u.module.register_forward_hook(partial(self._on_unit, i), with_kwargs=True))
        handles.append(model.register_forward_pre_hook(self._on_model_pre, with_kwargs=True))
        handles.append(model.register_forward_hook(self._on_model, with_kwargs=True))
        for _, p in self.selected:
            handles.append(p.register_post_accumulate_grad_hook(self._on_param))  # type: ignore[no-untyped-call]  # unannotated in torch

    def disarm(self) -> None:
        """Remove the hooks and release what they recorded (the step's layer inputs and gradients)."""
        for h in self._handles:
            h.remove()
        self._handles, self._current, self.passes = [], None, []

    # -- the hooks (never raise: a failure is recorded in self.fault) ----------------------------
    def _failed(self, exc: BaseException) -> None:
        if self.fault is None:
            self.fault = exc

    def _on_model_pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            armed = torch.is_grad_enabled() and not _MEASURING[0]
            self._current = _Pass(_first_batch((args, kwargs))) if armed else None
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)

    def _on_unit(self, index: int, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
        try:
            return self._record_call(index, args, kwargs, out)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
            return None

    def _record_call(self, index: int, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
        unit, pas = self.units[index], self._current
        if _in_backward():  # recomputed by activation checkpointing: the forward's record is incomplete
            self.refusal = ("activation checkpointing", f"{display(unit.name)} runs in the backward")
            return None
        if pas is None:
            return None
        ret = None
        if unit.rule.batch_axis_zero and isinstance(out, Tensor) and out.dim() > 0 and out.shape[0] == 1 < pas.n:
            out = ret = out.expand(pas.n, *out.shape[1:])  # shared by the batch (position ids): per-sample grads
        leaves = tensor_leaves(out)
        pos = [i for i, t in enumerate(leaves) if isinstance(t, Tensor) and t.requires_grad]
        if not pos:
            return ret
        call = Call(display(unit.name), _detach(args), _detach(kwargs), [leaves[i].detach() for i in pos], pos)
        pas.calls.setdefault(index, []).append(call)
        slots: list[Tensor | None] = [None] * len(pos)
        pas.grads[id(call)] = slots
        for t in tensor_leaves((call.args, call.kwargs)):
            if isinstance(t, Tensor):
                pas.versions.append((t, t._version))
        for k, i in enumerate(pos):
            leaves[i].register_hook(partial(self._on_grad, slots, k))
        return ret

    def _on_grad(self, slots: list[Tensor | None], k: int, grad: Tensor) -> None:
        try:
            slots[k] = grad if slots[k] is None else slots[k] + grad  # type: ignore[operator]
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)

    def _on_model(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        try:
            pas, self._current = self._current, None
            if pas is None:
                return
            o = model_output(out)
            if o.requires_grad:
                pas.output = o.detach()
                pas.versions.append((pas.output, pas.output._version))
                o.register_hook(partial(self._on_out_grad, pas))  # type: ignore[no-untyped-call]  # unannotated in torch
                self.passes.append(pas)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)

    def _on_out_grad(self, pas: _Pass, grad: Tensor) -> None:
        try:
            pas.out_grad = grad if pas.out_grad is None else pas.out_grad + grad
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)

    def _on_param(self, p: Tensor) -> None:
        try:
            self.touched.add(id(p))
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)

    # -- the measurement --------------------------------------------------------------------------
    def gradients(
        self, loss_fn: Callable[[Any, Any], Tensor], targets: Any, losses: Sequence[Tensor | float] | None
    ) -> tuple[HookFactors, dict[str, float]]:
        """The per-sample gradients of the recorded step (of Σ_i ℓ_i, ℓ = loss_fn(output, targets) over the
        micro-batches in order) and the row's ``loss_scale`` and ``grad_scale`` (module docstring)."""
        if self.fault is not None:
            if isinstance(self.fault, ConfigError):
                raise self.fault
            raise Refused("capture error", f"{type(self.fault).__name__}: {self.fault}")
        if self.refusal is not None:
            raise Refused(*self.refusal)
        passes = [p for p in self.passes if p.out_grad is not None and p.output is not None]
        if not passes:
            raise ConfigError(
                "mon.step",
                "no forward and backward of the model recorded since the previous mon.step",
                "with inline=True, mon.step after loss.backward() and before optimizer.step()",
            )
        if losses is None or len(losses) != len(passes):
            got = "no loss" if losses is None else f"{len(losses)} loss value(s)"
            raise ConfigError(
                "loss",
                f"{got} for {len(passes)} forward/backward pass(es)",
                "mon.step(batch, optimizer, loss=loss) with inline=True: the loss that was backpropagated, "
                "c·mean(loss_fn(output, targets)) (a list, one per micro-batch, under gradient accumulation)",
            )
        if any(t._version != v for p in passes for t, v in p.versions):
            raise Refused("in-place change", "a layer input or the model output was changed in place after use")
        ran = {i for p in passes for i in p.calls}
        for i, u in enumerate(self.units):
            if i not in ran and any(id(p) in self.touched for _, p in u.params):
                raise Refused(
                    "parameter outside a factored-rule layer",
                    f"{display(u.name)} never ran but its parameters received gradients (used by another module)",
                )
        counts = {i: [len(p.calls.get(i, [])) for p in passes] for i in ran}
        if any(len(set(c)) > 1 for c in counts.values()):
            raise Refused("micro-batches differ", "a layer ran a different number of times in different micro-batches")
        seq = [display(self.units[i].name) for i in ran if not self.units[i].rule.batch_axis_zero]
        if len(passes) > 1 and seq:  # inputs and states with the batch elsewhere than axis 0
            raise Refused("micro-batches differ", f"{seq[0]}: accumulation over a recurrent layer")
        kappa, extra = self._scales(loss_fn, targets, passes, losses)
        try:
            units = [
                Unit(
                    u.name, u.module, u.rule, u.params, [self._merged(passes, i, t, kappa) for t in range(counts[i][0])]
                )
                for i, u in enumerate(self.units)
                if i in ran
            ]
            grads = HookFactors.from_calls(self.model, units, sum(p.n for p in passes), self.params)
        except (ConfigError, NumericalError, Refused):
            raise
        except Exception as exc:  # a layer rule's failure: the row's status, never the loop's exception
            raise Refused("capture error", f"{type(exc).__name__}: {exc}") from exc
        return grads, extra

    def _scales(
        self,
        loss_fn: Callable[[Any, Any], Tensor],
        targets: Any,
        passes: list[_Pass],
        losses: Sequence[Tensor | float],
    ) -> tuple[list[float], dict[str, float]]:
        """κ_j per micro-batch (captured = κ_j · gradient of Σ_i ℓ_i), and the mean c and s (module docstring)."""
        sizes = [p.n for p in passes]
        n = sum(sizes)
        outs = [p.output for p in passes]
        if any(o is None or o.dim() == 0 or o.shape[0] != s for o, s in zip(outs, sizes)):
            raise ConfigError("model output", "without the batch on axis 0", "outputs with the batch on axis 0")
        if _first_batch(targets) != n:
            raise ConfigError(
                "batch",
                f"targets of {_first_batch(targets)} samples",
                f"the targets of the {n} samples of the recorded forward passes, in their order",
            )
        dtype = accumulation_dtype(passes[0].output)  # type: ignore[arg-type]
        tol = GRAD_TOL.get(passes[0].output.dtype, GRAD_TOL_16)  # type: ignore[union-attr]
        bounds = [sum(sizes[:j]) for j in range(len(sizes) + 1)]
        part = [
            tree_map(
                lambda t, lo=lo, hi=hi: t[lo:hi] if isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] == n else t,
                targets,
            )
            for lo, hi in zip(bounds[:-1], bounds[1:])
        ]
        grads = [p.out_grad.to(dtype) for p in passes]  # type: ignore[union-attr]
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            raise NumericalError("non-finite gradients of the model output in the training step's backward")
        with torch.enable_grad():
            leaves = [o.to(dtype).requires_grad_() for o in outs]  # type: ignore[union-attr]
            if len(passes) == 1:
                whole: list[Tensor] = leaves
                total = loss_fn(leaves[0], targets)
            else:
                try:
                    cat = torch.cat(leaves)
                except RuntimeError:
                    raise Refused("micro-batches differ", "model outputs of different shapes") from None
                whole = [cat]
                total = loss_fn(cat, targets)
            check_losses(total)
            ref = torch.autograd.grad(total.sum(), whole)[0]
            own = [total] if len(passes) == 1 else [loss_fn(leaf, y) for leaf, y in zip(leaves, part)]
        kappa, c, s = [], [], []
        for j, g in enumerate(grads):
            r = ref[bounds[j] : bounds[j + 1]]
            k = self._fit(g, r, tol)
            mean = float(own[j].detach().mean())
            value = float(torch.as_tensor(losses[j]).detach().double())
            kappa.append(k)
            c.append(value / mean if mean != 0 else float("nan"))
            # s: the captured factor over c·∂(mean_j ℓ)/∂output, with ∂(mean_j ℓ) = (∂Σℓ)/N_j for a mean loss
            if len(passes) == 1:
                s.append(k * sizes[j] / c[-1])
            else:
                own_grad = torch.autograd.grad(own[j].mean(), leaves[j])[0]
                s.append(self._fit(g, own_grad, tol) / c[-1])
        return kappa, {"loss_scale": sum(c) / len(c), "grad_scale": sum(s) / len(s)}

    @staticmethod
    def _fit(g: Tensor, r: Tensor, tol: float) -> float:
        """κ with g ≈ κ r (least squares), or a ConfigError when g is not a multiple of r."""
        rr = float((r * r).sum())
        if rr == 0:
            raise Refused("zero output gradient", "the recomputed loss does not depend on the model output")
        k = float((g * r).sum()) / rr
        resid = float((g - k * r).norm()) / max(float(g.norm()), 1e-300)
        if not resid <= tol:
            raise ConfigError(
                "loss",
                f"a backward whose output gradient is not a multiple of that of mean(loss_fn(output, targets)) "
                f"(relative residual {resid:.1e})",
                "loss = c·mean(loss_fn(output, targets)) for a constant c, loss_fn the monitor's per-sample loss",
            )
        return k

    @staticmethod
    def _merged(passes: list[_Pass], unit: int, t: int, kappa: list[float]) -> Call:
        """Call ``t`` of ``unit`` over the micro-batches: inputs concatenated along the batch axis (batch-shared
        ones expanded), output gradients divided by each micro-batch's κ and concatenated."""
        calls = [p.calls[unit][t] for p in passes]
        grads = []
        for p, c, k in zip(passes, calls, kappa):
            slots = p.grads[id(c)]
            grads.append(
                [
                    (torch.zeros_like(o) if g is None else g).to(accumulation_dtype(o)) / k
                    for o, g in zip(c.outputs, slots)
                ]
            )
        if len(passes) == 1:
            c = calls[0]
            return Call(c.name, c.args, c.kwargs, c.outputs, c.positions, grads[0])

        def cat(*leaves: Any) -> Any:
            if not isinstance(leaves[0], Tensor) or leaves[0].dim() == 0:
                return leaves[0]
            parts = [t.expand(p.n, *t.shape[1:]) if t.shape[0] == 1 < p.n else t for t, p in zip(leaves, passes)]
            return torch.cat(parts)

        try:
            args, kwargs = (
                tree_map(cat, calls[0].args, *(c.args for c in calls[1:])),
                tree_map(cat, calls[0].kwargs, *(c.kwargs for c in calls[1:])),
            )
            outputs = [torch.cat(o) for o in zip(*(c.outputs for c in calls))]
            merged = [torch.cat(g) for g in zip(*grads)]
        except RuntimeError:
            raise Refused("micro-batches differ", f"{calls[0].name}: inputs of different shapes") from None
        return Call(calls[0].name, args, kwargs, outputs, calls[0].positions, merged)
