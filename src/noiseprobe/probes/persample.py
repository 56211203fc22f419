"""Per-sample gradients of any PyTorch model, kept in factored form.

Write J ∈ R^{N×P} for the matrix whose row i is ∇_w ℓ_i(w), the gradient of the per-sample loss ℓ_i
(whatever ``loss_fn`` returns per sample; define it so that its mean over the batch is the training loss,
see :mod:`noiseprobe.probes.sample_losses`). Everything the noise covariance needs is a product with J:

    gram = J Jᵀ (N × N),  sq_norms = ‖∇ℓ_i‖²,  jvp = J v,  vjp = Jᵀ u,  sq_sum = Σ_i (∇ℓ_i)∘(∇ℓ_i).

:class:`HookFactors` (``method="hooks"``, the default): one forward pass with a hook on every module that
consumes trainable parameters (a *unit*) and one backward pass of Σ_i ℓ_i to the units' outputs (no
weight-gradient products). A layer rule (:mod:`noiseprobe.probes.rules`) turns each call's inputs and
output gradients into a factor (:mod:`noiseprobe.probes.factors`) for the unit's parameters; J is never
stored whole. Parameters used by several calls (a tied embedding and output head, a block applied twice)
get the per-sample *sum* of the calls' gradients — as one longer token axis where all calls are of the
Linear/Embedding kind, else as explicit rows summed before any product. A module without a rule falls
back, alone, to vmap(grad) over its own function (one warning naming it); so does a module whose
submodules' parameters it consumes itself (detected: a parameter in the autograd graph whose module
never ran). The one condition: samples must not interact (ℓ_i depends on sample i only), which is why
BatchNorm in training mode is refused.

:class:`JacobianFactors` (``method="func"``): the same engine with the whole model as one vmap unit,
J = vmap(grad) stored densely (N·P numbers); the test oracle of the factored form.

Inputs: ``x`` is anything ``forward(model, x)`` accepts (default: ``model(**x)`` for a dict,
``model(*x)`` for a tuple or list, else ``model(x)``), e.g. integer token ids or a dict of tensors; its
tensors must have the batch on axis 0. Outputs may be tensors, tuples or ModelOutput-like objects
(:func:`~noiseprobe.probes.sample_losses.model_output`). ``check=True`` verifies at run time that the
per-sample gradients, weighted by random u_i, sum to autograd's gradient of Σ_i u_i ℓ_i, parameter by
parameter.

Parameter vectors are flat, in the order of ``[p for p in model.parameters() if p.requires_grad]`` (or of a
subset ``params``: :func:`select_parameters`), each parameter flattened row-major (the order of
:func:`torch.nn.utils.parameters_to_vector`).
Products run on the model's device; under 16-bit activations (autocast, half models) the factors and
every product accumulate in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.autograd.graph import Node

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_choice, check_int
from noiseprobe.probes.capture import (
    Forward,
    PerSampleLoss,
    Root,
    Unit,
    capture,
    check_finite,
    default_forward,
)
from noiseprobe.probes.factors import Factor, OuterFactor, RowsFactor
from noiseprobe.probes.rules import rule_for
from noiseprobe.probes.rules.base import accumulation_dtype
from noiseprobe.probes.wrappers import unwrap

__all__ = [
    "Forward",
    "HookFactors",
    "JacobianFactors",
    "PerSampleGradients",
    "PerSampleLoss",
    "Selection",
    "default_forward",
    "parameter_owners",
    "per_sample_gradients",
    "per_sample_grams",
    "select_parameters",
    "supports_hooks",
]


class PerSampleGradients(Factor):
    """Products with the per-sample-gradient matrix J (N × P) of a whole model (the primitives of
    :class:`~noiseprobe.probes.factors.Factor`); ``jvp`` and ``vjp`` also take single vectors, (P,) → (N,)
    and (N,) → (P,)."""

    num_params: int
    dtype: torch.dtype
    device: torch.device

    def dense(self) -> Tensor:
        """J itself, shape (N, P) (small models only)."""
        return self.vjp(torch.eye(self.n, dtype=self.dtype, device=self.device)).T

    def rows(self) -> Tensor:
        return self.dense()

    def mean(self) -> Tensor:
        """ḡ = ∇L = (1/N) Jᵀ1, shape (P,)."""
        return self.vjp(torch.full((self.n,), 1.0 / self.n, dtype=self.dtype, device=self.device))


#: a parameter subset: names of parameters or modules (as in ``model.named_parameters()`` /
#: ``named_modules()``), modules or parameters
Selection = Iterable[str | nn.Module | nn.Parameter]


def select_parameters(model: nn.Module, selection: Selection | None = None) -> list[tuple[str, nn.Parameter]]:
    """The one parameter selector of the package: (name, parameter) for the trainable parameters of
    ``model`` (all, or those of ``selection``: a parameter's name, a module's name or the module, a
    parameter), in the order of ``model.parameters()`` — the flat-vector order — each under its first
    name in ``model.named_parameters()`` (a tied parameter appears once)."""
    model = unwrap(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if selection is None:
        chosen = trainable
    else:
        if isinstance(selection, (str, nn.Module, nn.Parameter)):
            selection = [selection]
        params, modules = dict(model.named_parameters()), dict(model.named_modules())
        ids: set[int] = set()
        for item in selection:
            if isinstance(item, str) and item in params:
                ids.add(id(params[item]))
            elif isinstance(item, str) and item in modules:
                ids |= {id(p) for p in modules[item].parameters()}
            elif isinstance(item, nn.Module):
                ids |= {id(p) for p in item.parameters()}
            elif isinstance(item, nn.Parameter) and any(item is p for p in params.values()):
                ids.add(id(item))
            else:
                raise ConfigError(
                    "params",
                    item if isinstance(item, str) else type(item).__name__,
                    "names of the model's parameters or modules, its modules or its parameters",
                )
        frozen = [n for n, p in params.items() if id(p) in ids and not p.requires_grad]
        if frozen:
            raise ConfigError("params", frozen[0], "parameters with requires_grad=True")
        chosen = [p for p in trainable if id(p) in ids]
    if not chosen:
        raise ConfigError("model", type(model).__name__, "a model with trainable parameters (in the selection)")
    names = {id(p): n for n, p in model.named_parameters()}
    return [(names[id(p)], p) for p in chosen]


def parameter_owners(model: nn.Module) -> dict[int, tuple[str, nn.Module]]:
    """id(p) -> (key, module) for every parameter of ``model``: the first module in ``named_modules()`` that
    holds p itself (a tied parameter under its first owner); key = that module's path when it is a leaf,
    else the parameter's full name (a parameter held by a module with children, e.g. a position
    embedding on the model itself). Paths are relative to the model inside a ``torch.compile`` wrapper
    (no ``_orig_mod.`` prefix; pass the model inside DDP, :func:`~noiseprobe.monitor.monitor.unwrap`)."""
    model = getattr(model, "_orig_mod", model)
    out: dict[int, tuple[str, nn.Module]] = {}
    for path, module in model.named_modules():
        leaf = next(iter(module.children()), None) is None
        for pname, p in module.named_parameters(recurse=False):
            if id(p) not in out:
                out[id(p)] = (path if leaf and path else f"{path}.{pname}".lstrip("."), module)
    return out


class HookFactors(PerSampleGradients):
    """Per-sample gradients of any model from layer rules (module docstring). ``consumers``: names of
    modules (as in ``model.named_modules()``; "" = the whole model) handled as one vmap unit."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: PerSampleLoss,
        x: Any,
        y: Any,
        forward: Forward | None = None,
        chunk_size: int | None = None,
        check: bool = False,
        consumers: frozenset[str] = frozenset(),
        params: Selection | None = None,
    ) -> None:
        self._setup(model, forward, params)
        names = {("model." + c).rstrip(".") if c else "" for c in consumers}
        units, losses = capture(self.root, set(self._offset), loss_fn, x, y, names, chunk_size)
        self.n = losses.shape[0]
        self._build(units, losses, check)

    @classmethod
    def from_calls(cls, model: nn.Module, units: list[Unit], n: int, params: Selection | None = None) -> HookFactors:
        """Per-sample gradients of ``n`` samples from units whose calls already carry the gradients of
        Σ_i ℓ_i with respect to their outputs (captured in a training step's own forward and backward:
        :mod:`noiseprobe.monitor.inline`); ``params`` as in the constructor."""
        self = cls.__new__(cls)
        self._setup(model, None, params)
        self.n = n
        self.blocks = blocks_of(self._contributions(units), self.n)
        return self

    def _setup(self, model: nn.Module, forward: Forward | None, params: Selection | None) -> None:
        """The root, the chosen parameters' flat offsets, dtype and device."""
        model = unwrap(model)
        self.root = Root(model, forward or default_forward)
        chosen = [p for _, p in select_parameters(model, params)]
        self.dtype, self.device = accumulation_dtype(chosen[0]), chosen[0].device
        self.num_params = sum(p.numel() for p in chosen)
        self._offset: dict[int, tuple[int, int]] = {}
        o = 0
        for p in chosen:
            self._offset[id(p)] = (o, p.numel())
            o += p.numel()
        self._names = {id(p): n for n, p in model.named_parameters()}

    # -- factors and blocks ---------------------------------------------------------------------

    def _build(self, units: list[Unit], losses: Tensor, check: bool) -> None:
        contribs: list[tuple[int, list[Tensor], Factor]] = []
        stream_factors(units, losses, self.n, lambda i, ps, f: contribs.append((i, ps, f)), retain_graph=check)
        if not contribs:
            raise ConfigError("model", type(self.root.model).__name__, "a loss that depends on a trainable parameter")
        self.blocks = blocks_of([(ps, f) for _, ps, f in sorted(contribs, key=lambda c: c[0])], self.n)
        if check:
            params: list[Tensor] = list({id(p): p for u in units for _, p in u.params}.values())
            weights = (
                torch.rand(self.n, generator=torch.Generator().manual_seed(0), dtype=losses.dtype).to(losses.device)
                + 0.5
            )
            reference = torch.autograd.grad((weights * losses).sum(), params, allow_unused=True)
            self._self_check(params, weights, reference)

    def _contributions(self, units: list[Unit]) -> list[tuple[list[Tensor], Factor]]:
        """Each call's factors from its rule (calls carrying their output gradients), the calls released."""
        contribs: list[tuple[list[Tensor], Factor]] = []
        for u in units:
            for c in u.calls:
                for named, factor in u.rule.factors(u.module, c, u.params, self.n):
                    contribs.append(([p for _, p in named], factor))
                c.args, c.kwargs, c.outputs, c.grads = (), {}, [], []
        if not contribs:
            raise ConfigError("model", type(self.root.model).__name__, "a loss that depends on a trainable parameter")
        return contribs

    def _self_check(self, params: list[Tensor], weights: Tensor, reference: tuple[Tensor | None, ...]) -> None:
        """Jᵀu against autograd's ∇_w Σ_i u_i ℓ_i for random weights u_i ∈ [0.5, 1.5), parameter by parameter:
        ‖error‖ ≤ rtol·‖∇_p‖ + 100·eps·‖∇_w‖ (the absolute floor covers parameters whose gradient vanishes,
        e.g. the key bias of attention). Random weights, not u = 1, so that gradients attributed to the wrong
        sample are caught too (a sum over all samples cannot see them)."""
        summed = self.vjp(weights.to(self.dtype))
        refs = [
            torch.zeros(p.numel(), dtype=self.dtype, device=self.device) if r is None else r.reshape(-1).to(self.dtype)
            for p, r in zip(params, reference)
        ]
        rtol = 1e-8 if self.dtype == torch.float64 else 1e-3
        floor = 100 * torch.finfo(self.dtype).eps * float(torch.cat(refs).norm())
        for p, ref in zip(params, refs):
            o, k = self._offset[id(p)]
            err = float((summed[o : o + k] - ref).norm())
            if not err <= rtol * float(ref.norm()) + floor:
                raise ConfigError(
                    "model",
                    f"parameter {self._names.get(id(p), '?')}",
                    f"per-sample gradients whose weighted sum is autograd's gradient (error {err:.2e}, "
                    f"gradient norm {float(ref.norm()):.2e}): samples interact, the batch is not on "
                    "axis 0 of every layer input, or a parameter is used outside its module",
                )

    # -- the products ------------------------------------------------------------------------

    def _slices(self, ps: list[Tensor]) -> list[tuple[int, int]]:
        return [self._offset[id(p)] for p in ps]

    def gram(self) -> Tensor:
        out = self.blocks[0][1].gram()
        for _, f in self.blocks[1:]:
            out += f.gram()
        return out

    def grams_by(self, key: dict[int, str]) -> dict[str, Tensor]:
        """J_g J_gᵀ (N, N) per group g of parameters (``key[id(p)]`` names p's group; Σ_g J_g J_gᵀ = J Jᵀ)
        (:func:`block_grams`)."""
        out: dict[str, Tensor] = {}
        for ps, f in self.blocks:
            for k, g in block_grams(ps, f, key):
                out[k] = out[k] + g if k in out else g
        return out

    def sq_norms(self) -> Tensor:
        out = self.blocks[0][1].sq_norms()
        for _, f in self.blocks[1:]:
            out += f.sq_norms()
        return out

    def jvp(self, v: Tensor) -> Tensor:
        vec = v.to(self.device, self.dtype).reshape(self.num_params, -1)
        out = torch.zeros(self.n, vec.shape[1], dtype=self.dtype, device=self.device)
        for ps, f in self.blocks:
            sl = self._slices(ps)
            out += f.jvp(
                vec[sl[0][0] : sl[0][0] + sl[0][1]] if len(sl) == 1 else torch.cat([vec[o : o + k] for o, k in sl])
            )
        return out.reshape(self.n, *v.shape[1:])

    def _scatter(self, parts: list[Tensor], k: int) -> Tensor:
        out = torch.zeros(self.num_params, k, dtype=self.dtype, device=self.device)
        for (ps, _), part in zip(self.blocks, parts):
            i = 0
            for o, size in self._slices(ps):
                out[o : o + size] = part[i : i + size]
                i += size
        return out

    def vjp(self, u: Tensor) -> Tensor:
        uu = u.to(self.device, self.dtype).reshape(self.n, -1)
        return self._scatter([f.vjp(uu) for _, f in self.blocks], uu.shape[1]).reshape(self.num_params, *u.shape[1:])

    def sq_sum(self) -> Tensor:
        return self._scatter([f.sq_sum()[:, None] for _, f in self.blocks], 1)[:, 0]


#: consume(call index in forward order, parameters, factor): a call's contribution, as soon as it exists
Consume = Callable[[int, list[Tensor], Factor], None]


def stream_factors(units: list[Unit], losses: Tensor, n: int, consume: Consume, retain_graph: bool = False) -> None:
    """One backward pass of Σ_i ℓ_i to the units' outputs, each call's factors handed to ``consume`` as soon
    as the gradients of all its outputs exist (in backward order), and the call's tensors released then: a
    layer's inputs and output gradients live until its factor is built, as a training backward frees its
    activations (no unit output is kept: :class:`~noiseprobe.probes.rules.base.Call`). The tensor hooks set
    at capture hand over the output gradients; ``autograd.grad`` is asked only for the outputs with no other
    unit's output below them in the graph (the stem of a ResNet), so that it holds no gradient of the
    others. Calls some of whose outputs get no gradient are handed on last, with zeros."""
    calls = [(u, c) for u in units for c in u.calls]
    pending = [len(c.outputs) for _, c in calls]

    def emit(i: int) -> None:
        u, c = calls[i]
        c.sink = None
        c.grads = [
            g if g is not None else torch.zeros(o.shape, dtype=o.dtype, device=d)
            for g, o, d in zip(c.grads, c.outputs, c.devices)
        ]
        for named, factor in u.rule.factors(u.module, c, u.params, n):
            consume(i, [p for _, p in named], factor)
        c.args, c.kwargs, c.outputs, c.grads, c.edges = (), {}, [], [], []
        pending[i] = -1

    def on_grad(i: int, k: int, g: Tensor) -> None:
        c = calls[i][1]
        if pending[i] > 0 and c.grads[k] is None:
            c.grads[k] = g
            pending[i] -= 1
            if pending[i] == 0:
                emit(i)

    for i, (_, c) in enumerate(calls):
        c.grads = [None] * len(c.outputs)  # type: ignore[list-item]  # filled by the hooks, zeros for the rest
        c.sink = partial(on_grad, i)
    edges = [(i, k, e) for i, (_, c) in enumerate(calls) for k, e in enumerate(c.edges)]
    try:
        below = _unit_below({e.node for _, _, e in edges}, losses.grad_fn)
        targets = [(i, k, e) for i, k, e in edges if not below.get(e.node, False)]
        grads = (
            torch.autograd.grad(losses.sum(), [e for _, _, e in targets], allow_unused=True, retain_graph=retain_graph)
            if targets
            else ()
        )
    finally:
        for _, c in calls:
            c.sink = None
    for (i, k, _), g in zip(targets, grads):  # where the hook of a captured output did not fire
        if g is not None:
            on_grad(i, k, g)
    for i in range(len(calls)):
        if pending[i] >= 0:
            emit(i)


def _unit_below(unit_nodes: set[Node], root: Node | None) -> dict[Node, bool]:
    """For each node of the graph below ``root``: whether a unit's output node lies strictly below it (one
    iterative depth-first pass; such a node's output gradient is reached by asking for those below)."""
    below: dict[Node, bool] = {}
    stack: list[tuple[Node, bool]] = [] if root is None else [(root, False)]
    while stack:
        node, done = stack.pop()
        children = [f for f, _ in node.next_functions if f is not None]
        if done:
            below[node] = any(f in unit_nodes or below.get(f, False) for f in children)
        elif node not in below:
            below[node] = False  # visited (a DAG: revisits only read it after it is final)
            stack.append((node, True))
            stack.extend((f, False) for f in children if f not in below)
    return below


def blocks_of(contribs: list[tuple[list[Tensor], Factor]], n: int) -> list[tuple[list[Tensor], Factor]]:
    """Contributions grouped into blocks of parameters that no contribution splits, summed per sample: one
    contribution as it is, calls of one Linear/Embedding layout joined along the token axis
    (:meth:`OuterFactor.cat`), anything else as explicit rows summed per parameter (N × P_block)."""
    parent: dict[int, int] = {}

    def find(i: int) -> int:
        while parent.setdefault(i, i) != i:
            i = parent[i]
        return i

    for ps, _ in contribs:
        for p in ps[1:]:
            parent[find(id(p))] = find(id(ps[0]))
    groups: dict[int, list[tuple[list[Tensor], Factor]]] = {}
    for ps, f in contribs:
        groups.setdefault(find(id(ps[0])), []).append((ps, f))
    blocks = []
    for group in groups.values():
        (ps, f) = group[0]
        same = all([id(p) for p in q] == [id(p) for p in ps] for q, _ in group)
        outer = [g for _, g in group if isinstance(g, OuterFactor)]
        if len(group) == 1:
            blocks.append((ps, f))
        elif same and len(outer) == len(group) and len({g.layout for g in outer}) == 1:
            blocks.append((ps, OuterFactor.cat(outer)))
        else:
            blocks.append(_summed_rows(group, n))
    return blocks


def _summed_rows(group: list[tuple[list[Tensor], Factor]], n: int) -> tuple[list[Tensor], Factor]:
    """Explicit per-sample gradients of a group of contributions over overlapping parameters, summed."""
    params = list({id(p): p for ps, _ in group for p in ps}.values())
    local, o = {}, 0
    for p in params:
        local[id(p)] = o
        o += p.numel()
    parts = [(ps, f.rows()) for ps, f in group]
    rows = parts[0][1].new_zeros(n, o)
    for ps, r in parts:
        i = 0
        for p in ps:
            rows[:, local[id(p)] : local[id(p)] + p.numel()] += r[:, i : i + p.numel()]
            i += p.numel()
    return params, RowsFactor(rows)


def block_grams(ps: list[Tensor], f: Factor, key: dict[int, str]) -> list[tuple[str, Tensor]]:
    """(group, J_g J_gᵀ) for the groups ``key[id(p)]`` of a block's parameters: the factor's Gram product
    when the block lies in one group, else its explicit rows sliced per group (a tied parameter whose
    other use lies in another module)."""
    keys = [key[id(p)] for p in ps]
    if len(set(keys)) == 1:
        return [(keys[0], f.gram())]
    rows, i = f.rows(), 0
    cols: dict[str, list[Tensor]] = {}
    for p, k in zip(ps, keys):
        cols.setdefault(k, []).append(rows[:, i : i + p.numel()])
        i += p.numel()
    return [(k, torch.cat(c, 1) @ torch.cat(c, 1).T) for k, c in cols.items()]


def per_sample_grams(
    model: nn.Module,
    loss_fn: PerSampleLoss,
    x: Any,
    y: Any,
    key: dict[int, str] | None = None,
    forward: Forward | None = None,
    params: Selection | None = None,
) -> dict[str, Tensor]:
    """The Gram matrices J_g J_gᵀ (N, N) of the per-sample gradients, per group g of parameters
    (``key[id(p)]`` names p's group; default: one group "" for all, J Jᵀ), streamed: each layer's block is
    reduced to its Gram as soon as its output gradient exists in the one backward pass
    (:func:`stream_factors`), and its factor dropped, so the peak memory is a training step's activations
    plus one layer's products. Parameters used by several calls (tied, applied twice) are summed per sample
    first (:func:`blocks_of`), after the pass. Same checks and arguments as :func:`per_sample_gradients`
    (hooks only); no factors are kept, so products other than the Gram need :func:`per_sample_gradients`."""
    _check_batch(x, y)
    model = unwrap(model)
    chosen = [p for _, p in select_parameters(model, params)]
    key = key if key is not None else {id(p): "" for p in chosen}
    units, losses = capture(
        Root(model, forward or default_forward), {id(p) for p in chosen}, loss_fn, x, y, set(), None
    )
    uses: dict[int, int] = {}
    for u in units:
        for _, p in u.params:
            uses[id(p)] = uses.get(id(p), 0) + len(u.calls)
    out: dict[str, Tensor] = {}
    shared: list[tuple[int, list[Tensor], Factor]] = []

    def add(k: str, g: Tensor) -> None:
        out[k] = out[k] + g if k in out else g

    def consume(i: int, ps: list[Tensor], f: Factor) -> None:
        if any(uses[id(p)] > 1 for p in ps):
            shared.append((i, ps, f))  # summed with its other uses after the pass
        else:
            for k, g in block_grams(ps, f, key):
                add(k, g)

    stream_factors(units, losses, losses.shape[0], consume)
    for ps, f in blocks_of([(ps, f) for _, ps, f in sorted(shared, key=lambda c: c[0])], losses.shape[0]):
        for k, g in block_grams(ps, f, key):
            add(k, g)
    if not out:
        raise ConfigError("model", type(model).__name__, "a loss that depends on a trainable parameter")
    return out


class JacobianFactors(HookFactors):
    """J materialised by ``torch.func.vmap(grad)`` over the whole model (one unit): any layer, N·P memory."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: PerSampleLoss,
        x: Any,
        y: Any,
        chunk_size: int | None = None,
        forward: Forward | None = None,
        check: bool = False,
        params: Selection | None = None,
    ) -> None:
        super().__init__(model, loss_fn, x, y, forward, chunk_size, check, consumers=frozenset({""}), params=params)


def supports_hooks(model: nn.Module) -> bool:
    """True when every trainable parameter belongs to a module with a layer rule (no vmap fallback; a
    module that consumes its children's parameters in its own forward is only detected at run time)."""
    owned = set()
    for m in model.modules():
        rule = rule_for(m)
        if rule is not None:
            owned |= {id(p) for _, p in rule.params(m)}
    return all(id(p) in owned for p in model.parameters() if p.requires_grad)


def _check_batch(x: Any, y: Any) -> None:
    """ConfigError for tensors x, y of different lengths or none, or non-finite numbers in either."""
    if isinstance(x, Tensor) and isinstance(y, Tensor) and (x.shape[0] != y.shape[0] or x.shape[0] < 1):
        raise ConfigError("x, y", (tuple(x.shape), tuple(y.shape)), "the same number N >= 1 of samples")
    check_finite("x", x)
    check_finite("y", y)


def per_sample_gradients(
    model: nn.Module,
    loss_fn: PerSampleLoss,
    x: Any,
    y: Any,
    method: Literal["auto", "hooks", "func"] = "auto",
    chunk_size: int | None = None,
    forward: Forward | None = None,
    check: bool = False,
    params: Selection | None = None,
) -> PerSampleGradients:
    """Per-sample gradients of ``loss_fn(model_output(forward(model, x)), y)`` (shape (N,)) at the model's
    current weights.

    ``method``: "hooks" or "auto" (layer rules, per-module vmap fallback; :class:`HookFactors`), "func"
    (vmap(grad) over the whole model, J stored; :class:`JacobianFactors`). ``chunk_size`` bounds the
    memory of vmap. ``check``: verify that Jᵀu is autograd's gradient of Σ_i u_i ℓ_i (random u). ``params``:
    a subset of the trainable parameters (:func:`select_parameters`); J then has only their columns.
    """
    check_choice("method", method, ("auto", "hooks", "func"))
    check_choice("check", check, (True, False))
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, lo=1)
    _check_batch(x, y)
    if method == "func":
        return JacobianFactors(model, loss_fn, x, y, chunk_size, forward, check, params)
    return HookFactors(model, loss_fn, x, y, forward, chunk_size, check, params=params)
