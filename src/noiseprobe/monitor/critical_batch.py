"""Steps and examples to a target loss across batch sizes: McCandlish et al. (2018, "An Empirical Model of
Large-Batch Training"), Sec. 2.2 and 3.

With the learning rate tuned at each batch size B, the steps S and examples E = B·S needed to reach a fixed
loss follow (their eqs. 2.11, 2.12)

    S = S_min (1 + B_crit/B),    E = E_min (1 + B/B_crit),    B_crit = E_min/S_min,

equivalently (S/S_min − 1)(E/E_min − 1) = 1; they find B_crit close to the gradient noise scale
B_noise = tr(HΣ)/GᵀHG and B_simple = tr Σ/|G|² averaged over the training run.

Here: :func:`train_to_target` trains a population of MLPs (one per learning rate, batched: one array op
per step, :class:`~noiseprobe.nin.ensemble.MLPEnsemble` without its noise node) by plain SGD on minibatches
drawn *with replacement* (so Σ/B is exactly the minibatch covariance the theory uses) until the first one
reaches the target training loss; :func:`steps_to_target` interpolates the crossing; :func:`fit_critical_batch`
fits the hyperbola; :func:`noise_scale_during` measures B_simple and B_noise with :class:`NoiseMonitor` on
the weights the run passed through; :func:`step_average` averages them over the steps to the target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike
from scipy.optimize import least_squares

from noiseprobe.core import divergence
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.seeding import torch_generator
from noiseprobe.core.validation import check_int, check_real
from noiseprobe.nin.ensemble import MLPEnsemble, batch_losses, init_ensemble

#: random streams of a replica: weights (shared by the replicas of one seed), minibatches, probe batches
STREAM_INIT, STREAM_BATCHES, STREAM_PROBE = 0, 1, 2
#: minibatch indices drawn at once per replica (one generator call per block of steps)
BLOCK_STEPS = 256
#: the divergence rule's multiple for this engine: a cross-entropy run whose loss passes 10 × its initial
#: loss (log K at the default init) has left every basin SGD trains in; its steps to the target would be
#: meaningless (the multiple 10⁸ of the other engines would let a run spend its steps exploding)
LOSS_FACTOR = 10.0


def geometric_steps(max_steps: int, ratio: float) -> np.ndarray:
    """0, 1, 2, ... then steps growing by ``ratio`` (every step while the gap is < 1), up to max_steps."""
    check_int("max_steps", max_steps, lo=1)
    check_real("ratio", ratio, lo=1.0, lo_open=True)
    n = int(math.ceil(math.log(max_steps) / math.log(ratio))) + 2
    steps = np.unique(np.round(ratio ** np.arange(n)).astype(np.int64))
    return np.unique(np.concatenate([[0], steps[steps < max_steps], [max_steps]]))


def steps_to_target(steps: ArrayLike, losses: ArrayLike, target: float) -> float:
    """First step at which ``losses`` (recorded at ``steps``) reach ``target``, interpolated linearly in
    (log step, log loss) between the two bracketing records (linearly in step from step 0); NaN if never."""
    st, lv = np.asarray(steps, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    hit = np.nonzero(lv <= target)[0]
    if hit.size == 0:
        return math.nan
    j = int(hit[0])
    if j == 0:
        return float(st[0])
    (s0, s1), (l0, l1) = st[j - 1 : j + 1], lv[j - 1 : j + 1]
    if not (l0 > target and math.isfinite(l0)):
        return float(s1)
    if s0 > 0 and l1 > 0:
        x0, x1, f = math.log(s0), math.log(s1), (math.log(l0) - math.log(target)) / (math.log(l0) - math.log(l1))
        return float(math.exp(x0 + f * (x1 - x0)))
    return float(s0 + (l0 - target) / (l0 - l1) * (s1 - s0))


@dataclass
class TargetRun:
    """``records``: one row per replica and evaluation (lr, replica, step, train_loss); ``outcome``: one row
    per replica (lr, replica, steps_to_target (NaN: not reached), diverged, diverged_step (−1: never)); ``snapshots``: step -> the
    population's parameters at that step (for the monitor), up to the stop."""

    records: pd.DataFrame
    outcome: pd.DataFrame
    snapshots: dict[int, list[torch.Tensor]]
    ensemble: MLPEnsemble


def train_to_target(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    hidden: Sequence[int],
    batch_size: int,
    lrs: Sequence[float],
    replicas: Sequence[int],
    init_replica: int,
    seed: int,
    target: float,
    max_steps: int,
    eval_ratio: float = 1.05,
    snapshot_ratio: float = 1.3,
) -> TargetRun:
    """Train one ReLU MLP per learning rate ``lrs[k]`` by SGD with batches of ``batch_size`` drawn with
    replacement until the first replica's training loss (cross-entropy over all of ``x``) reaches
    ``target``, all replicas diverge, or ``max_steps``.

    Every replica starts from the same weights (stream (seed, init_replica): common random numbers across
    learning rates and batch sizes); replica k's minibatches come from (seed, replicas[k]). The loss is
    evaluated at :func:`geometric_steps` (``eval_ratio``), the parameters kept at ``snapshot_ratio`` steps.
    Divergence (:mod:`noiseprobe.core.divergence`): a replica whose training loss is non-finite or above
    :data:`LOSS_FACTOR` × its initial loss at an evaluation has diverged there (``diverged_step``): its later
    records are NaN and its steps stop (its weights are zeroed and its learning rate set to 0).
    """
    check_int("batch_size", batch_size, lo=1)
    check_real("target", target, lo=0.0, lo_open=True)
    if len(lrs) != len(replicas) or not lrs:
        raise ConfigError("lrs", list(lrs), f"one learning rate per replica ({len(replicas)} replicas, at least 1)")
    for lr in lrs:
        check_real("lrs", lr, lo=0.0, lo_open=True)
    k = len(lrs)
    n_classes = int(y.max()) + 1
    ens = init_ensemble([x.shape[1], *hidden, n_classes], [0.0] * k, [init_replica] * k, seed, dtype=x.dtype)
    params = [*ens.weights, *ens.biases]
    rates = torch.tensor([float(v) for v in lrs], dtype=x.dtype)
    gens = [torch_generator(seed, int(r), STREAM_BATCHES) for r in replicas]
    evals = set(geometric_steps(max_steps, eval_ratio).tolist())
    snaps = set(geometric_steps(max_steps, snapshot_ratio).tolist())
    n = x.shape[0]
    diverged = np.zeros(k, dtype=bool)
    diverged_step = np.full(k, -1, dtype=np.int64)
    initial = np.full(k, math.inf)
    rec_steps: list[int] = []
    rec_loss: list[np.ndarray] = []
    snapshots: dict[int, list[torch.Tensor]] = {}
    idx = torch.empty(0)
    for step in range(max_steps + 1):
        if step in snaps:
            snapshots[step] = [p.detach().clone() for p in params]
        if step in evals:
            with torch.no_grad():
                loss = batch_losses(ens.forward(x)[0], y, "ce").double().mean(1).numpy()
            if step == 0:
                initial = loss.copy()
            bad = divergence.diverged(loss[:, None], divergence.bound(initial, LOSS_FACTOR)[:, None], axis=1)
            if (bad & ~diverged).any():
                diverged_step[bad & ~diverged] = step
                diverged |= bad
                rates[torch.from_numpy(diverged)] = 0.0
                with torch.no_grad():
                    for p in params:
                        p[torch.from_numpy(diverged)] = 0.0
            rec_steps.append(step)
            rec_loss.append(np.where(diverged, np.nan, loss))
            if (loss[~diverged] <= target).any() or diverged.all():
                break
        if step == max_steps:
            break
        j = step % BLOCK_STEPS
        if j == 0:
            idx = torch.stack([torch.randint(0, n, (BLOCK_STEPS, batch_size), generator=g) for g in gens], 1)
        _sgd_step(ens, params, rates, x, y, idx[j])
    for p in params:
        p.requires_grad_(False)
    records, outcome = _run_tables(
        lrs, replicas, np.asarray(rec_steps), np.stack(rec_loss, 1), target, diverged, diverged_step
    )
    return TargetRun(records, outcome, snapshots, ens)


def _sgd_step(
    ens: MLPEnsemble,
    params: list[torch.Tensor],
    rates: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    rows: torch.Tensor,
) -> None:
    """One SGD step of every replica k on its own minibatch ``x[rows[k]]`` (``rows``: (k, batch_size))."""
    for p in params:
        p.requires_grad_(True)
    lk = batch_losses(ens.forward(x[rows])[0], y[rows], "ce").mean(1)
    grads = torch.autograd.grad(lk.sum(), params)
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.sub_(rates.view(-1, *([1] * (g.dim() - 1))) * g)


def _run_tables(
    lrs: Sequence[float],
    replicas: Sequence[int],
    steps: np.ndarray,
    losses: np.ndarray,
    target: float,
    diverged: np.ndarray,
    diverged_step: np.ndarray,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The loss records (one row per replica and evaluation; ``losses``: (k, evaluations)) and the outcome
    (one row per replica: interpolated steps to the target, divergence) of :func:`train_to_target`."""
    k = len(lrs)
    crossed = np.full(k, math.nan)
    for i in range(k):
        crossed[i] = steps_to_target(steps, losses[i], target)
    records = pd.DataFrame(
        {
            "lr": np.repeat(np.asarray(lrs, dtype=np.float64), len(steps)),
            "replica": np.repeat(np.asarray(replicas, dtype=np.int64), len(steps)),
            "step": np.tile(steps, k),
            "train_loss": losses.ravel(),
        }
    )
    outcome = pd.DataFrame(
        {
            "lr": np.asarray(lrs, dtype=np.float64),
            "replica": np.asarray(replicas, dtype=np.int64),
            "steps_to_target": crossed,
            "diverged": diverged,
            "diverged_step": diverged_step,
            "last_step": int(steps[-1]),
        }
    )
    return records, outcome


def noise_scale_during(
    run: TargetRun,
    member: int,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    until: float,
    probe_samples: int,
    seed: int,
    replica: int,
    metrics: Sequence[str] = ("b_simple", "b_noise"),
) -> pd.DataFrame:
    """The monitor's ``metrics`` on member ``member``'s weights at every snapshot step ≤ ``until``, each
    on a fresh probe batch of ``probe_samples`` distinct training samples (stream (seed, replica, 2));
    one row per snapshot (``step`` and the monitor's columns)."""
    from noiseprobe.monitor.monitor import NoiseMonitor

    check_int("probe_samples", probe_samples, lo=3, hi=x.shape[0])
    model, _ = run.ensemble.member(member)
    mon = NoiseMonitor(
        model,
        lambda out, t: torch.nn.functional.cross_entropy(out, t, reduction="none"),
        metrics=list(metrics),
        verbose=False,
    )
    gen = torch_generator(seed, replica, STREAM_PROBE)
    layers = [m for m in model if isinstance(m, torch.nn.Linear)]
    rows = []
    for step in sorted(s for s in run.snapshots if s <= until):
        snap = run.snapshots[step]
        n_w = len(layers)
        with torch.no_grad():
            for m, lin in enumerate(layers):
                lin.weight.copy_(snap[m][member].T)
                lin.bias.copy_(snap[n_w + m][member])
        pick = torch.randperm(x.shape[0], generator=gen)[:probe_samples]
        mon.steps = step
        rows.append(mon.measure((x[pick], y[pick])))
    return pd.DataFrame(rows)


def step_average(steps: ArrayLike, values: ArrayLike, until: float) -> float:
    """(1/T) ∫₀ᵀ v(s) ds for T = ``until``, v piecewise linear through the finite (step, value) pairs with
    step ≤ T and held constant after the last one (trapezoid rule); NaN if no finite value."""
    s, v = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    keep = np.isfinite(v) & (s <= until)
    s, v = s[keep], v[keep]
    if s.size == 0 or not until > 0:
        return float(v[0]) if s.size else math.nan
    s, v = np.append(s, until), np.append(v, v[-1])
    span = s[-1] - s[0]
    return float(np.trapezoid(v, s) / span) if span > 0 else float(v[0])


@dataclass(frozen=True)
class CriticalBatchFit:
    """S = S_min(1 + B_crit/B), E = E_min(1 + B/B_crit): fitted values, the standard error of log B_crit
    and log S_min from the fit's covariance, and the rms residual of log S (= that of log E)."""

    s_min: float
    b_crit: float
    e_min: float
    log_b_crit_se: float
    log_s_min_se: float
    rms_log_residual: float
    n: int


def fit_critical_batch(batch_sizes: ArrayLike, steps: ArrayLike) -> CriticalBatchFit:
    """Least squares of log S against log S_min(1 + B_crit/B) over the finite points (≥ 3).

    The residuals of log E = log B + log S are the same numbers, so this is the joint fit of S and E (their
    eq. 2.11/2.12 relation). Standard errors: (JᵀJ)⁻¹ s² with s² the residual variance (n − 2 dof)."""
    b, s = np.asarray(batch_sizes, dtype=np.float64), np.asarray(steps, dtype=np.float64)
    if b.shape != s.shape or b.ndim != 1:
        raise ConfigError("batch_sizes, steps", (b.shape, s.shape), "two 1-d sequences of the same length")
    keep = np.isfinite(s) & (s > 0) & (b > 0)
    b, s = b[keep], s[keep]
    nan = CriticalBatchFit(*(math.nan,) * 6, n=int(b.size))
    if b.size < 3:
        return nan
    ls, lb = np.log(s), np.log(b)

    def resid(p: np.ndarray) -> np.ndarray:
        return p[0] + np.logaddexp(0.0, p[1] - lb) - ls

    # start: S_min from the largest batches, B_crit where S is twice that
    s0 = float(s.min())
    start = np.array([math.log(s0), float(np.median(lb))])
    fit = least_squares(resid, start, method="lm")
    if not fit.success:
        return nan
    r = fit.fun
    dof = max(b.size - 2, 1)
    s2 = float(r @ r) / dof
    try:
        cov = np.linalg.inv(fit.jac.T @ fit.jac) * s2
    except np.linalg.LinAlgError:
        cov = np.full((2, 2), math.nan)
    s_min, b_crit = math.exp(fit.x[0]), math.exp(fit.x[1])
    return CriticalBatchFit(
        s_min,
        b_crit,
        s_min * b_crit,
        float(math.sqrt(max(cov[1, 1], 0.0))),
        float(math.sqrt(max(cov[0, 0], 0.0))),
        float(math.sqrt(float(r @ r) / b.size)),
        int(b.size),
    )


# -- the tuned runs of a batch-size sweep -------------------------------------------------------------------
def tuned_runs(outcomes: pd.DataFrame, lrs: Sequence[float]) -> pd.DataFrame:
    """One row per (batch size, seed): steps of the fastest learning rate, that lr, and whether it sits at an
    open edge of the grid (the smallest lr, or the largest lr with no larger one diverging). ``outcomes``: one
    row per (batch_size, seed_index, lr) with ``steps_to_target`` (NaN if not reached) and ``diverged``."""
    rows = []
    lrs = sorted(lrs)
    for (b, s), sub in outcomes.groupby(["batch_size", "seed_index"]):
        sub = sub.sort_values("lr")
        st = sub["steps_to_target"].to_numpy()
        row = {"batch_size": b, "seed_index": s, "steps": math.nan, "lr": math.nan, "at_edge": math.nan}
        if np.isfinite(st).any():
            j = int(np.nanargmin(st))
            larger_diverged = bool(sub["diverged"].to_numpy()[j + 1 :].any())
            edge = j == 0 or (sub["lr"].iloc[j] == lrs[-1] and not larger_diverged)
            row.update(steps=float(st[j]), lr=float(sub["lr"].iloc[j]), at_edge=float(edge))
        rows.append(row)
    return pd.DataFrame(rows)


def steps_by_batch(per_seed: pd.DataFrame) -> pd.DataFrame:
    """S(B): mean over seeds of the tuned steps (NaN unless every seed reached the target), its SE, E = B·S."""
    g = per_seed.groupby("batch_size")["steps"]
    grid = pd.DataFrame(
        {"steps": g.mean(), "steps_se": g.std(ddof=1) / np.sqrt(g.count()), "reached": g.count(), "seeds": g.size()}
    ).reset_index()
    grid.loc[grid["reached"] < grid["seeds"], "steps"] = math.nan
    grid["examples"] = grid["steps"] * grid["batch_size"]
    return grid


def bootstrap_critical_batch(per_seed: pd.DataFrame, *, seed: int, n_boot: int) -> list[float]:
    """95 % percentile interval of the fitted B_crit, resampling the seeds of every batch size (``n_boot``
    resamples from the stream (seed, 2³¹))."""
    piv = per_seed.pivot(index="batch_size", columns="seed_index", values="steps")
    if piv.shape[1] < 2 or not np.isfinite(piv.to_numpy()).all():
        return [math.nan, math.nan]
    vals = piv.to_numpy()
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2**31,)))
    pick = rng.integers(0, vals.shape[1], (n_boot, *vals.shape))
    means = np.take_along_axis(np.broadcast_to(vals, pick.shape), pick, axis=2).mean(2)
    b = piv.index.to_numpy(dtype=float)
    crit = np.array([fit_critical_batch(b, m).b_crit for m in means])
    crit = crit[np.isfinite(crit)]
    return [float(v) for v in np.quantile(crit, [0.025, 0.975])] if crit.size else [math.nan, math.nan]


def noise_by_run(per_seed: pd.DataFrame, noise: pd.DataFrame) -> pd.DataFrame:
    """Per tuned run: B_simple and B_noise averaged over steps up to its target."""
    rows = []
    for r in per_seed.to_dict(orient="records"):
        steps = float(r["steps"])
        if not math.isfinite(steps) or noise.empty:
            continue
        one = noise[(noise["batch_size"] == r["batch_size"]) & (noise["seed_index"] == r["seed_index"])]
        rows.append(
            {
                "batch_size": r["batch_size"],
                "seed_index": r["seed_index"],
                **{c: step_average(one["step"], one[c], steps) for c in ("b_simple", "b_noise")},
            }
        )
    return pd.DataFrame(rows, columns=["batch_size", "seed_index", "b_simple", "b_noise"])


__all__ = [
    "bootstrap_critical_batch",
    "noise_by_run",
    "steps_by_batch",
    "tuned_runs",
    "geometric_steps",
    "steps_to_target",
    "TargetRun",
    "train_to_target",
    "noise_scale_during",
    "step_average",
    "CriticalBatchFit",
    "fit_critical_batch",
]
