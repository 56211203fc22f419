"""The edge of *stochastic* stability (Andreyev & Beneventano, arXiv 2412.20553, "Edge of Stochastic
Stability: Revisiting the Edge of Stability for SGD").

For a mini-batch B of size b, with L_B its mean loss, g_B = ∇L_B and H_B = ∇²L_B, the *batch sharpness* is
the expected directional curvature of the mini-batch Hessian along the mini-batch's own gradient,

    batch sharpness(θ) = E_B [ g_Bᵀ H_B g_B / |g_B|² ]            (their Definition 1)

the expectation over the batches SGD draws at fixed parameters θ. Their claim for SGD without momentum with
step η: after an initial phase, batch sharpness rises to 2/η and stabilises there (EoSS), while the
full-batch λ_max(H) stays *below* 2/η, the more so the smaller the batch; at b = N (full-batch GD) batch
sharpness is the curvature along the full gradient and λ_max ≈ 2/η is Cohen et al.'s edge of stability.

The engines here measure that on a stateless model (no BatchNorm statistics or dropout: the model is called
through ``torch.func.functional_call`` at the given parameters):

* :func:`batch_sharpness_samples` — g_Bᵀ H_B g_B / |g_B|² for a block of batches at once (``vmap`` over
  batches of one forward-over-reverse Hessian-vector product each, no Python loop over batches);
* :func:`expected_batch_sharpness` — its Monte Carlo mean over i.i.d. uniform batches (without replacement
  within a batch) to a target relative standard error;
* :func:`full_batch_lambda_max` — λ_max of the full-batch Hessian by block Lanczos (warm-startable);
* :func:`sgd_with_batch_sharpness` — plain SGD (or GD at b = N) with both measured every few steps;
* :func:`eoss_summary` — the numbers the paper's claims are judged on.

The monitor's metrics ``batch_sharpness`` and ``eoss_ratio`` (:mod:`noiseprobe.monitor.metrics.curvature`)
measure one batch's directional curvature inside a user's loop (docs/monitor.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from noiseprobe.core import divergence
from noiseprobe.core.validation import check_int, check_real
from noiseprobe.probes.eigensolvers import Eigenpairs, lanczos
from noiseprobe.probes.operators import Hessian

PerSampleLoss = Callable[[Tensor, Tensor], Tensor]
#: Lanczos accuracy of the full-batch λ_max (relative; Cohen et al. resolve the sharpness to ~1 %)
LAMBDA_TOL = 1e-3
#: Monte Carlo batches per vectorised block, and the fewest batches behind any estimate
MC_BLOCK, MC_MIN_BATCHES = 64, 32


def _batch_curvature(model: nn.Module, loss_fn: PerSampleLoss) -> Callable[..., Tensor]:
    """(params, xb, yb) -> g_Bᵀ H_B g_B / |g_B|² of one batch's mean loss, by one forward-over-reverse HVP."""

    def mean_loss(params: dict[str, Tensor], xb: Tensor, yb: Tensor) -> Tensor:
        return loss_fn(functional_call(model, params, (xb,)), yb).mean()

    def curvature(params: dict[str, Tensor], xb: Tensor, yb: Tensor) -> Tensor:
        # jvp without has_aux returns (outputs, tangents); its stub also admits the has_aux triple
        g, hg = jvp(lambda p: grad(mean_loss)(p, xb, yb), (params,), (grad(mean_loss)(params, xb, yb),))  # type: ignore[misc]
        ghg = sum((g[k] * hg[k]).sum() for k in g)
        gg = sum((g[k] * g[k]).sum() for k in g)
        return torch.as_tensor(ghg / gg)

    return curvature


def batch_sharpness_samples(
    model: nn.Module, loss_fn: PerSampleLoss, x: Tensor, y: Tensor, idx: Tensor, *, block: int = MC_BLOCK
) -> Tensor:
    """g_Bᵀ H_B g_B / |g_B|² (float64) for each row of ``idx`` (K, b): the batches x[idx[k]], vmapped in blocks
    of ``block`` batches. ``loss_fn(output, y)`` returns per-sample losses; L_B is their mean."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    curv = vmap(_batch_curvature(model, loss_fn), in_dims=(None, 0, 0))
    out = [curv(params, x[i], y[i]).double() for i in idx.split(block)]  # type: ignore[no-untyped-call]  # Tensor.split is unannotated
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def random_batches(n: int, b: int, k: int, gen: torch.Generator) -> Tensor:
    """k uniform batches of b distinct indices out of n, as a (k, b) tensor (argsort of uniforms)."""
    return torch.rand(k, n, generator=gen).argsort(dim=1)[:, :b]


@dataclass(frozen=True)
class MCMean:
    """A Monte Carlo mean with its standard error over ``n`` independent batches."""

    mean: float
    se: float
    n: int


def expected_batch_sharpness(
    model: nn.Module,
    loss_fn: PerSampleLoss,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    gen: torch.Generator,
    rel_se: float = 0.02,
    max_batches: int = 4096,
    block: int = MC_BLOCK,
) -> MCMean:
    """E_B[g_Bᵀ H_B g_B / |g_B|²] over uniform batches of ``batch_size`` at the model's current parameters:
    blocks of ``block`` batches until the standard error is ≤ ``rel_se`` × |mean| (at least
    ``MC_MIN_BATCHES``, at most ``max_batches``). At batch_size = N the one full batch (se 0)."""
    n = x.shape[0]
    check_int("batch_size", batch_size, lo=1, hi=n)
    if batch_size == n:
        v = float(batch_sharpness_samples(model, loss_fn, x, y, torch.arange(n)[None])[0])
        return MCMean(v, 0.0, 1)
    vals = torch.zeros(0, dtype=torch.float64)
    while len(vals) < max_batches:
        k = min(block, max_batches - len(vals))
        vals = torch.cat([vals, batch_sharpness_samples(model, loss_fn, x, y, random_batches(n, batch_size, k, gen))])
        m, se = float(vals.mean()), float(vals.std() / len(vals) ** 0.5)
        if len(vals) >= MC_MIN_BATCHES and se <= rel_se * abs(m):
            break
    return MCMean(float(vals.mean()), float(vals.std() / len(vals) ** 0.5), len(vals))


def full_batch_lambda_max(
    model: nn.Module, loss_fn: PerSampleLoss, x: Tensor, y: Tensor, *, warm: Eigenpairs | None = None
) -> Eigenpairs:
    """λ_max of the Hessian of the full-batch mean loss by block Lanczos to ``LAMBDA_TOL``, warm-started."""
    return lanczos(Hessian(model, loss_fn, x, y), 1, warm_start=warm, tol=LAMBDA_TOL, min_dim=12)


def sgd_with_batch_sharpness(
    model: nn.Module,
    loss_fn: PerSampleLoss,
    x: Tensor,
    y: Tensor,
    *,
    lr: float,
    batch_size: int,
    steps: int,
    measure_every: int,
    gen: torch.Generator,
    mc_gen: torch.Generator,
    rel_se: float = 0.02,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``steps`` of SGD without momentum (``torch.optim.SGD``) on i.i.d. uniform batches of ``batch_size``
    (GD when it is N) drawn from ``gen``, measuring every ``measure_every`` steps (and after the last) at the current
    parameters: ``batch_sharpness`` (Monte Carlo E_B, :func:`expected_batch_sharpness`, with ``_se`` and
    ``mc_batches``; its batches from ``mc_gen``, so measuring leaves the trajectory as it is), ``step_batch_sharpness`` (the batch the step then trains on), ``lambda_max`` (full
    batch, Lanczos) and the full-batch loss. Stops when the full-batch loss diverged (non-finite or above
    10⁸ × its initial value: the divergence rule of :mod:`noiseprobe.core.divergence`).
    Returns (losses: step, loss of the step's batch; measurements: one row per measurement)."""
    n = x.shape[0]
    check_real("lr", lr, lo=0.0, lo_open=True)
    check_int("batch_size", batch_size, lo=1, hi=n)
    check_int("steps", steps, lo=1)
    check_int("measure_every", measure_every, lo=1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = np.full(steps, math.nan)
    rows: list[dict[str, float]] = []
    warm: Eigenpairs | None = None
    limit = math.inf
    for step in range(steps + 1):
        idx = torch.arange(n) if batch_size == n else random_batches(n, batch_size, 1, gen)[0]
        if step % measure_every == 0 or step == steps:
            with torch.no_grad():
                full = float(loss_fn(model(x), y).mean())
            if step == 0 and math.isfinite(full):
                limit = float(divergence.bound(abs(full)))
            if divergence.diverged(full, limit):
                rows.append({"step": step, "full_loss": full})
                break
            bs = expected_batch_sharpness(model, loss_fn, x, y, batch_size=batch_size, gen=mc_gen, rel_se=rel_se)
            warm = full_batch_lambda_max(model, loss_fn, x, y, warm=warm)
            own = batch_sharpness_samples(model, loss_fn, x, y, idx[None])[0]
            rows.append(
                {
                    "step": step,
                    "full_loss": full,
                    "batch_sharpness": bs.mean,
                    "batch_sharpness_se": bs.se,
                    "mc_batches": bs.n,
                    "step_batch_sharpness": float(own),
                    "lambda_max": float(warm.eigenvalues[0]),
                }
            )
        if step == steps:
            break
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx]).mean()
        losses[step] = float(loss.detach())
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        opt.step()
    meas = pd.DataFrame(rows).reindex(
        columns=[
            "step",
            "full_loss",
            "batch_sharpness",
            "batch_sharpness_se",
            "mc_batches",
            "step_batch_sharpness",
            "lambda_max",
        ]
    )
    return pd.DataFrame({"step": np.arange(steps), "loss": losses}), meas


@dataclass(frozen=True)
class EoSSSummary:
    """What :func:`eoss_summary` measures on one run (NaN where the run does not have it)."""

    first_crossing: float  # first measured step with η·batch_sharpness/2 ≥ 1 after one below 1 (an upward crossing)
    max_ratio: float  # max of η·batch_sharpness/2 from the first measurement below 1 on
    n_after: int  # measurements from the first crossing on
    in_band_fraction: float  # fraction of those with η·batch_sharpness/2 in the band
    median_ratio: float  # median of η·batch_sharpness/2 over them
    median_lambda_ratio: float  # median of η·λ_max/2 over them
    median_gap: float  # median of 1 − λ_max/batch_sharpness over them
    max_rel_se: float  # largest Monte Carlo standard error / mean over the run
    diverged_step: float = math.nan  # the measurement step at which the full-batch loss diverged (divergence rule)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def eoss_summary(meas: pd.DataFrame, *, lr: float, band: tuple[float, float]) -> EoSSSummary:
    """Split one run's measurements at the first upward crossing of η·batch_sharpness/2 = 1 (a measurement
    ≥ 1 after one below: a start above 2/η, where the first steps catapult, is not the rise the paper
    describes) and summarise the measurements from there on."""
    nan = math.nan
    loss = meas["full_loss"].to_numpy(dtype=float)
    bad = np.nonzero(divergence.diverged(loss[:, None], divergence.bound(abs(loss[:1])), axis=1))[0]
    if bad.size:
        return EoSSSummary(nan, nan, 0, nan, nan, nan, nan, nan, float(meas["step"].iloc[int(bad[0])]))
    st = meas["step"].to_numpy(dtype=float)
    bs, lam = meas["batch_sharpness"].to_numpy(dtype=float), meas["lambda_max"].to_numpy(dtype=float)
    ratio = lr * bs / 2
    rel_se = float(np.max(meas["batch_sharpness_se"].to_numpy(dtype=float) / np.abs(bs))) if bs.size else nan
    below = np.nonzero(ratio < 1.0)[0]
    above = np.nonzero((ratio >= 1.0) & (np.arange(ratio.size) > (below[0] if below.size else ratio.size)))[0]
    rise = float(ratio[below[0] :].max()) if below.size else nan
    if above.size == 0:
        return EoSSSummary(nan, rise, 0, nan, nan, nan, nan, rel_se)
    j = int(above[0])
    r, lr_ratio, gap = ratio[j:], lr * lam[j:] / 2, 1 - lam[j:] / bs[j:]
    return EoSSSummary(
        float(st[j]),
        rise,
        int(r.size),
        float(np.mean((r >= band[0]) & (r <= band[1]))),
        float(np.median(r)),
        float(np.median(lr_ratio)),
        float(np.median(gap)),
        rel_se,
    )


__all__ = [
    "batch_sharpness_samples",
    "random_batches",
    "MCMean",
    "expected_batch_sharpness",
    "full_batch_lambda_max",
    "sgd_with_batch_sharpness",
    "EoSSSummary",
    "eoss_summary",
]
