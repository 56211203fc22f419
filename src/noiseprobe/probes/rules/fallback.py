"""The fallback for any module with parameters and no rule: torch.func vmap over the module's own function.

For a call with inputs x and output gradient g (from the one backward pass of Σ_i ℓ_i), sample i's
gradient is ∇_θ ⟨f_θ(x_i), g_i⟩ (ℓ_i depends on f(x_i) only), computed for all i at once by
``vmap(grad(·))`` over the module alone: N × P_module numbers, the rest of the model stays factored.
Tensor arguments whose axis 0 has length N are sliced per sample; others are shared. A module that
draws random numbers (dropout in training mode) cannot be replayed sample by sample and is refused by
the engine, as is one calling an ``autograd.Function`` that torch.func cannot vmap (both with
:class:`~noiseprobe.core.errors.NoPerSampleGradients`).

:class:`MultiheadAttentionRule`: ``nn.MultiheadAttention`` consumes ``in_proj_*`` and its ``out_proj``'s
parameters inside its own forward (``out_proj.forward`` never runs), so it is one unit over its whole
subtree; ``batch_first=False`` puts the batch on axis 1 of query/key/value and of the output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from noiseprobe.core.errors import ConfigError, NoPerSampleGradients
from noiseprobe.probes.factors import RowsFactor
from noiseprobe.probes.rules.base import Call, M, Named, Rule, accumulation_dtype, register_rule


def tensor_leaves(obj: Any) -> list[Any]:
    """The leaves of a (nested) output: tensors and other objects, in order (tuples, lists, dicts and
    ModelOutput-like mappings are traversed)."""
    if isinstance(obj, (tuple, list)):
        return [leaf for o in obj for leaf in tensor_leaves(o)]
    if isinstance(obj, dict):
        return [leaf for o in obj.values() for leaf in tensor_leaves(o)]
    return [obj]


def tree_map(fn: Any, obj: Any, *rest: Any) -> Any:
    """``fn`` applied to the leaves of nested tuples, lists and dicts (and of parallel structures ``rest``)."""
    if isinstance(obj, (tuple, list)):
        return type(obj)(tree_map(fn, *items) for items in zip(obj, *rest))
    if isinstance(obj, dict):
        return {k: tree_map(fn, v, *(r[k] for r in rest)) for k, v in obj.items()}
    return fn(obj, *rest)


class VmapRule(Rule[M]):
    """Per-sample gradients of a module's parameters by vmap(grad) over its own function (module docstring)."""

    chunk_size: int | None = None
    batch_axis_zero = False

    def input_axis(self, module: M, key: int | str, t: Tensor, n: int) -> int | None:
        """The batch axis of a tensor argument (position or keyword ``key``), None if shared."""
        return 0 if t.dim() > 0 and t.shape[0] == n else None

    def output_axis(self, module: M, position: int, t: Tensor, n: int) -> int:
        return 0

    def factor(self, module: M, call: Call, params: Named, n: int) -> RowsFactor:
        def axes(key: int | str, a: Any) -> Any:
            return tree_map(lambda t: self.input_axis(module, key, t, n) if isinstance(t, Tensor) else None, a)

        arg_axes = tuple(axes(i, a) for i, a in enumerate(call.args))
        kw_axes = {k: axes(k, a) for k, a in call.kwargs.items()}
        out_axes = [self.output_axis(module, p, o, n) for p, o in zip(call.positions, call.outputs)]
        for o, ax in zip(call.outputs, out_axes):
            if o.dim() <= ax or o.shape[ax] != n:
                allowed = f"outputs with the batch of N = {n} on axis {ax}"
                if ax == 0 and o.dim() >= 1 and o.shape[0] % n == 0 and o.shape[0] > n:
                    # a flattened (N·T, ...) output, e.g. logits.view(-1, V): say how to unflatten it
                    allowed += (
                        f" (this one looks flattened, {n} × {o.shape[0] // n} rows: return it as (N, T, ...) "
                        "with `forward=lambda model, x: model(x).unflatten(0, (len(x), -1))` and a loss_fn "
                        "that takes (N, T, ...) outputs, e.g. noiseprobe.TokenMeanCrossEntropy())"
                    )
                raise ConfigError(call.name, f"output of shape {tuple(o.shape)}", allowed)

        def one(a: Any, ax: Any) -> Any:
            return tree_map(lambda t, d: t.unsqueeze(d) if d is not None else t, a, ax)

        def inner(p: dict[str, Tensor], args: tuple[Any, ...], kwargs: dict[str, Any], grads: list[Tensor]) -> Tensor:
            out = functional_call(
                module,
                p,
                tuple(one(a, ax) for a, ax in zip(args, arg_axes)),
                {k: one(a, kw_axes[k]) for k, a in kwargs.items()},
                strict=False,
            )
            leaves = tensor_leaves(out)
            total: Tensor = sum(
                (leaves[pos] * g.unsqueeze(ax)).sum() for pos, g, ax in zip(call.positions, grads, out_axes)
            )
            return total

        def detach(a: Any) -> Any:
            return tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, a)

        grads = [g.to(o.dtype) for g, o in zip(call.grads, call.outputs)]
        # no_grad: children's own parameters (constants here) build no outer graph; grad() ignores it.
        # The math attention kernel: fused kernels have no vmap batching rule.
        with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
            try:
                per = vmap(grad(inner), in_dims=(None, arg_axes, kw_axes, out_axes), chunk_size=self.chunk_size)(
                    {name: p.detach() for name, p in params}, detach(call.args), detach(call.kwargs), grads
                )
            except RuntimeError as e:  # an autograd.Function without a vmap rule (setup_context)
                if "autograd.Function" not in str(e):
                    raise
                raise NoPerSampleGradients(
                    call.name,
                    f"{type(module).__name__} calling an autograd.Function that torch.func cannot vmap",
                    "a Function with setup_context and a vmap rule (generate_vmap_rule=True), or a layer rule",
                ) from None
        rows = torch.cat([per[name].reshape(n, -1) for name, _ in params], 1)
        return RowsFactor(rows.to(accumulation_dtype(rows)))


@register_rule(nn.MultiheadAttention)
class MultiheadAttentionRule(VmapRule[nn.MultiheadAttention]):
    """nn.MultiheadAttention as one unit (module docstring)."""

    consumes_children = True

    def validate(self, name: str, module: nn.MultiheadAttention) -> None:
        if module.dropout > 0 and module.training:
            raise NoPerSampleGradients(
                name,
                f"nn.MultiheadAttention(dropout={module.dropout}) in training mode",
                "eval mode or dropout=0 (its random attention mask cannot be replayed per sample)",
            )

    def input_axis(self, module: nn.MultiheadAttention, key: int | str, t: Tensor, n: int) -> int | None:
        if key in (0, 1, 2, "query", "key", "value"):
            return 0 if module.batch_first or t.dim() == 2 else 1
        if key in (3, "key_padding_mask"):
            return 0
        if t.dim() == 3:  # attn_mask of shape (N·heads, L, S)
            raise ConfigError(
                "attn_mask",
                f"tensor of shape {tuple(t.shape)}",
                "a 2-D (L, S) mask (a per-sample 3-D mask folds the batch into the heads)",
            )
        return None

    def output_axis(self, module: nn.MultiheadAttention, position: int, t: Tensor, n: int) -> int:
        return 0 if position > 0 or module.batch_first else 1
