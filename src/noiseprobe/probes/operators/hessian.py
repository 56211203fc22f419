"""The Hessian H = ∇²L of the mean loss L = (1/N) Σ ℓ_i, by double backward."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from noiseprobe.probes.operators.base import (
    ModelOperator,
    double_backward_attention,
    output_and_loss,
)
from noiseprobe.probes.persample import Forward, PerSampleLoss


def param_hvp(loss: Tensor, params: Sequence[Tensor]) -> Callable[[Tensor], Tensor]:
    """v ↦ (∇²_θ loss) v on flat vectors (``torch.nn.utils.parameters_to_vector`` order); v may be a
    stack (m, P) of m vectors: one batched backward pass (``is_grads_batched``), or one pass per vector
    for m = 1 and where torch's batched double backward fails (GroupNorm's raises a size mismatch in
    torch 2.13: then every later stack goes vector by vector)."""
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    batched_ok = [True]

    def product(v: Tensor, batched: bool) -> Tensor:
        hv = torch.autograd.grad(flat, params, v, retain_graph=True, allow_unused=True, is_grads_batched=batched)
        lead = v.shape[:1] if batched else ()
        return torch.cat(
            [
                (torch.zeros(*lead, *p.shape, dtype=v.dtype, device=v.device) if h is None else h).reshape(*lead, -1)
                for h, p in zip(hv, params)
            ],
            dim=-1,
        )

    def hvp(v: Tensor) -> Tensor:
        if v.dim() == 1:
            return product(v, False)
        if v.shape[0] > 1 and batched_ok[0]:
            try:
                return product(v, True)
            except RuntimeError:  # no working batching rule for some double backward: one at a time
                batched_ok[0] = False
        return torch.stack([product(u, False) for u in v])

    return hvp


class Hessian(ModelOperator):
    """H = ∇²L of the mean loss L = (1/N) Σ ℓ_i over the chosen parameters, by double backward: the
    gradient graph is built once (under the math attention kernel, autocast off) and kept, and each
    block of k products is one batched backward pass through it (``is_grads_batched``).

    Memory: the kept graph is about two forward+backward passes'. The model is used as it is (training
    mode: dropout draws at construction time and stays fixed for all products).
    """

    def _build(self, loss_fn: PerSampleLoss, forward: Forward | None) -> None:
        _, self.loss = output_and_loss(self.model, loss_fn, self.x, self.y, forward)
        self._hvp = param_hvp(self.loss, self.params)

    def _mm(self, v: Tensor) -> Tensor:
        with double_backward_attention():
            return self._hvp(v.T).T
