"""Factored per-sample gradients of one block of parameters, and the products the quantities need.

A *block* is a set of parameters whose per-sample gradients one factor describes: the rows of
J_b ∈ R^{N×P_b}, in the block's local layout (its parameters flattened row-major, concatenated).
Every factor gives

    gram = J_b J_bᵀ (N, N),  sq_norms = ‖J_b,i‖² (N,),  jvp = J_b v,  vjp = J_bᵀ u,
    sq_sum = Σ_i J_b,i ∘ J_b,i (P_b,),  rows = J_b (N, P_b),

and the per-sample-gradient engine (:mod:`noiseprobe.probes.persample`) sums them over blocks.

* :class:`RowsFactor`: J_b stored explicitly (convolutions, normalisation layers, the vmap fallback).
* :class:`OuterFactor`: a matrix parameter M ∈ R^{m×K} whose per-sample gradient is a sum of outer
  products over the T positions that share it (tokens, a Linear applied several times):

      ∇_M ℓ_i = Σ_t L_it R_itᵀ,   L_i ∈ R^{T×m} (output gradients), R_i ∈ R^{T×K} (inputs, [a, 1] with bias).

  Two ways to a Gram matrix, chosen per block by FLOP count (the *cost model*, see :func:`use_pairs`):
  *token pairs* (J Jᵀ)_ij = Σ_{t,t'} (L_it·L_jt')(R_it·R_jt'), N²T²(m + K) FLOPs and no N×P_b storage,
  or the *explicit* per-sample gradient formed in chunks of output rows and multiplied, N·T·m·K + N²·m·K
  FLOPs and at most :data:`CHUNK` numbers at a time. Token pairs win for short sequences (T = 1: a plain
  MLP), explicit rows for long ones. Products with c vectors go through the explicit chunks when that is
  cheaper, (c − 1)(T − 1) > 1 (:meth:`OuterFactor._via_rows`). L may be integer ids (an ``nn.Embedding``: L_it = one-hot(id_it)),
  kept as ids: L_it·L_jt' = [id_it = id_jt'].
* :class:`SummedOuterFactor`: the sum of an ids factor and a float one of the same matrix (a tied
  embedding and output head), by explicit chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

#: the most numbers one explicit chunk of per-sample gradients or token-pair Gram block may hold
CHUNK = 1 << 24


class Factor:
    """Products with a per-sample-gradient matrix J (N × P; for a block, its own P_b columns)."""

    n: int
    numel: int

    def gram(self) -> Tensor:
        """J Jᵀ, shape (N, N)."""
        raise NotImplementedError

    def sq_norms(self) -> Tensor:
        """‖J_i‖² = ‖∇ℓ_i‖², shape (N,)."""
        raise NotImplementedError

    def jvp(self, v: Tensor) -> Tensor:
        """J v for v of shape (P, k) → (N, k)."""
        raise NotImplementedError

    def vjp(self, u: Tensor) -> Tensor:
        """Jᵀ u for u of shape (N, k) → (P, k)."""
        raise NotImplementedError

    def sq_sum(self) -> Tensor:
        """Σ_i J_i∘J_i, shape (P,)."""
        raise NotImplementedError

    def rows(self) -> Tensor:
        """J itself, shape (N, P)."""
        raise NotImplementedError


class RowsFactor(Factor):
    """J_b held explicitly, (N, P_b)."""

    def __init__(self, rows: Tensor) -> None:
        self.j = rows
        self.n, self.numel = rows.shape

    def gram(self) -> Tensor:
        return self.j @ self.j.T

    def sq_norms(self) -> Tensor:
        return (self.j * self.j).sum(1)

    def jvp(self, v: Tensor) -> Tensor:
        return self.j @ v

    def vjp(self, u: Tensor) -> Tensor:
        return self.j.T @ u

    def sq_sum(self) -> Tensor:
        return (self.j * self.j).sum(0)

    def rows(self) -> Tensor:
        return self.j


@dataclass(frozen=True)
class Layout:
    """How the block's local vector maps to M (m × K): a weight (m, k) — stored (k, m) when ``transposed``
    (transformers' Conv1D) — in columns [0, k), then a bias (m,) in column k; either may be absent."""

    m: int
    k: int
    weight: bool
    bias: bool
    transposed: bool = False

    @property
    def cols(self) -> int:
        return self.k * self.weight + self.bias

    def to_matrix(self, vec: Tensor) -> Tensor:
        """(P_b, c) → (c, m, K)."""
        c, parts, o = vec.shape[1], [], 0
        if self.weight:
            w = vec[: self.m * self.k].T
            parts.append(
                w.reshape(c, self.k, self.m).transpose(1, 2) if self.transposed else w.reshape(c, self.m, self.k)
            )
            o = self.m * self.k
        if self.bias:
            parts.append(vec[o : o + self.m].T.reshape(c, self.m, 1))
        return torch.cat(parts, 2) if len(parts) > 1 else parts[0]

    def from_matrix(self, mat: Tensor) -> Tensor:
        """(c, m, K) → (P_b, c)."""
        c, parts = mat.shape[0], []
        if self.weight:
            w = mat[:, :, : self.k]
            parts.append((w.transpose(1, 2) if self.transposed else w).reshape(c, -1))
        if self.bias:
            parts.append(mat[:, :, -1])
        return torch.cat(parts, 1).T


def use_pairs(n: int, t: int, m: int, cols: int) -> bool:
    """The cost model of a Gram matrix: token pairs N²T²(m + K) against explicit N·T·m·K + N²·m·K FLOPs
    (for ids, m counts 1 in the pair form: an equality test)."""
    return n * t * t * (m + cols) < t * m * cols + n * m * cols


class OuterFactor(Factor):
    """∇_M ℓ_i = Σ_t L_it R_itᵀ (module docstring). ``left`` (N, T, m) floats or (N, T) integer ids,
    ``right`` (N, T, K) with the bias column of ones already appended when ``layout.bias``."""

    def __init__(self, left: Tensor, right: Tensor, layout: Layout) -> None:
        self.left, self.right, self.layout = left, right, layout
        self.ids = not left.is_floating_point()
        self.n, self.t = right.shape[:2]
        self.m, self.cols = layout.m, right.shape[2]
        self.numel = self.m * layout.k * layout.weight + self.m * layout.bias

    @staticmethod
    def cat(factors: list[OuterFactor]) -> OuterFactor:
        """One factor for the sum of several of one layout (the same parameters used at more positions): the
        position axes are concatenated per kind of ``left`` (ids, floats); two kinds (a tied embedding and
        output head) give a :class:`SummedOuterFactor`."""
        kinds = [[f for f in factors if f.ids == ids] for ids in (True, False)]
        parts = [
            OuterFactor(torch.cat([f.left for f in fs], 1), torch.cat([f.right for f in fs], 1), fs[0].layout)
            for fs in kinds
            if fs
        ]
        return parts[0] if len(parts) == 1 else SummedOuterFactor(parts)

    def _left_gram(self, rows: slice) -> Tensor:
        """(L_it·L_jt') for the samples in ``rows`` against all: (c·T, N·T)."""
        if self.ids:
            flat = self.left.reshape(-1)
            return (self.left[rows].reshape(-1, 1) == flat).to(self.right.dtype)
        flat = self.left.reshape(-1, self.m)
        return self.left[rows].reshape(-1, self.m) @ flat.T

    def _chunk(self, lo: int, hi: int) -> Tensor:
        """Per-sample gradients of output rows lo..hi−1, (N, hi − lo, K): for ids, R_it added into row id_it
        (N·T·K additions, not the N·T·(hi − lo)·K of a one-hot product)."""
        if not self.ids:
            return torch.bmm(self.left[..., lo:hi].transpose(1, 2), self.right)
        out = self.right.new_zeros(self.n, hi - lo, self.cols)
        i, t = ((self.left >= lo) & (self.left < hi)).nonzero(as_tuple=True)
        return out.index_put_((i, self.left[i, t] - lo), self.right[i, t], accumulate=True)

    def _spans(self) -> Iterator[tuple[int, int]]:
        """Chunks of output rows whose per-sample gradients hold at most CHUNK numbers."""
        step = max(1, CHUNK // max(1, self.n * self.cols))
        for lo in range(0, self.m, step):
            yield lo, min(lo + step, self.m)

    def _explicit(self) -> Iterator[Tensor]:
        """Per-sample gradients in chunks of output rows, formed one at a time."""
        for lo, hi in self._spans():
            yield self._chunk(lo, hi)

    def _via_rows(self, c: int) -> bool:
        """Products with c vectors: direct c·N·T·m·K FLOPs, or through explicit chunks N·T·m·K + c·N·m·K,
        cheaper when (c − 1)(T − 1) > 1 (not for ids: their direct product is a gather)."""
        return not self.ids and (c - 1) * (self.t - 1) > 1

    def _pairs(self) -> bool:
        return use_pairs(self.n, self.t, 1 if self.ids else self.m, self.cols)

    def gram(self) -> Tensor:
        n, t = self.n, self.t
        if not self._pairs():
            out = self.right.new_zeros(n, n)
            for e in self._explicit():
                out += e.reshape(n, -1) @ e.reshape(n, -1).T
            return out
        rflat = self.right.reshape(n * t, -1)
        if t == 1:  # (a_i·a_j)(g_i·g_j): the output itself is the N×N block
            return self._left_gram(slice(None)) * (rflat @ rflat.T)
        step = max(1, CHUNK // (n * t * t))
        blocks = []
        for lo in range(0, n, step):
            rows = slice(lo, min(lo + step, n))
            prod = self._left_gram(rows) * (self.right[rows].reshape(-1, self.cols) @ rflat.T)
            blocks.append(prod.reshape(-1, t, n, t).sum((1, 3)))
        return torch.cat(blocks)

    def sq_norms(self) -> Tensor:
        if self.t > 1 and not self._pairs():
            out = self.right.new_zeros(self.n)
            for e in self._explicit():
                out += (e * e).sum((1, 2))
            return out
        if self.ids:
            ll = (self.left[:, :, None] == self.left[:, None, :]).to(self.right.dtype)
        else:
            ll = self.left @ self.left.transpose(1, 2)
        return (ll * (self.right @ self.right.transpose(1, 2))).sum((1, 2))

    def jvp(self, v: Tensor) -> Tensor:
        mats = self.layout.to_matrix(v)  # (c, m, K)
        if not self._via_rows(mats.shape[0]):
            return self._direct_jvp(mats)
        out = mats.new_zeros(self.n, mats.shape[0])
        for lo, hi in self._spans():
            out += self._chunk(lo, hi).reshape(self.n, -1) @ mats[:, lo:hi].reshape(mats.shape[0], -1).T
        return out

    def vjp(self, u: Tensor) -> Tensor:
        if not self._via_rows(u.shape[1]):
            return self.layout.from_matrix(self._direct_vjp(u))
        mats = [
            (u.T @ self._chunk(lo, hi).reshape(self.n, -1)).reshape(u.shape[1], hi - lo, -1) for lo, hi in self._spans()
        ]
        return self.layout.from_matrix(torch.cat(mats, 1))

    def _direct_jvp(self, mats: Tensor) -> Tensor:
        """Σ_t L_itᵀ M R_it for M of shape (c, m, K) → (N, c), without per-sample gradients."""
        rflat = self.right.reshape(-1, self.cols)
        if self.ids:
            prod = (mats[:, self.left.reshape(-1)] * rflat).sum(-1)  # gather rows: (c, N·T)
        elif self.m <= self.cols:  # the (c, N·T, ·) intermediate on the narrower side
            prod = ((rflat @ mats.transpose(1, 2)) * self.left.reshape(-1, self.m)).sum(-1)
        else:
            prod = ((self.left.reshape(-1, self.m) @ mats) * rflat).sum(-1)
        return prod.reshape(-1, self.n, self.t).sum(-1).T

    def _direct_vjp(self, u: Tensor) -> Tensor:
        """Σ_i u_i Σ_t L_it R_itᵀ for u of shape (N, c) → (c, m, K), without per-sample gradients."""
        c, nt = u.shape[1], self.n * self.t
        weights = u.T[:, :, None, None]  # (c, N, 1, 1): u_i on every position of sample i
        rflat = self.right.reshape(nt, self.cols)
        if self.ids:
            ru = (self.right[None] * weights).reshape(c, nt, self.cols)
            return ru.new_zeros(c, self.m, self.cols).index_add_(1, self.left.reshape(-1), ru)
        if self.m <= self.cols:  # scale the narrower factor
            return (self.left[None] * weights).reshape(c, nt, self.m).transpose(1, 2) @ rflat
        return self.left.reshape(nt, self.m).T @ (self.right[None] * weights).reshape(c, nt, self.cols)

    def sq_sum(self) -> Tensor:
        if self.t == 1 and not self.ids:
            sq = ((self.left[:, 0] ** 2).T @ self.right[:, 0] ** 2)[None]
        elif self.t == 1:
            sq = self.right.new_zeros(1, self.m, self.cols).index_add_(1, self.left[:, 0], self.right[:, 0] ** 2)
        else:
            sq = torch.cat([(e * e).sum(0) for e in self._explicit()])[None]
        return self.layout.from_matrix(sq)[:, 0]

    def rows(self) -> Tensor:
        return self.layout.from_matrix(torch.cat(list(self._explicit()), 1)).T


class SummedOuterFactor(OuterFactor):
    """The sum of OuterFactors of one layout with ids in one and floats in another (a tied embedding and
    output head): products by explicit chunks summed over the parts, so ids are one-hot one chunk at a time
    (never N·T·V numbers at once); direct J v and Jᵀ u part by part."""

    def __init__(self, parts: list[OuterFactor]) -> None:
        super().__init__(parts[-1].left, parts[-1].right, parts[0].layout)
        self.parts, self.ids = parts, False
        self.t = sum(p.t for p in parts)

    def _pairs(self) -> bool:
        return False

    def _chunk(self, lo: int, hi: int) -> Tensor:
        out = self.parts[0]._chunk(lo, hi)
        for p in self.parts[1:]:
            out += p._chunk(lo, hi)
        return out

    def _direct_jvp(self, mats: Tensor) -> Tensor:
        return torch.stack([p._direct_jvp(mats) for p in self.parts]).sum(0)

    def _direct_vjp(self, u: Tensor) -> Tensor:
        return torch.stack([p._direct_vjp(u) for p in self.parts]).sum(0)
