"""Rules whose per-sample gradient is a sum of outer products Σ_t L_it R_itᵀ (an OuterFactor).

| module | L_it (m) | R_it (K) |
|---|---|---|
| ``nn.Linear`` on (N, …, F) | output gradient g_it | input a_it (and 1 for the bias) |
| transformers ``Conv1D`` (weight stored (F, out)) | g_it | a_it (and 1), weight transposed |
| ``nn.Embedding`` | one-hot(id_it) (kept as ids) | output gradient g_it (0 at ``padding_idx``) |

t runs over every non-batch, non-feature axis (tokens, positions) of the call.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.probes.factors import Layout, OuterFactor
from noiseprobe.probes.rules.base import (
    Call,
    Named,
    Rule,
    accumulation_dtype,
    batch_leading,
    register_rule,
)


def _tokens(call: Call, t: Tensor, n: int, width: int | None) -> Tensor:
    """(N, T, width) (or (N, T) for ids) from a batch-first tensor of any shape."""
    t = batch_leading(call, t, n)
    return t.reshape(n, -1) if width is None else t.reshape(n, -1, width)


@register_rule(nn.Linear)
class LinearRule(Rule[nn.Module]):
    """y = a Wᵀ + b on (N, …, F): ∇_W ℓ_i = Σ_t g_it a_itᵀ, ∇_b ℓ_i = Σ_t g_it."""

    transposed = False

    def factor(self, module: nn.Module, call: Call, params: Named, n: int) -> OuterFactor:
        g = call.grads[0]
        dtype = accumulation_dtype(g)
        a = _tokens(call, call.input, n, call.input.shape[-1]).to(dtype)
        ids = {id(p) for _, p in params}
        has_w, has_b = id(module.weight) in ids, module.bias is not None and id(module.bias) in ids
        right = torch.cat(([a] if has_w else []) + ([a.new_ones(*a.shape[:2], 1)] if has_b else []), 2)
        layout = Layout(g.shape[-1], a.shape[-1], has_w, has_b, self.transposed)
        return OuterFactor(_tokens(call, g, n, g.shape[-1]).to(dtype), right, layout)


class TransformersConv1DRule(LinearRule):
    """transformers' ``Conv1D`` (GPT-2): y = a W + b with W stored (F, out), i.e. a transposed Linear."""

    transposed = True


def is_transformers_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D, recognised without importing transformers: its class name and a 2-D weight
    of shape (nx, nf) with ``nf`` outputs."""
    w = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(w, Tensor)
        and w.dim() == 2
        and getattr(module, "nf", None) == w.shape[1]
    )


@register_rule(nn.Embedding)
class EmbeddingRule(Rule[nn.Embedding]):
    """y_t = W[id_t]: ∇_W ℓ_i = Σ_t one-hot(id_it) g_itᵀ; rows at ``padding_idx`` get no gradient."""

    def validate(self, name: str, module: nn.Embedding) -> None:
        if module.scale_grad_by_freq:
            raise ConfigError(
                name,
                "nn.Embedding(scale_grad_by_freq=True)",
                "scale_grad_by_freq=False (the batch's token counts make samples interact)",
            )

    def factor(self, module: nn.Embedding, call: Call, params: Named, n: int) -> OuterFactor:
        g = call.grads[0]
        ids = _tokens(call, call.input, n, None).long()  # int32 ids too
        right = _tokens(call, g, n, g.shape[-1]).to(accumulation_dtype(g))
        if module.padding_idx is not None:
            right = right * (ids != module.padding_idx)[..., None]
        return OuterFactor(ids, right, Layout(module.num_embeddings, module.embedding_dim, True, False))
