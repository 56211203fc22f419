"""Convolutions (nn.Conv1d/2d/3d) with any padding, padding mode, stride, dilation and groups.

The weight is shared over output positions, so its per-sample gradient is formed explicitly (N × P_layer,
small for convolutions): the input is padded as the layer pads it (zeros, reflect, replicate, circular,
'same'); a 2-D convolution with one group unfolds it into patches u (N, S, in·k²) and forms
∇_W ℓ_i = Σ_s g_is u_isᵀ by batched matmuls over chunks of samples (N·S·in·k²·out FLOPs; the patches of
a few samples at a time); any other convolution takes the weight gradient of a convolution with the batch
folded into the groups (N·groups groups; on CPU this grouped kernel ran ~5× slower than the batched matmul
on the ResNet-18 layout). N·P_layer memory.

Streaming: where N·P_layer exceeds what the layer's input and output gradient take (the deep, narrow-
spatial layers of a ResNet: 32 × 2.4 M floats against 2 × 32 × 512 × 16), the factor keeps x and g
instead (:class:`StreamedConvFactor`) and forms what a product needs inside it, dropping it after; its Gram
is computed once and kept, by the cheapest of three forms for 2-D one-group convolutions, each forming at
most the smaller of the rows (N·out·in·k²) and the patches (N·S·in·k²) plus chunks of :data:`CHUNK`
numbers: position pairs, (J Jᵀ)_ij = Σ_{s,s'} (u_is·u_js')(g_is·g_js'), where
:func:`~noiseprobe.probes.factors.use_pairs` (with T = S positions) finds them cheaper (4 × 4 at 512
channels) and the (N·S)² block holds ≤ CHUNK numbers; else with more output channels than positions the
explicit Gram by chunks of output channels from the whole patches; else the rows (by sample chunks).
docs/per_sample_layers.md, "Convolutions", has the measured memory breakdown and the choice per layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn import grad as nn_grad

from noiseprobe.probes.factors import Factor, RowsFactor, use_pairs
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


def _padded(module: ConvNd, x: Tensor) -> tuple[Tensor, tuple[int, ...] | int]:
    """x padded as the layer pads it where the convolution call cannot (a mode other than zeros, or a
    padding given as a string), with the padding left to the call."""
    padding = module.padding
    if module.padding_mode != "zeros" or isinstance(padding, str):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        return F.pad(x, module._reversed_padding_repeated_twice, mode=mode), 0
    return x, padding


def per_sample_conv_weight(module: ConvNd, x: Tensor, g: Tensor) -> Tensor:
    """∇_W ℓ_i for every sample: (N, out, in/groups, *kernel), from the input x and output gradient g."""
    n = x.shape[0]
    if x.dim() == 4 and module.groups == 1:  # 2-D, one group: Σ_s g_is u_isᵀ, batched matmuls by sample chunks
        out = x.new_empty(n, module.out_channels, module.weight[0].numel())
        gs = g.reshape(n, module.out_channels, -1)
        step = _sample_step(n, gs.shape[2] * module.weight[0].numel())
        for lo in range(0, n, step):
            torch.bmm(gs[lo : lo + step], _unfold(module, x[lo : lo + step]), out=out[lo : lo + step])
        return out.reshape(n, *module.weight.shape)
    x, padding = _padded(module, x)
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


def _sample_step(n: int, per_sample: int) -> int:
    """Samples per chunk so that a chunk of ``per_sample`` numbers each holds at most :data:`CHUNK`."""
    return max(1, min(n, CHUNK // max(1, per_sample)))


def _unfold(module: ConvNd, x: Tensor) -> Tensor:
    """The input patches u (N, S, in·k²) of a 2-D convolution with one group (S output positions, in the
    weight's column order)."""
    x, padding = _padded(module, x)
    return F.unfold(x, module.kernel_size, module.dilation, padding, module.stride).transpose(1, 2)


#: the most numbers formed at once by a product of a convolution's factor: a chunk of patches, of
#: per-sample gradients or of the position-pair block (2 M floats = 8 MB in float32; a training step of
#: the ResNet-18 layout at N = 32 adds ~100 MB, which the measurement's transients must stay well below)
CHUNK = 2**21


class StreamedConvFactor(Factor):
    """A convolution's block from its kept input x and output gradient g (module docstring): the rows are
    formed inside each product and dropped after it; Gram and squared norms are computed once, by
    position pairs where :func:`~noiseprobe.probes.factors.use_pairs` finds them cheaper."""

    def __init__(self, module: ConvNd, x: Tensor, g: Tensor, names: list[str]) -> None:
        self.module, self.x, self.g, self.names = module, x, g, names
        self.n = x.shape[0]
        self.numel = sum(module.get_parameter(name).numel() for name in names)
        self._gram: Tensor | None = None

    def rows(self) -> Tensor:
        n, m = self.n, self.module
        parts = [
            per_sample_conv_weight(m, self.x, self.g).reshape(n, -1)
            if name == "weight"
            else self.g.reshape(n, m.out_channels, -1).sum(2)
            for name in self.names
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    def _pair_gram(self) -> Tensor | None:
        """Σ_{s,s'} (u_is·u_js')(g_is·g_js') + bias Gram, or None where the explicit form is cheaper."""
        n, c = self.n, self.module.out_channels
        g = self.g.reshape(n, c, -1).transpose(1, 2)  # (N, S, out)
        s = g.shape[1]
        k = self.module.weight[0].numel()
        if "weight" not in self.names or self.x.dim() != 4 or self.module.groups != 1 or (n * s) ** 2 > CHUNK:
            return None
        if not use_pairs(n, s, c, k):
            return None
        u, gf = _unfold(self.module, self.x).reshape(n * s, -1), g.reshape(n * s, c)
        gram = ((u @ u.T) * (gf @ gf.T)).reshape(n, s, n, s).sum((1, 3))
        return gram + self._bias_gram()

    def _bias_gram(self) -> Tensor | float:
        if "bias" not in self.names:
            return 0.0
        gb = self.g.reshape(self.n, self.module.out_channels, -1).sum(2)
        return gb @ gb.T

    def _channel_gram(self) -> Tensor | None:
        """The explicit Gram in chunks of output channels, Σ_c J_c J_cᵀ with J_c = Σ_s g_is[c] u_isᵀ, for a
        2-D one-group convolution whose patches (N·S·in·k²) take less than its rows (N·out·in·k²: more
        output channels than positions); None otherwise (then the rows, formed by sample chunks)."""
        n, m = self.n, self.module
        k = m.weight[0].numel()
        gs = self.g.reshape(n, m.out_channels, -1)
        if "weight" not in self.names or self.x.dim() != 4 or m.groups != 1 or m.out_channels <= gs.shape[2]:
            return None
        x, padding = _padded(m, self.x)
        u = F.unfold(x, m.kernel_size, m.dilation, padding, m.stride)  # (N, in·k², S), as unfold lays it out
        gram = u.new_zeros(n, n)
        step = max(1, CHUNK // (n * k))
        for lo in range(0, m.out_channels, step):  # J_c transposed, (N, in·k², c): the same Gram, no copy of u
            r = torch.bmm(u, gs[:, lo : lo + step].transpose(1, 2)).reshape(n, -1)
            gram += r @ r.T
        return gram + self._bias_gram()

    def gram(self) -> Tensor:
        if self._gram is None:
            self._gram = self._pair_gram()
            if self._gram is None:
                self._gram = self._channel_gram()
            if self._gram is None:
                j = self.rows()
                self._gram = j @ j.T
        return self._gram.clone()  # callers may sum into it

    def sq_norms(self) -> Tensor:
        return self.gram().diagonal().clone()

    def jvp(self, v: Tensor) -> Tensor:
        return self.rows() @ v

    def vjp(self, u: Tensor) -> Tensor:
        return self.rows().T @ u

    def sq_sum(self) -> Tensor:
        j = self.rows()
        return (j * j).sum(0)


@register_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvRule(Rule[ConvNd]):
    """∇_W ℓ_i by :func:`per_sample_conv_weight`; ∇_b ℓ_i = Σ_positions g_i; streamed where the rows
    outweigh x and g."""

    def factor(self, module: ConvNd, call: Call, params: Named, n: int) -> Factor:
        g = call.grads[0]
        dtype = accumulation_dtype(g)
        x, g = batch_leading(call, call.input, n).to(dtype), g.to(dtype)
        streamed = StreamedConvFactor(module, x, g, [name for name, _ in params])
        if n * streamed.numel > x.numel() + g.numel():
            return streamed
        return RowsFactor(streamed.rows())
