"""The square loss of a multilayer perceptron on flat parameter vectors, with its exact Hessian diagonal.

``f(w, x) = W_L φ(… φ(W_1 x + b_1) …) + b_L`` on sizes ``(D, h_1, …, h_{L−1}, C)``, and
``L(w) = (1/(2N)) Σ_n |f(w, x_n) − y_n|²`` (½ convention, full batch). w (..., d) holds the layers in
order, each ``W_l`` (h_l, h_{l−1}) row-major followed by ``b_l`` (h_l) when ``bias``; every function
broadcasts over the leading dims of w.

The Hessian diagonal is exact and costs about one more forward/backward pass (backpropagated curvature,
per sample n; ``z_l`` the pre-activations, ``a_l = φ(z_l)``, ``a_0 = x``, ``g_l = ∂L/∂z_l``):

    Q_L = I_C / N,   Q_{l−1} = diag(φ'(z_{l−1})) W_lᵀ Q_l W_l diag(φ'(z_{l−1})) + diag(φ''(z_{l−1}) ∘ W_lᵀ g_l),
    ∂²L/∂(W_l)_ij² = Σ_n (Q_l)_ii a_{l−1,j}²,   ∂²L/∂(b_l)_i² = Σ_n (Q_l)_ii,

because ``(W_l)_ij`` enters only ``z_l,i`` and linearly, and the loss is a sum over samples (Q_l is
block-diagonal in n). Only the diagonal of Q_1 is formed. It is what Gaussian DropConnect's
regulariser ``Reg = ½ Σ_i w_i² ∂²_ii L`` needs (:func:`noiseprobe.limits.noises.dropconnect`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_choice, check_int

ACTIVATIONS = ("tanh", "relu", "linear")


def _activation(name: str, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """φ(z), φ'(z), φ''(z) (ReLU: φ'' = 0 away from 0, where the Hessian is defined)."""
    if name == "tanh":
        t = torch.tanh(z)
        d1 = 1.0 - t * t
        return t, d1, -2.0 * t * d1
    if name == "relu":
        pos = (z > 0).to(z.dtype)
        return z * pos, pos, torch.zeros_like(z)
    return z, torch.ones_like(z), torch.zeros_like(z)


class MLPLoss:
    """``L(w) = (1/(2N)) Σ_n |f(w, x_n) − y_n|²`` for an MLP with flat parameters w (..., d).

    sizes: ``(D, h_1, …, C)`` (at least two); X: (N, D); y: (N, C) or (N,) when C = 1; activation: one of
    :data:`ACTIVATIONS` on every hidden layer; bias: whether each layer has a bias.
    """

    def __init__(
        self, sizes: Sequence[int], X: Tensor, y: Tensor, activation: str = "tanh", bias: bool = False
    ) -> None:
        if len(sizes) < 2:
            raise ConfigError("sizes", list(sizes), "at least (inputs, outputs)")
        self.sizes = [check_int(f"sizes[{i}]", s, lo=1) for i, s in enumerate(sizes)]
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.bias = bool(bias)
        self.X = torch.as_tensor(X, dtype=torch.float64)
        y = torch.as_tensor(y, dtype=torch.float64)
        self.y = y[:, None] if y.dim() == 1 else y
        if self.X.shape[1:] != (self.sizes[0],) or self.y.shape != (self.X.shape[0], self.sizes[-1]):
            raise ConfigError(
                "X, y",
                (tuple(self.X.shape), tuple(self.y.shape)),
                f"X (N, {self.sizes[0]}) and y (N, {self.sizes[-1]}) with the same N",
            )
        self.d = sum(o * (i + self.bias) for i, o in zip(self.sizes[:-1], self.sizes[1:]))

    def layers(self, w: Tensor) -> list[tuple[Tensor, Tensor | None]]:
        """``[(W_l (..., h_l, h_{l−1}), b_l (..., h_l) or None)]`` as views of w (..., d)."""
        if w.shape[-1] != self.d:
            raise ConfigError("w", tuple(w.shape), f"an array of shape (..., {self.d})")
        out, k = [], 0
        for i, o in zip(self.sizes[:-1], self.sizes[1:]):
            W = w[..., k : k + o * i].reshape(*w.shape[:-1], o, i)
            k += o * i
            b = w[..., k : k + o] if self.bias else None
            k += o if self.bias else 0
            out.append((W, b))
        return out

    def _forward(self, w: Tensor) -> tuple[list[Tensor], list[tuple[Tensor, Tensor, Tensor]], Tensor]:
        """Layer inputs a_0 … a_{L−1} (..., N, h), (φ, φ', φ'') of the hidden pre-activations, output (..., N, C)."""
        a = self.X
        inputs: list[Tensor] = []
        acts: list[tuple[Tensor, Tensor, Tensor]] = []
        layers = self.layers(w)
        for k, (W, b) in enumerate(layers):
            inputs.append(a)
            z = a @ W.transpose(-1, -2) + (0.0 if b is None else b[..., None, :])
            if k == len(layers) - 1:
                return inputs, acts, z
            acts.append(_activation(self.activation, z))
            a = acts[-1][0]
        raise AssertionError("unreachable")

    def __call__(self, w: Tensor) -> Tensor:
        _, _, f = self._forward(w)
        return 0.5 * ((f - self.y) ** 2).sum(-1).mean(-1)

    def hessian_diagonal(self, w: Tensor) -> Tensor:
        """``∂²L/∂w_i²`` for every parameter, shape (..., d), exact (module docstring); differentiable in w."""
        inputs, acts, f = self._forward(w)
        layers = self.layers(w)
        N, C = f.shape[-2], f.shape[-1]
        g = (f - self.y) / N  # ∂L/∂z_L (..., N, C)
        Q = torch.eye(C, dtype=f.dtype, device=f.device).expand(*f.shape, C) / N  # ∂²L/∂z_L² per sample
        q = Q.diagonal(dim1=-2, dim2=-1)
        parts: list[Tensor] = []
        for k in range(len(layers) - 1, -1, -1):
            W, b = layers[k]
            hw = q.transpose(-1, -2) @ inputs[k] ** 2  # (..., h_k, h_{k−1})
            parts[:0] = [hw.flatten(-2)] + ([q.sum(-2)] if b is not None else [])
            if k == 0:
                break
            _, d1, d2 = acts[k - 1]
            gW = g @ W  # W_kᵀ g_k per sample
            curv = d2 * gW
            if k == 1:  # only diag(Q_0) needed
                q = d1 * d1 * ((Q @ W[..., None, :, :]) * W[..., None, :, :]).sum(-2) + curv
            else:
                Q = d1[..., :, None] * (W.transpose(-1, -2)[..., None, :, :] @ Q @ W[..., None, :, :]) * d1[
                    ..., None, :
                ] + torch.diag_embed(curv)
                q = Q.diagonal(dim1=-2, dim2=-1)
            g = d1 * gW
        return torch.cat(parts, -1)
