"""The generalised Gauss–Newton matrix G = J_fᵀ (∂²L/∂f²) J_f of the mean loss."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from noiseprobe.probes.operators.base import (
    ModelOperator,
    double_backward_attention,
    mean_loss,
    output_and_loss,
)
from noiseprobe.probes.persample import Forward, PerSampleLoss


class GaussNewton(ModelOperator):
    """G = J_fᵀ (∂²L/∂f²) J_f, the generalised Gauss–Newton matrix of the mean loss, f the model output
    on the whole batch (any shape) and ∂²L/∂f² the Hessian of L(f) = (1/N) Σ ℓ_i(f_i) in the output
    (= H when the model is linear in its parameters).

    Each product is three reverse passes on kept graphs: J_f v by the double-vjp trick
    (J_f v = ∂/∂u ⟨J_fᵀ u, v⟩, which differentiates the model's backward: math attention kernel), then
    (∂²L/∂f²)(J_f v) by double backward of L in f, then J_fᵀ(·); k products share each pass. G is PSD
    when ℓ is convex in the output (cross-entropy, squared error).
    """

    def _build(self, loss_fn: PerSampleLoss, forward: Forward | None) -> None:
        self.out, _ = output_and_loss(self.model, loss_fn, self.x, self.y, forward)
        self.f = self.out.detach().requires_grad_(True)
        loss = mean_loss(loss_fn, self.f, self.y)
        self.dloss = torch.autograd.grad(loss, self.f, create_graph=True)[0]  # ∂L/∂f, graph kept
        self.u = torch.zeros_like(self.out, requires_grad=True)
        self.jtu = torch.autograd.grad(self.out, self.params, self.u, create_graph=True, materialize_grads=True)

    def _mm(self, v: Tensor) -> Tensor:
        k = v.shape[1]  # the k products go through each backward pass at once
        chunks = torch.split(v.T, [int(np.prod(s)) for s in self.shapes], 1)
        parts = [t.reshape(k, *shape) for t, shape in zip(chunks, self.shapes)]
        with double_backward_attention():
            jv = torch.autograd.grad(self.jtu, self.u, parts, retain_graph=True, is_grads_batched=True)[0]
        hjv = torch.autograd.grad(self.dloss, self.f, jv, retain_graph=True, is_grads_batched=True)[0]
        g = torch.autograd.grad(
            self.out, self.params, hjv, retain_graph=True, is_grads_batched=True, materialize_grads=True
        )
        return torch.cat([t.reshape(v.shape[1], -1) for t in g], 1).T
