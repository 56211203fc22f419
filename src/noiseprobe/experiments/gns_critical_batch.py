"""``gns-critical-batch``: the critical batch size of McCandlish et al. (2018, "An Empirical Model of
Large-Batch Training"), measured against the gradient noise scale that :class:`~noiseprobe.NoiseMonitor`
reports during the same runs.

Setting: a one-hidden-layer ReLU MLP (``hidden``), softmax cross-entropy, plain SGD on the first
``n_train`` samples of the embedded training split, minibatches drawn with replacement. At each batch size
B and for each of ``seeds`` seeds, one chunk trains a replica per learning rate of the grid ``lrs``
(batched, :func:`~noiseprobe.monitor.critical_batch.train_to_target`) until the first reaches the target
training loss: that replica is the tuned one and its interpolated step count S is the seed's steps to
target (every replica of a seed starts from the same network; replica (B, seed, lr) draws its minibatches
from (seed, replica)). S(B) is the mean over seeds, E = B·S.

Fit (their eqs. 2.11–2.12): log S = log S_min + log(1 + B_crit/B) by least squares, which is the joint fit
of S and E (the log E residuals are the same numbers); SE of log B_crit from the fit's covariance, and a
95 % interval from a bootstrap over seeds. Noise scale: the monitor's ``b_simple`` = tr Σ/|G|² and
``b_noise`` = tr(HΣ)/GᵀHG on the tuned replicas' weights at geometric steps up to the target (each on a
fresh probe batch of ``probe_samples`` training samples), averaged over steps up to the target
(:func:`~noiseprobe.monitor.critical_batch.step_average`; their comparison uses the noise scale averaged
over training), then over all tuned runs (mean ± SE over runs).

Checks: ``steps-decrease`` and ``examples-increase`` (S falls and E rises with B, up to 4 SE over seeds);
``hyperbola-fit`` (rms log residual ≤ 0.2); ``bracket-below``/``bracket-above`` (≥ 2 batch sizes on each
side of the fitted B_crit); ``lr-grid-brackets`` (no tuned learning rate at an open edge of the grid);
``bcrit-vs-bsimple`` and ``bcrit-vs-bnoise`` (B_crit over the averaged noise scale within a factor 3, with
the SE of the ratio).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from noiseprobe.core.checks import Check
from noiseprobe.core.experiment import Chunk, Experiment, RunCost
from noiseprobe.data.embedded import load_default
from noiseprobe.experiments import _gns_plot
from noiseprobe.experiments._data import check_at_most, embedded_train_size
from noiseprobe.experiments._gns_critical_batch_config import CriticalBatchConfig
from noiseprobe.monitor.critical_batch import (
    bootstrap_critical_batch,
    fit_critical_batch,
    geometric_steps,
    noise_by_run,
    noise_scale_during,
    steps_by_batch,
    train_to_target,
    tuned_runs,
)

#: B_crit against the noise scale: agreement within this factor (the paper's "B_crit ≈ B_noise" is approximate)
FACTOR = 3.0
#: largest rms residual of log S about the fitted hyperbola
MAX_RMS_LOG_RESIDUAL = 0.2
#: memory model of one chunk (bytes above a warm worker's state; fitted to the RSS growth of the quick
#: preset's chunks at B = 4 and B = 1024, docs/monitor.md): torch's first-use working set; per (replica ×
#: batch sample × input feature) the gathered minibatch; 4 bytes per (replica × weight × snapshot); per
#: (probe sample × weight) the monitor's factored per-sample gradients and Hessian-vector products
CHUNK_BASE_BYTES = 90 * 2**20
BYTES_PER_BATCH_INPUT = 4
BYTES_PER_PROBE_WEIGHT = 1


class CriticalBatch(Experiment):
    """Steps and examples to a target loss vs batch size; B_crit against the monitor's noise scale."""

    id = "gns-critical-batch"
    title = (
        "Critical batch size (McCandlish et al. 2018): steps/examples to a target loss vs batch size, "
        "B_crit vs B_simple and B_noise"
    )
    Config = CriticalBatchConfig
    tables = ("curves", "noise")
    presets = {
        "quick": {
            "seed": 0,
            "n_train": 2000,
            "hidden": 32,
            "batch_sizes": [4, 8, 16, 32, 64, 128, 256, 512, 1024],
            "lrs": [round(0.0125 * 2 ** (k / 2), 6) for k in range(15)],
            "seeds": 3,
            "target_loss": 0.3,
            "max_steps": 5000,
            "eval_ratio": 1.05,
            "snapshot_ratio": 1.3,
            "probe_samples": 512,
            "n_boot": 400,
        },
        "full": {
            "seed": 0,
            "n_train": 3000,
            "hidden": 64,
            "batch_sizes": [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096],
            "lrs": [round(0.00625 * 2 ** (k / 4), 6) for k in range(37)],
            "seeds": 8,
            "target_loss": 0.2,
            "max_steps": 40000,
            "eval_ratio": 1.02,
            "snapshot_ratio": 1.2,
            "probe_samples": 1024,
            "n_boot": 2000,
        },
    }
    diverging = {"lrs": [1e4, 2e4]}

    def check_data(self, config: CriticalBatchConfig) -> None:
        """``n_train`` at most the embedded training split (3,000 MNIST digits, or 1,078 of sklearn's)."""
        check_at_most("n_train", config.n_train, embedded_train_size(), "embedded")

    def estimate(self, config: CriticalBatchConfig) -> RunCost:
        """Peak memory of the largest chunk; no time (the steps to the target are what the run measures)."""
        d_in, r = 784, len(config.lrs)
        weights = (d_in + 1) * config.hidden + (config.hidden + 1) * 10
        snaps = len(geometric_steps(config.max_steps, config.snapshot_ratio))
        peak = (
            CHUNK_BASE_BYTES
            + BYTES_PER_BATCH_INPUT * r * max(config.batch_sizes) * (d_in + config.hidden)
            + 4 * r * weights * snaps
            + BYTES_PER_PROBE_WEIGHT * config.probe_samples * weights
        )
        return RunCost(int(peak), None, ("batch_sizes", "lrs", "hidden", "max_steps", "probe_samples"))

    def chunks(self, config: CriticalBatchConfig) -> list[Chunk]:
        return [
            Chunk(f"B{b:05d}-seed{s:03d}", {"b_index": i, "batch_size": b, "seed_index": s})
            for i, b in enumerate(config.batch_sizes)
            for s in range(config.seeds)
        ]

    def measure(self, config: CriticalBatchConfig, chunk: Chunk) -> dict[str, pd.DataFrame]:
        data = load_default(n_train=config.n_train, seed=config.seed)
        x, y = data.X_train, data.y_train
        b, s = chunk.spec["batch_size"], chunk.spec["seed_index"]
        n_lr = len(config.lrs)
        first = (chunk.spec["b_index"] * config.seeds + s) * n_lr  # global replica index of lrs[0]
        replicas = list(range(first, first + n_lr))
        run = train_to_target(
            x,
            y,
            hidden=[config.hidden],
            batch_size=b,
            lrs=config.lrs,
            replicas=replicas,
            init_replica=s,
            seed=config.seed,
            target=config.target_loss,
            max_steps=config.max_steps,
            eval_ratio=config.eval_ratio,
            snapshot_ratio=config.snapshot_ratio,
        )
        key = {"batch_size": b, "seed_index": s}
        outcome = run.outcome.assign(**key)
        steps = outcome["steps_to_target"].to_numpy()
        noise = pd.DataFrame()
        if np.isfinite(steps).any():
            best = int(np.nanargmin(steps))
            noise = noise_scale_during(
                run,
                best,
                x,
                y,
                until=float(steps[best]),
                probe_samples=config.probe_samples,
                seed=config.seed,
                replica=replicas[best],
            ).assign(lr=config.lrs[best], **key)
        return {"results": outcome, "curves": run.records.assign(**key), "noise": noise}

    def derive(self, config: CriticalBatchConfig, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """``tuned`` (one row per batch size and seed: the fastest learning rate's steps), ``grid`` (S(B) and
        E(B), mean over seeds) and ``runs`` (each tuned run's noise scales averaged up to its target)."""
        per_seed = tuned_runs(tables["results"], config.lrs)
        return {"tuned": per_seed, "grid": steps_by_batch(per_seed), "runs": noise_by_run(per_seed, tables["noise"])}

    def checks(self, config: CriticalBatchConfig, tables: dict[str, pd.DataFrame]) -> list[Check]:
        per_seed, grid, runs = tables["tuned"], tables["grid"], tables["runs"]
        fit = fit_critical_batch(grid["batch_size"], grid["steps"])
        checks = _trend_checks(grid)
        checks.append(
            Check.less(
                "hyperbola-fit",
                "S = S_min(1 + B_crit/B), E = E_min(1 + B/B_crit) fits the tuned "
                "steps and examples: rms residual of log S (= of log E) about the joint fit",
                fit.rms_log_residual,
                MAX_RMS_LOG_RESIDUAL,
                detail=f"{fit.n} batch sizes",
            )
        )
        bcrit_ok = math.isfinite(fit.b_crit)
        finite = grid["batch_size"][np.isfinite(grid["steps"])]
        for key, side, count in (
            ("bracket-below", "below", int((finite < fit.b_crit).sum())),
            ("bracket-above", "above", int((finite > fit.b_crit).sum())),
        ):
            claim = f"at least 2 measured batch sizes {side} the fitted B_crit"
            checks.append(
                Check.greater(key, claim, count, 2)
                if bcrit_ok
                else Check.not_measurable(key, claim, "no fit (fewer than 3 batch sizes reached the target)")
            )
        edges = per_seed["at_edge"].dropna()
        checks.append(
            Check.equal(
                "lr-grid-brackets",
                "the learning-rate grid brackets every tuned learning rate "
                "(runs whose fastest lr is the smallest, or the largest without a larger one "
                "diverging)",
                int(edges.sum()) if len(edges) else None,
                0,
            )
        )
        for name, col in (("bsimple", "b_simple"), ("bnoise", "b_noise")):
            n_runs = int(runs[col].count())
            mean = runs[col].mean()
            se = runs[col].std(ddof=1) / math.sqrt(n_runs) if n_runs >= 2 else 0.0  # one run: B_crit's SE only
            ratio = fit.b_crit / mean if mean > 0 else math.nan
            rel = math.hypot(fit.log_b_crit_se, se / mean) if mean > 0 else math.nan
            label = {"b_simple": "B_simple = tr Σ/|G|²", "b_noise": "B_noise = tr(HΣ)/GᵀHG"}[col]
            checks.append(
                Check.close(
                    f"bcrit-vs-{name}",
                    f"the fitted B_crit ≈ {label} measured by NoiseMonitor, "
                    f"averaged over steps to the target and over the tuned runs (ratio within a "
                    f"factor {FACTOR:g})",
                    ratio,
                    1.0,
                    factor=FACTOR,
                    se=ratio * rel,
                    detail=f"B_crit {fit.b_crit:.4g}, {col} {mean:.4g} ± {se:.3g} ({n_runs} runs)",
                )
            )
        return checks

    def metrics(self, config: CriticalBatchConfig, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        grid, runs = tables["grid"], tables["runs"]
        fit = fit_critical_batch(grid["batch_size"], grid["steps"])
        boot = bootstrap_critical_batch(tables["tuned"], seed=config.seed, n_boot=config.n_boot)
        metrics = {
            "b_crit": fit.b_crit,
            "log_b_crit_se": fit.log_b_crit_se,
            "b_crit_boot_95": boot,
            "s_min": fit.s_min,
            "e_min": fit.e_min,
            "rms_log_residual": fit.rms_log_residual,
            "b_simple_mean": float(runs["b_simple"].mean()),
            "b_noise_mean": float(runs["b_noise"].mean()),
            "grid": grid.to_dict(orient="records"),
            "noise_by_batch": runs.groupby("batch_size")[["b_simple", "b_noise"]]
            .mean()
            .reset_index()
            .to_dict(orient="records"),
        }
        return metrics

    def plot(self, config: CriticalBatchConfig, tables: dict[str, pd.DataFrame], out: Path) -> None:
        grid = tables["grid"]
        fit = fit_critical_batch(grid["batch_size"], grid["steps"])
        _gns_plot.plot(config.target_loss, tables["curves"], grid, fit, tables["runs"], out, factor=FACTOR)


def _trend_checks(grid: pd.DataFrame) -> list[Check]:
    """S decreases and E increases with B (each step up to 4 SE over seeds)."""
    se = grid["steps_se"].fillna(0.0).to_numpy()
    b = grid["batch_size"].to_numpy(dtype=float)
    return [
        Check.ordered(
            "steps-decrease",
            "steps to target S decrease with the batch size (tuned lr)",
            grid["steps"].tolist(),
            increasing=False,
            se=se.tolist(),
        ),
        Check.ordered(
            "examples-increase",
            "examples to target E = B·S increase with the batch size (tuned lr)",
            grid["examples"].tolist(),
            increasing=True,
            se=(b * se).tolist(),
        ),
    ]
