"""Local gradient and Hessian at one layer's pre-activations; the full-Hessian trace.

Model-agnostic instruments for any ``nn.Module`` (used by the NIN probe, paper 001 eq. 3):

    g_i = ∇_{z_i} ℓ_i,        H_i = ∇_{z_i} ∇_{z_i}ᵀ ℓ_i                                     (eq. 3)

with z_i the output of the named submodule for sample i and ℓ_i the per-sample loss. ``loss_fn(out, y)``
must return the *batch mean* L = (1/B) Σ_i ℓ_i (PyTorch's default ``reduction="mean"``; whatever ½ or
normalisation it contains is the convention of the result), and samples must not interact in the
forward pass (no BatchNorm in training mode), so that ∂²L/∂Z² is block diagonal with blocks H_i / B and

    Tr⟨H⟩ = (1/B) Σ_i Tr H_i = Tr ∂²L/∂Z²,          ⟨uᵀHu⟩ = Uᵀ (∂²L/∂Z²) U,   U_i = u for all i.

All Hessian products are double-backward Hessian-vector products; nothing of size d² is formed. Traces
are Hutchinson's (:func:`~noiseprobe.probes.estimators.hutchinson_trace`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.probes.estimators import hutchinson_trace
from noiseprobe.probes.operators.hessian import param_hvp
from noiseprobe.probes.persample import select_parameters

#: loss_fn(model_output, targets) -> scalar batch-mean loss
MeanLoss = Callable[[Tensor, Tensor], Tensor]


@contextmanager
def eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Run the block with ``model.eval()`` and autograd off, then restore the model's training mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class LocalObjective:
    """The batch loss L as a function of the output Z of one submodule (the upstream graph is cut).

    ``grad`` is ∂L/∂Z (shape of Z); :meth:`hvp` gives (∂²L/∂Z²) V by double backward.
    """

    def __init__(self, model: nn.Module, module_name: str, loss_fn: MeanLoss, X: Tensor, y: Tensor) -> None:
        modules = dict(model.named_modules())
        if module_name not in modules or module_name == "":
            raise ConfigError("module_name", module_name, "a submodule name of the model")
        captured: list[Tensor] = []

        def hook(_m: nn.Module, _a: object, out: object) -> Tensor:
            if not isinstance(out, Tensor):
                raise ConfigError("module_name", module_name, "a submodule whose output is one tensor")
            z = out.detach().requires_grad_(True)
            captured.append(z)
            return z

        handle = modules[module_name].register_forward_hook(hook)
        try:
            with torch.enable_grad():
                loss = loss_fn(model(X), y)
                if len(captured) != 1:
                    raise ConfigError("module_name", module_name, "a submodule called exactly once per forward pass")
                if loss.dim() != 0:
                    raise ConfigError(
                        "loss_fn",
                        getattr(loss_fn, "__name__", loss_fn),
                        "a function returning the scalar batch-mean loss",
                    )
                self.z, self.loss, self.batch = captured[0], loss, X.shape[0]
                self.grad = torch.autograd.grad(loss, self.z, create_graph=True)[0]
        finally:
            handle.remove()

    def hvp(self, v: Tensor) -> Tensor:
        """(∂²L/∂Z²) v for v of Z's shape, or of shape (m, *Z.shape) for m products at once."""
        batched = v.dim() == self.z.dim() + 1
        (hv,) = torch.autograd.grad(
            self.grad, self.z, v, retain_graph=True, allow_unused=True, is_grads_batched=batched
        )
        return torch.zeros_like(v) if hv is None else hv.detach()

    def grad_rms(self) -> float:
        """‖√⟨g²⟩‖₂ = √((1/B) Σ_i ‖g_i‖²), with per-sample gradients g_i = B ∂L/∂z_i (eq. 2, 3)."""
        g = self.grad.detach().reshape(self.batch, -1) * self.batch
        return float(g.pow(2).sum(1).mean().sqrt())

    def curvature(self, direction: Tensor) -> float:
        """⟨uᵀ H u⟩ = Uᵀ (∂²L/∂Z²) U for a direction U of Z's shape (e.g. u repeated over samples);
        for a stack (m, *Z.shape) the sum of the m quadratic forms (one batched pass)."""
        return float((direction * self.hvp(direction)).sum())


def local_grad_hessian(
    model: nn.Module,
    module_name: str,
    loss_fn: MeanLoss,
    X: Tensor,
    y: Tensor,
    *,
    n_probes: int,
    generator: torch.Generator,
    block: int | None = 64,
) -> tuple[float, float, float]:
    """(√⟨g²⟩ norm, Tr⟨H⟩ Hutchinson mean, its standard error) at ``module_name``'s output (eq. 3).

    ``block`` probes share one batched double-backward pass (``None``: one pass per probe, less memory).

    The model runs in its current mode (call ``model.eval()``, or a NIN handle's ``clean()``, for ε = 0).
    """
    obj = LocalObjective(model, module_name, loss_fn, X, y)
    mean, se = hutchinson_trace(
        obj.hvp, tuple(obj.z.shape), n_probes, generator, dtype=obj.z.dtype, device=obj.z.device, block=block
    )
    return obj.grad_rms(), mean, se


def full_hessian_trace(
    model: nn.Module,
    loss_fn: MeanLoss,
    X: Tensor,
    y: Tensor,
    *,
    n_probes: int,
    generator: torch.Generator,
    params: list[Tensor] | None = None,
    block: int | None = 16,
) -> tuple[float, float]:
    """Tr ∇²_θ L over ``params`` (default: all trainable parameters) by Hutchinson: (mean, se);
    ``block`` as in :func:`~noiseprobe.probes.estimators.hutchinson_trace`."""
    params = [p for _, p in select_parameters(model)] if params is None else params
    with torch.enable_grad():
        loss = loss_fn(model(X), y)
        hvp = param_hvp(loss, params)
        dim = sum(p.numel() for p in params)
        return hutchinson_trace(
            hvp, dim, n_probes, generator, dtype=params[0].dtype, device=params[0].device, block=block
        )


def consumer_module(model: nn.Module, module_name: str, example_input: Tensor) -> str | None:
    """The first module with its own parameters whose forward starts after ``module_name``'s forward
    ends, in one eval-mode forward pass on ``example_input``: the paper's "subsequent layer" (None if none)."""
    modules = dict(model.named_modules())
    if module_name not in modules:
        raise ConfigError("module_name", module_name, "a submodule name of the model")
    order: list[str] = []
    done = [False]
    hooks = [modules[module_name].register_forward_hook(lambda *_: done.__setitem__(0, True))]
    for name, mod in modules.items():
        if name != module_name and next(mod.parameters(recurse=False), None) is not None:
            hooks.append(mod.register_forward_pre_hook(lambda *_, n=name: order.append(n) if done[0] else None))
    try:
        with eval_no_grad(model):
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    return order[0] if order else None
