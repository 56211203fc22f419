"""Independent references for per-sample gradients: dense vmap(grad) of a per-sample loss written out
for one sample, and a checker of every factored product against the dense J."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from noiseprobe.probes.persample import PerSampleGradients

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def func_rows(model: nn.Module, loss_one: Callable[..., Tensor], *batch: Tensor) -> Tensor:
    """J (N, P) by vmap(grad) of ``loss_one(out_of(inputs of one sample with a batch axis of 1), ...)``:
    ``loss_one(call, *sample)`` gets ``call(*args) = functional_call(model, params, args)``."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def one(p: dict[str, Tensor], *sample: Tensor) -> Tensor:
        return loss_one(lambda *args, **kw: functional_call(model, (p, buffers), args, kw), *sample)

    with sdpa_kernel([SDPBackend.MATH]):  # fused attention kernels have no vmap batching rule
        per = vmap(grad(one), in_dims=(None, *[0] * len(batch)))(params, *batch)
    # model.named_parameters() lists a tied parameter once, under its first name: the flat order
    return torch.cat([per[n].reshape(batch[0].shape[0], -1) for n in names], 1)


def assert_products(fac: PerSampleGradients, j: Tensor, rtol: float, atol: float) -> None:
    """Every product of ``fac`` against the dense J."""
    g = torch.Generator().manual_seed(7)
    assert fac.num_params == j.shape[1] and fac.n == j.shape[0]
    v = torch.randn(j.shape[1], 3, generator=g, dtype=j.dtype).to(j.device)
    u = torch.randn(j.shape[0], 2, generator=g, dtype=j.dtype).to(j.device)
    scale = float(j.abs().max())
    torch.testing.assert_close(fac.dense(), j, rtol=rtol, atol=atol * scale)
    torch.testing.assert_close(fac.gram(), j @ j.T, rtol=rtol, atol=atol * scale**2)
    torch.testing.assert_close(fac.sq_norms(), (j * j).sum(1), rtol=rtol, atol=atol * scale**2)
    torch.testing.assert_close(fac.sq_sum(), (j * j).sum(0), rtol=rtol, atol=atol * scale**2)
    torch.testing.assert_close(fac.jvp(v), j @ v, rtol=rtol, atol=atol * scale * 10)
    torch.testing.assert_close(fac.jvp(v[:, 0]), j @ v[:, 0], rtol=rtol, atol=atol * scale * 10)
    torch.testing.assert_close(fac.vjp(u), j.T @ u, rtol=rtol, atol=atol * scale * 10)
    torch.testing.assert_close(fac.mean(), j.mean(0), rtol=rtol, atol=atol * scale)
