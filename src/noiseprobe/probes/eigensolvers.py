"""Top eigenpairs, the one home of the package's eigensolver: :func:`lanczos`, the k extreme eigenpairs of
a symmetric operator. An operator known by its products (any
:class:`~noiseprobe.probes.operators.base.ParamOperator`: noise covariance, empirical Fisher, Hessian,
Gauss–Newton; a :class:`scipy.sparse.linalg.LinearOperator`) goes through block Lanczos with a warm start
and error estimates; an explicit matrix (a dense symmetric tensor or array, such as the N × N Gram
matrices of :mod:`noiseprobe.probes.operators.gram`) is solved on the matrix itself: dense ``eigh`` when
small, else a randomized block Krylov iteration (on the N = 1000 float32 Gram of
``benchmarks/bench_covariance.py``, k = 10: 0.016 s CPU where Lanczos on the same matrix at about the same
accuracy takes 0.036 s, and 0.08–0.10 s against 0.47–0.58 s when measured earlier on a larger matrix: it
needs no per-step reorthogonalisation loop and stops on a residual test every two blocks). Wrap a matrix in
:class:`~noiseprobe.probes.operators.base.MatrixOperator` to run Lanczos on it.

Both run on the operator's device and dtype and report the matrix-vector products they used
(``matvecs``; a block of k counts k). Stochastic traces and diagonals: :mod:`noiseprobe.probes.estimators`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_choice, check_int, check_real
from noiseprobe.probes.estimators import as_generator
from noiseprobe.probes.operators.base import (
    MatrixOperator,
    Operator,
    ParamOperator,
    as_operator,
    check_finite_result,
)


@dataclass
class Eigenpairs:
    """Ritz pairs of a symmetric operator A, ordered as requested (``which``).

    ``residuals[i]`` = ‖A y_i − θ_i y_i‖ (y_i unit): A has an eigenvalue within it of θ_i (a bound).
    ``errors[i]`` = max(min(r_i, r_i²/δ_i), |θ_i − θ_i'|), δ_i the distance from θ_i to the nearest other
    Ritz value (r_i while there is none) and θ_i' the i-th Ritz value one Lanczos step earlier: the usual
    estimate of |θ_i − λ_i| (Parlett, *The Symmetric Eigenvalue Problem*, Thm 11.7.1 with δ_i in place of
    the true gap), floored by the last step's change because early Ritz gaps overstate a clustered
    spectrum's true gap (then r²/δ is optimistic); the stopping rule's quantity. ``matvecs``: products used by this call.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor
    errors: Tensor
    matvecs: int
    converged: bool


def _start_block(warm: Tensor | None, b: int, p: int, gen: torch.Generator, op: ParamOperator) -> Tensor:
    """The first Krylov block: the warm-start vectors (mixed by a random matrix when there are more of them
    than the block width), topped up with Gaussian columns."""

    def rand(m: int) -> Tensor:
        return torch.randn(p, m, generator=gen, dtype=torch.float64).to(device=op.device, dtype=op.torch_dtype)

    if warm is None:
        return rand(b)
    warm = warm.to(device=op.device, dtype=op.torch_dtype).reshape(p, -1)
    m = warm.shape[1]
    if m > b:
        return warm @ torch.randn(m, b, generator=gen, dtype=torch.float64).to(device=op.device, dtype=op.torch_dtype)
    return torch.cat([warm, rand(b - m)], 1) if m < b else warm


def lanczos(
    op: Operator,
    k: int,
    *,
    warm_start: Eigenpairs | Tensor | None = None,
    which: Literal["LA", "LM", "SA"] = "LA",
    tol: float = 1e-4,
    max_matvecs: int | None = None,
    block: int | None = None,
    min_dim: int | None = None,
    seed: int | torch.Generator = 0,
) -> Eigenpairs:
    """The k extreme eigenpairs of a symmetric operator by block Lanczos with full reorthogonalisation
    (Golub & Underwood 1977; Parlett, *The Symmetric Eigenvalue Problem*, ch. 13); of an explicit matrix
    (a tensor or array) on the matrix itself (:func:`_explicit`: it always converges, and ``block``,
    ``min_dim``, ``max_matvecs`` and ``seed`` do not apply).

    ``which``: "LA" largest algebraic, "LM" largest magnitude, "SA" smallest algebraic.
    ``warm_start``: the previous call's :class:`Eigenpairs` (or a (P, m) tensor of vectors): the Krylov
    space starts from those vectors, so when the operator has changed little since (a few training steps)
    the first block already holds nearly converged Ritz vectors. ``block`` (default: the number of warm
    vectors, else 1) is the number of products per Lanczos step.
    Stops when every requested Ritz value has ``errors ≤ tol · max|θ|`` over the requested ones (see
    :class:`Eigenpairs`) and the Krylov space has at least ``min_dim`` dimensions; or after ``max_matvecs``
    products (default min(P, 500)) or when the next block would not fit in R^P, with ``converged`` False
    unless the tolerance was met (the Ritz values are exact once the space is all of R^P).
    Memory: the Krylov basis, P × (products used).

    ``min_dim`` (default k + 2 cold, k + 7 warm) guards against misconvergence: a residual bound only says
    that θ is near *some* eigenvalue. A random start has a small residual with θ in the bulk; a warm start
    taken before the top eigenvectors rotated (a few dozen SGD steps can do it) is rich in the old top
    direction, now near λ_2, so λ_2's Ritz value converges first and looks final. On the transformer of
    ``benchmarks/bench_transformer.py`` (quick size) warm starts stopped at λ_2 (4.7% low) with k + 2 and
    k + 5, never with k + 7.
    """
    explicit = isinstance(op, (Tensor, np.ndarray))
    op = as_operator(op)
    p = op.num_params
    k = check_int("k", k, lo=1, hi=p)
    check_choice("which", which, ("LA", "LM", "SA"))
    tol = check_real("tol", tol, lo=0.0)
    if explicit:
        assert isinstance(op, MatrixOperator)
        warm_vectors = warm_start.eigenvectors if isinstance(warm_start, Eigenpairs) else warm_start
        return _explicit(op, k, which, tol, None if warm_vectors is None else _check_warm(warm_vectors, p))
    max_matvecs = check_int("max_matvecs", min(p, 500) if max_matvecs is None else max_matvecs, lo=k)
    warm = warm_start.eigenvectors if isinstance(warm_start, Eigenpairs) else warm_start
    if warm is not None:
        warm = _check_warm(warm, p)
    min_dim = check_int("min_dim", (k + 2 if warm_start is None else k + 7) if min_dim is None else min_dim, lo=1)
    b = check_int(
        "block", block if block is not None else (1 if warm is None else warm.reshape(p, -1).shape[1]), lo=1, hi=p
    )
    return _block_lanczos(op, k, which, tol, max_matvecs, min_dim, b, warm, as_generator(seed))


def _block_lanczos(
    op: ParamOperator,
    k: int,
    which: Literal["LA", "LM", "SA"],
    tol: float,
    max_matvecs: int,
    min_dim: int,
    b: int,
    warm: Tensor | None,
    gen: torch.Generator,
) -> Eigenpairs:
    """The Krylov iteration of :func:`lanczos` (its arguments checked): block width ``b``, first block from
    ``warm``; Ritz pairs of the block-tridiagonal projection after each step, until its stopping rule."""
    p = op.num_params
    q = _orthonormalise(_start_block(warm, b, p, gen, op), None, gen, op)[0]
    basis: list[Tensor] = [q]
    diag: list[Tensor] = []
    off: list[Tensor] = []  # off[j] = B_{j+1}: Q_{j+1} B_{j+1} = the part of A Q_j outside the basis so far
    used = 0
    last: Tensor | None = None  # the selected Ritz values one step earlier
    while True:
        z = op.product(basis[-1])
        used += b
        a = basis[-1].T @ z
        diag.append((a + a.T) / 2)
        qs = torch.cat(basis, 1)
        q, r = _orthonormalise(z, qs, gen, op)
        off.append(r)
        m = qs.shape[1]
        t = torch.zeros(m, m, dtype=torch.float64)
        for j, aj in enumerate(diag):
            t[j * b : (j + 1) * b, j * b : (j + 1) * b] = aj.double().cpu()
        for j, bj in enumerate(off[:-1]):
            t[(j + 1) * b : (j + 2) * b, j * b : (j + 1) * b] = bj.double().cpu()
            t[j * b : (j + 1) * b, (j + 1) * b : (j + 2) * b] = bj.double().cpu().T
        theta, s = torch.linalg.eigh(check_finite_result("lanczos", t))  # small: a non-finite product shows here
        key = {"LA": -theta, "SA": theta, "LM": -theta.abs()}[which]
        sel = torch.argsort(key)[:k]
        res = (off[-1].double().cpu() @ s[-b:, sel]).norm(dim=0)
        err = _ritz_errors(theta, sel, res)
        if last is not None and len(last) == len(sel):
            err = torch.maximum(err, (theta[sel] - last).abs())
        last = theta[sel]
        exact = m >= p  # the Krylov space is all of R^P
        converged = m >= k and (exact or (m >= min_dim and bool((err <= tol * theta[sel].abs().max()).all())))
        if converged or m + b > p or used + b > max_matvecs:
            if m < k:
                raise ConfigError("max_matvecs", max_matvecs, f"enough products for k = {k} Ritz pairs (block {b})")
            vecs = qs @ s[:, sel].to(device=op.device, dtype=op.torch_dtype)
            return Eigenpairs(theta[sel].to(op.torch_dtype), vecs, res, err, used, converged)
        basis.append(q)


def _check_warm(warm: object, p: int) -> Tensor:
    """The warm-start vectors, or ConfigError naming ``warm_start``."""
    allowed = f"the previous Eigenpairs or a finite tensor of shape ({p},) or ({p}, m)"
    if not isinstance(warm, Tensor):
        raise ConfigError("warm_start", type(warm).__name__, allowed)
    if warm.dim() not in (1, 2) or warm.shape[0] != p or warm.numel() == 0:
        raise ConfigError("warm_start", f"tensor of shape {tuple(warm.shape)}", allowed)
    if not (warm.is_floating_point() and bool(torch.isfinite(warm).all())):
        raise ConfigError("warm_start", f"tensor of dtype {warm.dtype} or with non-finite entries", allowed)
    return warm


def _orthonormalise(z: Tensor, qs: Tensor | None, gen: torch.Generator, op: ParamOperator) -> tuple[Tensor, Tensor]:
    """Q R = (I − Qs Qsᵀ) z, Q orthonormal and orthogonal to Qs, by Gram–Schmidt twice per column
    ("twice is enough"); a column with nothing left (relative norm ≤ 1000 eps: an invariant subspace) is
    replaced by a fresh random direction with a zero row in R, so the Krylov space keeps growing."""
    p, b = z.shape
    thr = 1e3 * torch.finfo(op.torch_dtype).eps
    cols: list[Tensor] = []
    r = torch.zeros(b, b, dtype=z.dtype, device=z.device)
    for j in range(b):
        v, size = z[:, j], z[:, j].norm()
        for attempt in range(3):
            for _ in range(2):
                if qs is not None:
                    v = v - qs @ (qs.T @ v)
                for i, c in enumerate(cols):
                    coef = c @ v
                    if attempt == 0:
                        r[i, j] += coef
                    v = v - coef * c
            if v.norm() > thr * size:
                break
            v = _start_block(None, 1, p, gen, op)[:, 0]  # breakdown: a random direction instead
            size = v.norm()
        if attempt == 0:
            r[j, j] = v.norm()
        cols.append(v / v.norm())
    return torch.stack(cols, 1), r


def _ritz_errors(theta: Tensor, sel: Tensor, res: Tensor) -> Tensor:
    """min(r, r²/δ) per selected Ritz value, δ the distance to the nearest other one: :class:`Eigenpairs`'
    ``errors`` without the last step's change. r itself where δ is 0 (a repeated Ritz value: a degenerate
    eigenvalue) or there is no other Ritz value (δ = inf)."""
    dist = (theta[sel, None] - theta[None, :]).abs()
    dist[torch.arange(len(sel)), sel] = math.inf
    gap = dist.min(1).values
    return torch.where(torch.isfinite(gap) & (gap > 0), torch.minimum(res, res**2 / gap), res)


def _select(theta: Tensor, k: int, which: str) -> Tensor:
    """Indices of the k eigenvalues ``which`` asks for, in its order, of ``theta`` ascending (eigh's)."""
    if which == "LA":
        return torch.arange(len(theta) - 1, len(theta) - 1 - k, -1)
    return torch.argsort({"SA": theta, "LM": -theta.abs()}[which])[:k]


def _explicit(
    op: MatrixOperator, k: int, which: str, tol: float, warm: Tensor | None, oversample: int = 10
) -> Eigenpairs:
    """:func:`lanczos` on an explicit symmetric n × n matrix A, in its dtype.

    Dense ``eigh`` when n ≤ 400, k ≥ n/4 or ``which`` is not "LA"; otherwise a randomized block Krylov
    iteration (Musco & Musco 2015) with blocks of k + ``oversample`` columns (the warm vectors first, then
    seeded Gaussian ones, so the result is deterministic) and Rayleigh–Ritz every 2 blocks, until every
    residual ‖A v − θ v‖ ≤ tol·|θ_1| (the residual bound itself, so ``errors`` ≤ it holds as in Lanczos), or
    dense ``eigh`` once the Krylov space reaches n/2: it always converges.
    """
    mat = op.a
    n = mat.shape[0]
    used = 0
    if n > 400 and 4 * k < n and which == "LA":
        b = k + oversample
        start = torch.randn(n, b, generator=torch.Generator().manual_seed(0), dtype=mat.dtype).to(mat.device)
        if warm is not None:
            w = warm.to(device=mat.device, dtype=mat.dtype).reshape(n, -1)[:, :b]
            start = torch.cat([w, start[:, : b - w.shape[1]]], 1)
        q = torch.linalg.qr(mat @ start)[0]
        basis, images, used = [q], [mat @ q], 2 * b
        while True:
            qs, aqs = torch.cat(basis, 1), torch.cat(images, 1)
            if len(basis) % 2 == 0:
                theta, w = torch.linalg.eigh(qs.T @ aqs)
                lam, w = theta.flip(0)[:k], w.flip(1)[:, :k]
                vec = qs @ w
                res = (aqs @ w - vec * lam).norm(dim=0)
                if res.max() <= tol * lam[0].abs():
                    sel = _select(theta, k, "LA")
                    return Eigenpairs(lam, vec, res, _ritz_errors(theta, sel, res), used, True)
            if qs.shape[1] + b > n // 2:
                break
            z = images[-1]
            for _ in range(2):  # block Gram–Schmidt, twice for stability
                z = z - qs @ (qs.T @ z)
            q = torch.linalg.qr(z)[0]
            basis.append(q)
            images.append(mat @ q)
            used += b
    theta, vecs = torch.linalg.eigh(mat)
    sel = _select(theta, k, which)
    vec = vecs[:, sel]
    res = (mat @ vec - vec * theta[sel]).norm(dim=0)
    return Eigenpairs(theta[sel], vec, res, _ritz_errors(theta, sel, res), used + k, True)
