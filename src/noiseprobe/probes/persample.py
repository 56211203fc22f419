"""Per-sample gradients of any PyTorch model, kept in factored form.

Write J ∈ R^{N×P} for the matrix whose row i is ∇_w ℓ_i(w), the gradient of the per-sample loss ℓ_i
(whatever ``loss_fn`` returns per sample: no ½ is added or removed here). Everything the noise
covariance needs is a product with J, so J is never materialised unless asked for:

* :class:`HookFactors` (default for models whose parameters all sit in ``nn.Linear`` layers fed with
  (N, features) inputs, i.e. no weight sharing, and ``nn.Conv2d`` layers with groups = 1 and zero
  padding): one forward pass stores each layer's input a_i (with a 1 appended for the bias) and one
  backward pass of Σ_i ℓ_i gives each layer's output gradient g_i. The per-sample gradient of a Linear
  layer is the outer product g_i a_iᵀ, hence

      (J Jᵀ)_ij = Σ_layers (a_i·a_j)(g_i·g_j),     ‖∇ℓ_i‖² = Σ_layers ‖a_i‖²‖g_i‖²,
      (J v)_i = Σ_layers g_iᵀ V a_i,               Jᵀu = Σ_i u_i g_i a_iᵀ (per layer),
      Σ_i (∇ℓ_i)² = (g∘g)ᵀ(a∘a) (per layer, element-wise squares).

  A Conv2d layer shares its weight over T output positions, so its per-sample gradient
  Σ_t g_it a_itᵀ (a_it the unfolded input patch) is formed explicitly, (N, P_layer), from the same
  stored tensors — small for convolutions, whose P_layer is small.

* :class:`JacobianFactors`: the general fallback for any layer, J = ``torch.func.vmap(grad(ℓ))`` stored
  densely (also the test oracle of :class:`HookFactors`).

Samples must not interact in the forward pass (no BatchNorm in training mode): ℓ_i must depend on
sample i only.

Parameter vectors are flat, in the order of ``[p for p in model.parameters() if p.requires_grad]``,
each parameter flattened row-major (the order of :func:`torch.nn.utils.parameters_to_vector`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_choice, check_int

#: loss_fn(model_output, targets) -> per-sample losses of shape (N,)
PerSampleLoss = Callable[[Tensor, Tensor], Tensor]


class _Unsupported(ConfigError):
    """The model uses a Linear layer in a way the factored form does not cover (weight sharing)."""


class PerSampleGradients:
    """Products with the per-sample-gradient matrix J (N × P). Subclasses implement the primitives."""

    n: int
    num_params: int
    dtype: torch.dtype

    def gram(self) -> Tensor:
        """J Jᵀ, shape (N, N)."""
        raise NotImplementedError

    def sq_norms(self) -> Tensor:
        """‖∇ℓ_i‖², shape (N,)."""
        raise NotImplementedError

    def jvp(self, v: Tensor) -> Tensor:
        """J v for v of shape (P,) or (P, k); returns (N,) or (N, k)."""
        raise NotImplementedError

    def vjp(self, u: Tensor) -> Tensor:
        """Jᵀ u for u of shape (N,) or (N, k); returns (P,) or (P, k)."""
        raise NotImplementedError

    def sq_sum(self) -> Tensor:
        """Σ_i (∇ℓ_i)∘(∇ℓ_i), shape (P,)."""
        raise NotImplementedError

    def dense(self) -> Tensor:
        """J itself, shape (N, P) (small models only)."""
        raise NotImplementedError

    def mean(self) -> Tensor:
        """ḡ = ∇L = (1/N) Jᵀ1, shape (P,)."""
        return self.vjp(torch.full((self.n,), 1.0 / self.n, dtype=self.dtype))


def _trainable(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def _per_sample_losses(loss_fn: PerSampleLoss, out: Tensor, y: Tensor, n: int) -> Tensor:
    losses = loss_fn(out, y)
    if losses.shape != (n,):
        raise ConfigError("loss_fn", getattr(loss_fn, "__name__", type(loss_fn).__name__),
                          f"a per-sample loss returning shape ({n},), e.g. reduction='none'; got {tuple(losses.shape)}")
    return losses


class HookFactors(PerSampleGradients):
    """Per-sample gradients of a Linear/Conv2d model from stored layer inputs and output gradients.

    Cost: one forward and one backward pass to the layer outputs (no weight-gradient products), plus
    O(N²(d_in + d_out)) per Linear layer for :meth:`gram`, and per Conv2d layer one per-sample weight
    gradient (N·P_layer numbers) and its Gram.
    """

    def __init__(self, model: nn.Module, loss_fn: PerSampleLoss, x: Tensor, y: Tensor) -> None:
        if not supports_hooks(model):
            raise ConfigError("model", type(model).__name__, "a model whose trainable parameters all belong to "
                              "nn.Linear or nn.Conv2d (groups=1, zero padding) layers (else use method='func')")
        self.n, self.dtype = x.shape[0], x.dtype
        params = _trainable(model)
        offset = {id(p): o for p, o in zip(params, _offsets(params))}
        self.num_params = sum(p.numel() for p in params)
        layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
                  and any(p.requires_grad for p in m.parameters(recurse=False))]
        inputs: dict[nn.Module, Tensor] = {}
        outputs: dict[nn.Module, Tensor] = {}

        def hook(mod: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
            if mod in outputs:
                raise _Unsupported("model", type(model).__name__,
                                   "each layer called once per forward (else use method='func')")
            if isinstance(mod, nn.Linear) and args[0].dim() != 2:
                raise _Unsupported("model", type(model).__name__,
                                  "nn.Linear inputs of shape (N, features) (weight sharing: use method='func')")
            inputs[mod], outputs[mod] = args[0].detach(), out

        handles = [m.register_forward_hook(hook) for m in layers]
        try:
            with torch.enable_grad():
                out = model(x)
                losses = _per_sample_losses(loss_fn, out, y, self.n)
                grads = torch.autograd.grad(losses.sum(), [outputs[m] for m in layers], allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        # Linear: a (N, d_in [+1]), g (N, d_out) and the flat offsets of weight and bias;
        # Conv2d: its per-sample gradient rows (N, P_layer) and their flat offset
        self.layers: list[tuple[Tensor, Tensor, int | None, int | None]] = []
        self.blocks: list[tuple[Tensor, int]] = []
        for m, g in zip(layers, grads):
            a = inputs[m]
            g = torch.zeros_like(outputs[m]) if g is None else g.detach()
            w_off = offset[id(m.weight)] if m.weight.requires_grad else None
            b_off = offset[id(m.bias)] if m.bias is not None and m.bias.requires_grad else None
            if isinstance(m, nn.Conv2d):
                rows = _conv_rows(m, a, g, w_off is not None, b_off is not None)
                self.blocks.append((rows, w_off if w_off is not None else b_off))  # weight, bias adjacent
                continue
            if w_off is None:  # only the bias trains: its gradient is g itself
                a = a[:, :0]
            if b_off is not None:
                a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
            self.layers.append((a, g, w_off, b_off))

    def _split(self, vec: Tensor, a: Tensor, g: Tensor, w_off: int | None, b_off: int | None) -> Tensor:
        """The slice of a flat (P, k) vector belonging to one layer, as [W | b] of shape (k, d_out, d_in [+1])."""
        d_out, k = g.shape[1], vec.shape[1]
        parts = []
        if w_off is not None:
            d_in = a.shape[1] - (b_off is not None)
            parts.append(vec[w_off:w_off + d_out * d_in].T.reshape(k, d_out, d_in))
        if b_off is not None:
            parts.append(vec[b_off:b_off + d_out].T.reshape(k, d_out, 1))
        return torch.cat(parts, dim=2)

    def gram(self) -> Tensor:
        return (sum((a @ a.T) * (g @ g.T) for a, g, _, _ in self.layers)
                + sum(j @ j.T for j, _ in self.blocks))

    def sq_norms(self) -> Tensor:
        return (sum((a * a).sum(1) * (g * g).sum(1) for a, g, _, _ in self.layers)
                + sum((j * j).sum(1) for j, _ in self.blocks))

    def jvp(self, v: Tensor) -> Tensor:
        vec = v.reshape(self.num_params, -1)
        out = torch.zeros(self.n, vec.shape[1], dtype=self.dtype)
        for a, g, w_off, b_off in self.layers:
            vw = self._split(vec, a, g, w_off, b_off)  # (k, d_out, d_in')
            out += torch.einsum("no,koi,ni->nk", g, vw, a)
        for j, off in self.blocks:
            out += j @ vec[off:off + j.shape[1]]
        return out.reshape(self.n, *v.shape[1:])

    def _scatter(self, blocks: list[Tensor], conv: list[Tensor], k: int) -> Tensor:
        """Assemble per-Linear (k, d_out, d_in [+1]) blocks and per-Conv2d (P_layer, k) blocks into (P, k)."""
        out = torch.zeros(self.num_params, k, dtype=self.dtype)
        for c, (j, off) in zip(conv, self.blocks):
            out[off:off + j.shape[1]] = c
        for blk, (a, g, w_off, b_off) in zip(blocks, self.layers):
            d_out = g.shape[1]
            if w_off is not None:
                w = blk[:, :, :a.shape[1] - (b_off is not None)]
                out[w_off:w_off + w[0].numel()] = w.reshape(k, -1).T
            if b_off is not None:
                out[b_off:b_off + d_out] = blk[:, :, -1].T
        return out

    def vjp(self, u: Tensor) -> Tensor:
        uu = u.reshape(self.n, -1)
        k = uu.shape[1]
        # Σ_n u_nk g_no a_ni: one batched matmul per layer, (k, d_out, N) @ (k, N, d_in')
        blocks = [torch.bmm(g.T.unsqueeze(0) * uu.T.unsqueeze(1), a.expand(k, *a.shape)) for a, g, _, _ in self.layers]
        conv = [j.T @ uu for j, _ in self.blocks]
        return self._scatter(blocks, conv, k).reshape(self.num_params, *u.shape[1:])

    def sq_sum(self) -> Tensor:
        return self._scatter([((g * g).T @ (a * a)).unsqueeze(0) for a, g, _, _ in self.layers],
                             [(j * j).sum(0, keepdim=True).T for j, _ in self.blocks], 1)[:, 0]

    def dense(self) -> Tensor:
        return self.vjp(torch.eye(self.n, dtype=self.dtype)).T


class JacobianFactors(PerSampleGradients):
    """J materialised by ``torch.func.vmap(grad(ℓ))``: works for any layer; memory N·P."""

    def __init__(self, model: nn.Module, loss_fn: PerSampleLoss, x: Tensor, y: Tensor,
                 chunk_size: int | None = None) -> None:
        from torch.func import functional_call, grad, vmap

        self.n, self.dtype = x.shape[0], x.dtype
        m = min(self.n, 2)
        _per_sample_losses(loss_fn, model(x[:m]), y[:m], m)  # the same contract as HookFactors
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        buffers = {n: b.detach() for n, b in model.named_buffers()}

        def loss_i(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
            out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
            return loss_fn(out, yi.unsqueeze(0)).sum()

        per = vmap(grad(loss_i), in_dims=(None, 0, 0), chunk_size=chunk_size)(params, x, y)
        self.J = torch.cat([per[name].reshape(self.n, -1) for name in names], dim=1)
        self.num_params = self.J.shape[1]

    def gram(self) -> Tensor:
        return self.J @ self.J.T

    def sq_norms(self) -> Tensor:
        return (self.J * self.J).sum(1)

    def jvp(self, v: Tensor) -> Tensor:
        return self.J @ v

    def vjp(self, u: Tensor) -> Tensor:
        return self.J.T @ u

    def sq_sum(self) -> Tensor:
        return (self.J * self.J).sum(0)

    def dense(self) -> Tensor:
        return self.J


def _offsets(params: list[Tensor]) -> list[int]:
    offs, o = [], 0
    for p in params:
        offs.append(o)
        o += p.numel()
    return offs


def _conv_rows(m: nn.Conv2d, a: Tensor, g: Tensor, weight: bool, bias: bool) -> Tensor:
    """Per-sample gradient rows (N, P_layer) of a Conv2d: Σ_t g_t a_tᵀ over output positions t (weight,
    from the unfolded input patches, row-major as ``weight.view(out, -1)``), Σ_t g_t (bias)."""
    n, d_out = g.shape[:2]
    gg = g.reshape(n, d_out, -1)
    rows = []
    if weight:
        patches = torch.nn.functional.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)  # (N, C·kh·kw, T)
        rows.append(torch.bmm(gg, patches.transpose(1, 2)).reshape(n, -1))
    if bias:
        rows.append(gg.sum(2))
    return torch.cat(rows, dim=1)


def _hookable(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"
                                        and not isinstance(m.padding, str))


def supports_hooks(model: nn.Module) -> bool:
    """True when every trainable parameter belongs to an ``nn.Linear`` or a plain ``nn.Conv2d``
    (groups = 1, zero padding given as numbers)."""
    owned = {id(p) for m in model.modules() if _hookable(m) for p in m.parameters(recurse=False)}
    return all(id(p) in owned for p in _trainable(model))


def per_sample_gradients(model: nn.Module, loss_fn: PerSampleLoss, x: Tensor, y: Tensor,
                         method: Literal["auto", "hooks", "func"] = "auto",
                         chunk_size: int | None = None) -> PerSampleGradients:
    """Per-sample gradients of ``loss_fn(model(x), y)`` (shape (N,)) at the model's current weights.

    ``method``: "hooks" (layer inputs × output gradients; Linear and Conv2d models), "func" (torch.func
    vmap(grad), any model; ``chunk_size`` bounds its memory), "auto" (hooks when supported, else func).
    """
    check_choice("method", method, ("auto", "hooks", "func"))
    if x.shape[0] != y.shape[0] or x.shape[0] < 1:
        raise ConfigError("x, y", (tuple(x.shape), tuple(y.shape)), "the same number N >= 1 of samples")
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, lo=1)
    if method == "hooks":
        return HookFactors(model, loss_fn, x, y)
    if method == "auto" and supports_hooks(model):
        try:
            return HookFactors(model, loss_fn, x, y)
        except _Unsupported:
            pass
    return JacobianFactors(model, loss_fn, x, y, chunk_size)
