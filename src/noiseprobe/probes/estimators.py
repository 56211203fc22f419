"""Stochastic estimators of the trace and the diagonal of a symmetric matrix known through products,
each with its standard error — the one home of these algorithms in the package:

* :func:`hutchinson` / :func:`hutchinson_trace`: Tr A ≈ mean of vᵀAv over Rademacher probes v
  (Hutchinson 1989, *Commun. Stat. Simul. Comput.* 18(3));
* :func:`hutchpp`: Hutch++ (Meyer, Musco, Musco & Woodruff 2021, *SOSA*, Alg. 1), a low-rank sketch
  deflated before Hutchinson;
* :func:`bekas_diagonal`: diag A ≈ mean of v ∘ Av (Bekas, Kokiopoulou & Saad 2007, *Appl. Numer. Math.*
  57(11–12)).

:func:`hutchinson_trace` takes any product function on tensors of any shape (the local Hessians of
:mod:`noiseprobe.probes.local`); the others take an operator (a
:class:`~noiseprobe.probes.operators.base.ParamOperator`, a dense symmetric tensor or array, or a SciPy
``LinearOperator``: :func:`~noiseprobe.probes.operators.base.as_operator`) and return a
:class:`StochasticEstimate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from noiseprobe.core.validation import check_int
from noiseprobe.probes.operators.base import Operator, ParamOperator, as_operator, check_finite_result


def as_generator(seed: int | torch.Generator) -> torch.Generator:
    """``seed`` itself when it is a generator, else a CPU generator seeded with it (an int ≥ 0)."""
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(check_int("seed", seed, lo=0))


def _rademacher(shape: tuple[int, ...], gen: torch.Generator, op: ParamOperator) -> Tensor:
    return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(device=op.device, dtype=op.torch_dtype)


@dataclass
class StochasticEstimate:
    """An unbiased estimate (a float for a trace, a (P,) tensor for a diagonal), its standard error
    (same shape; the standard deviation of the estimator estimated from its probes) and the products used."""

    value: float | Tensor
    se: float | Tensor
    matvecs: int


def hutchinson_trace(
    hvp: Callable[[Tensor], Tensor],
    dim: int | tuple[int, ...],
    n_probes: int,
    generator: torch.Generator,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    block: int | None = None,
) -> tuple[float, float]:
    """Hutchinson's estimate of Tr A = E[vᵀ A v] with Rademacher v, from ``hvp(v) = A v`` on tensors of
    shape ``dim``.

    With ``block`` the probes go to ``hvp`` in stacks of up to ``block`` (shape (m, *dim)), for an
    ``hvp`` that maps the leading axis (e.g. :meth:`~noiseprobe.probes.local.LocalObjective.hvp`); else
    one at a time. Returns (mean over ``n_probes`` probes, its standard error std/√n_probes; nan for one
    probe). The variance per probe is 2(‖A‖_F² − Σ A_ii²).
    """
    check_int("n_probes", n_probes, lo=1)
    if block is not None:
        check_int("block", block, lo=1)
    shape = (dim,) if isinstance(dim, int) else tuple(dim)
    vals = []
    for start in range(0, n_probes, block or 1):
        m = min(block or 1, n_probes - start)
        v = (torch.randint(0, 2, (m, *shape), generator=generator) * 2 - 1).to(device=device, dtype=dtype)
        hv = hvp(v) if block else hvp(v[0])[None]
        vals.append((v * hv).reshape(m, -1).sum(1).double().cpu())
    t = torch.cat(vals)
    se = float(t.std(correction=1) / math.sqrt(n_probes)) if n_probes > 1 else math.nan
    return float(t.mean()), se


def hutchinson(op: Operator, n_probes: int, *, seed: int | torch.Generator = 0, block: int = 16) -> StochasticEstimate:
    """Tr A ≈ (1/m) Σ_j v_jᵀ A v_j over m = ``n_probes`` Rademacher vectors (Hutchinson 1989); se =
    sample std/√m (nan for one probe). Variance per probe 2(‖A‖_F² − Σ A_ii²). Products in blocks of ``block``."""
    op = as_operator(op)
    check_int("block", block, lo=1)
    mean, se = hutchinson_trace(
        lambda v: op.product(v.T).T,
        op.num_params,
        n_probes,
        as_generator(seed),
        dtype=op.torch_dtype,
        device=op.device,
        block=block,
    )
    return StochasticEstimate(float(check_finite_result("hutchinson", torch.tensor(mean))), se, n_probes)


def hutchpp(op: Operator, matvecs: int, *, seed: int | torch.Generator = 0) -> StochasticEstimate:
    """Tr A by Hutch++ (Meyer, Musco, Musco & Woodruff 2021, Alg. 1) with ``matvecs`` products:
    s = ⌊matvecs/3⌋ sketch vectors S, Q = orth(A S), and the remaining g = matvecs − 2s Rademacher probes G:

        t = tr(Qᵀ A Q) + (1/g) Σ_j g_jᵀ (I − QQᵀ) A (I − QQᵀ) g_j.

    t is unbiased given Q (the first term is exact and the second is Hutchinson's on the deflated
    operator), so se = the probes' std/√g. Much smaller than Hutchinson's for a decaying spectrum.
    """
    op = as_operator(op)
    matvecs = check_int("matvecs", matvecs, lo=3)
    gen = as_generator(seed)
    s = matvecs // 3
    g = matvecs - 2 * s
    q = torch.linalg.qr(check_finite_result("hutchpp", op.product(_rademacher((op.num_params, s), gen, op))))[0]
    exact = float(torch.einsum("pi,pi->", q, op.product(q)))
    probes = _rademacher((op.num_params, g), gen, op)
    probes = probes - q @ (q.T @ probes)
    vals = torch.einsum("pi,pi->i", probes, op.product(probes)).double().cpu()
    se = float(vals.std(correction=1) / math.sqrt(g)) if g > 1 else math.nan
    est = float(check_finite_result("hutchpp", torch.tensor(exact + float(vals.mean()))))
    return StochasticEstimate(est, se, matvecs)


def bekas_diagonal(
    op: Operator, n_probes: int, *, seed: int | torch.Generator = 0, block: int = 16
) -> StochasticEstimate:
    """diag A ≈ (1/m) Σ_j v_j ∘ (A v_j) over m = ``n_probes`` Rademacher vectors (Bekas, Kokiopoulou &
    Saad 2007; unbiased since E v∘Av = diag A when v∘v = 1); se per entry = sample std/√m (nan for one
    probe); entry i's variance per probe is Σ_{j≠i} A_ij²."""
    op = as_operator(op)
    n_probes = check_int("n_probes", n_probes, lo=1)
    block = check_int("block", block, lo=1)
    gen = as_generator(seed)
    total = torch.zeros(op.num_params, dtype=torch.float64, device=op.device)
    total_sq = torch.zeros_like(total)
    for start in range(0, n_probes, block):
        v = _rademacher((op.num_params, min(block, n_probes - start)), gen, op)
        z = (v * op.product(v)).double()
        total += z.sum(1)
        total_sq += (z * z).sum(1)
    mean = check_finite_result("bekas_diagonal", total / n_probes)
    if n_probes > 1:
        se = ((total_sq - n_probes * mean**2).clamp_min(0) / (n_probes - 1) / n_probes).sqrt()
    else:
        se = torch.full_like(mean, math.nan)
    return StochasticEstimate(mean.to(op.torch_dtype), se.to(op.torch_dtype), n_probes)
