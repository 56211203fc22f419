"""Convolutions (nn.Conv1d/2d/3d) with any padding, padding mode, stride, dilation and groups.

The weight is shared over output positions, so its per-sample gradient is formed explicitly (N × P_layer,
small for convolutions): the input is padded as the layer pads it (zeros, reflect, replicate, circular,
'same'), then the weight gradient of a convolution with the batch folded into the groups (N·groups
groups) gives all N per-sample gradients in one call — the weight-gradient kernel's cost, N·P_layer memory.

Streaming: where N·P_layer exceeds what the layer's input and output gradient take (the deep, narrow-
spatial layers of a ResNet: 32 × 2.4 M floats against 2 × 32 × 512 × 16), the factor keeps x and g
instead (:class:`StreamedConvFactor`) and forms the rows only inside each product, dropping them after; its
Gram and squared norms come from one pass and are kept. Peak memory is then one layer's rows, not all.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn import grad as nn_grad

from noiseprobe.probes.factors import Factor, RowsFactor
from noiseprobe.probes.rules.base import (
    Call,
    Named,
    Rule,
    accumulation_dtype,
    batch_leading,
    register_rule,
)

#: the weight gradient of a convolution, by spatial dimension (torch.nn.grad is unannotated)
_WEIGHT_GRAD: dict[int, Callable[..., Tensor]] = {
    1: nn_grad.conv1d_weight,
    2: nn_grad.conv2d_weight,
    3: nn_grad.conv3d_weight,
}


ConvNd = nn.Conv1d | nn.Conv2d | nn.Conv3d


def per_sample_conv_weight(module: ConvNd, x: Tensor, g: Tensor) -> Tensor:
    """∇_W ℓ_i for every sample: (N, out, in/groups, *kernel), from the input x and output gradient g."""
    n = x.shape[0]
    padding: str | tuple[int, ...] | int = module.padding
    if module.padding_mode != "zeros" or isinstance(padding, str):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x, padding = F.pad(x, module._reversed_padding_repeated_twice, mode=mode), 0
    d = x.dim() - 2
    w = _WEIGHT_GRAD[d](
        x.reshape(1, -1, *x.shape[2:]),
        (n * module.out_channels, *module.weight.shape[1:]),
        g.reshape(1, -1, *g.shape[2:]),
        module.stride,
        padding,
        module.dilation,
        module.groups * n,
    )
    return w.reshape(n, *module.weight.shape)


class StreamedConvFactor(Factor):
    """The rows of a convolution's block, formed on demand from the kept input and output gradient (see
    the module docstring); Gram and squared norms computed once, from one formation of the rows."""

    def __init__(self, make: Callable[[], Tensor], n: int, numel: int) -> None:
        self._make, self.n, self.numel = make, n, numel
        self._gram: Tensor | None = None

    def gram(self) -> Tensor:
        if self._gram is None:
            j = self._make()
            self._gram = j @ j.T
        return self._gram.clone()  # callers may sum into it

    def sq_norms(self) -> Tensor:
        return self.gram().diagonal().clone()

    def jvp(self, v: Tensor) -> Tensor:
        return self._make() @ v

    def vjp(self, u: Tensor) -> Tensor:
        return self._make().T @ u

    def sq_sum(self) -> Tensor:
        j = self._make()
        return (j * j).sum(0)

    def rows(self) -> Tensor:
        return self._make()


@register_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvRule(Rule[ConvNd]):
    """∇_W ℓ_i by :func:`per_sample_conv_weight`; ∇_b ℓ_i = Σ_positions g_i."""

    def factor(self, module: ConvNd, call: Call, params: Named, n: int) -> Factor:
        g = call.grads[0]
        dtype = accumulation_dtype(g)
        x, g = batch_leading(call, call.input, n).to(dtype), g.to(dtype)
        names = [name for name, _ in params]

        def make() -> Tensor:
            rows = [
                per_sample_conv_weight(module, x, g).reshape(n, -1)
                if name == "weight"
                else g.reshape(n, module.out_channels, -1).sum(2)
                for name in names
            ]
            return torch.cat(rows, 1)

        numel = sum(p.numel() for _, p in params)
        if n * numel > x.numel() + g.numel():
            return StreamedConvFactor(make, n, numel)
        return RowsFactor(make())
