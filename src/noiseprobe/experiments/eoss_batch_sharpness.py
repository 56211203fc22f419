"""``eoss-batch-sharpness``: the edge of stochastic stability (Andreyev & Beneventano, arXiv 2412.20553).

Setting (theirs on the embedded data instead of a CIFAR-10 subset): the first ``n_train`` samples of the
embedded training split, MSE ℓ_i = ½ Σ_c (f_c(x_i) − y_ic)² on one-hot targets, the tanh MLP of
``eos-sharpness`` (the same initialisation for every run), SGD without momentum on i.i.d. uniform batches
of each of ``batch_sizes`` at each of ``lrs``, plus full-batch GD (batch size N) at each ``lrs``; one
chunk per (η, b). Every ``measure_every`` steps, at fixed parameters (:mod:`noiseprobe.monitor.stochastic_stability`):
batch sharpness E_B[g_Bᵀ H_B g_B/|g_B|²] by Monte Carlo over batches of b to ≤ ``mc_rel_se`` standard
error, and the full-batch λ_max by its own Lanczos.

Checks, as the paper claims them (bands fixed in the config; SGD run k = (η, b)):
``eoss-reaches-{k}`` batch sharpness rises to 2/η (max of η·bs/2 ≥ 1 after its first value below 1); ``eoss-band-{k}`` η·bs/2 lies in
``band`` for ≥ ``band_fraction`` of the measurements from its first upward crossing of 1 on; ``lambda-below-{k}``
η·λ_max/2 < 1 (median over the last ``tail_fraction`` of the measurements); ``gap-grows-lr{i}`` that
median increases with b (the gap 1 − η·λ_max/2 grows as the batch shrinks); ``gd-edge-lr{i}`` under GD
the same median of η·λ_max/2 is in ``gd_band`` (Cohen et al.). Runs that diverged are not measurable.
Results as measured, and a study across η and b: docs/eoss.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from noiseprobe.core.checks import Check
from noiseprobe.core.config import ExperimentConfig, param
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.experiment import Chunk, Experiment, RunCost
from noiseprobe.core.plotting import new_figure, savefig
from noiseprobe.core.seeding import torch_generator
from noiseprobe.data.embedded import load_default
from noiseprobe.experiments._data import check_at_most, embedded_train_size
from noiseprobe.experiments.eos_sharpness import half_mse, tanh_mlp
from noiseprobe.monitor.stochastic_stability import eoss_summary, sgd_with_batch_sharpness

#: memory model (bytes above a warm worker): torch's first-use working set (vmap, forward-over-reverse),
#: plus, per (sample × width), the activations of a vmapped block of 64 Monte Carlo batches or of a GD step;
#: fitted to the RSS growth of a warm worker running one quick-preset chunk: 193 MiB at b = 128 (estimate
#: 254), 131 MiB at b = 8 (estimate 147), 72 MiB for GD (estimate 147)
CHUNK_BASE_BYTES = 140 * 2**20
BYTES_PER_ACTIVATION = 16
#: seconds per (sample × weight) of one step's forward and backward (one torch thread; eos-sharpness's)
SECONDS_PER_SAMPLE_WEIGHT = 1.6e-10
#: a measurement: Monte Carlo batches (≤ 2 % SE took 64-256 in the pilots), ~5 passes each, plus ~20
#: full-batch Hessian-vector products (~3 passes each)
MC_BATCHES, MC_PASSES, LANCZOS_PASSES = 256, 5, 60


@dataclass(frozen=True, kw_only=True)
class EoSSConfig(ExperimentConfig):
    n_train: int = param(lo=16, hi=3000, help="training samples (the first of the embedded training split)")
    width: int = param(lo=1, hi=4096, help="hidden width of the tanh MLP")
    depth: int = param(lo=1, hi=8, help="hidden layers")
    lrs: list[float] = param(lo=0.0, lo_open=True, min_len=1, help="step sizes η (SGD and GD)")
    batch_sizes: list[int] = param(lo=1, min_len=3, help="SGD batch sizes (each < n_train); GD is added")
    steps: int = param(lo=10, hi=10**6, help="optimizer steps per run")
    measure_every: int = param(lo=1, help="steps between measurements")
    mc_rel_se: float = param(lo=0.0, hi=0.02, lo_open=True, help="Monte Carlo relative SE of batch sharpness")
    band: list[float] = param(lo=0.0, min_len=2, max_len=2, help="band of η·batch sharpness/2 (the paper's 2/η)")
    band_fraction: float = param(lo=0.0, hi=1.0, help="least fraction of measurements in band after crossing")
    tail_fraction: float = param(lo=0.0, hi=1.0, lo_open=True, help="last fraction of measurements for λ_max")
    gd_band: list[float] = param(lo=0.0, min_len=2, max_len=2, help="band of η·λ_max/2 under GD (Cohen et al.)")

    size_fields = ("n_train", "width", "depth", "steps")

    def check(self) -> None:
        for field in ("lrs", "batch_sizes"):
            if len(set(getattr(self, field))) != len(getattr(self, field)):
                raise ConfigError(field, getattr(self, field), "distinct values")
        if max(self.batch_sizes) >= self.n_train:
            raise ConfigError("batch_sizes", self.batch_sizes, f"each below n_train = {self.n_train} (GD is added)")
        for field in ("band", "gd_band"):
            lo, hi = getattr(self, field)
            if not lo < 1 < hi:
                raise ConfigError(field, getattr(self, field), "[lo, hi] with lo < 1 < hi")
        if self.measure_every > self.steps:
            raise ConfigError("measure_every", self.measure_every, f"at most steps = {self.steps}")


class EoSSBatchSharpness(Experiment):
    """Batch sharpness at 2/η under SGD, λ_max below it, GD's λ_max at 2/η."""

    id = "eoss-batch-sharpness"
    title = "Edge of stochastic stability (Andreyev & Beneventano 2024): SGD batch sharpness vs 2/lr, λ_max below"
    Config = EoSSConfig
    tables = ("measurements",)
    _common = {"depth": 2, "mc_rel_se": 0.02, "band": [0.85, 1.15], "band_fraction": 0.8, "tail_fraction": 0.25}
    presets = {
        "quick": {
            "seed": 0,
            **_common,
            "n_train": 500,
            "width": 64,
            "lrs": [0.05, 0.1],
            "batch_sizes": [8, 32, 128],
            "steps": 2000,
            "measure_every": 100,
            "gd_band": [0.9, 1.1],
        },
        "full": {
            "seed": 0,
            **_common,
            "n_train": 2000,
            "width": 128,
            "lrs": [0.02, 0.04, 0.08],
            "batch_sizes": [8, 16, 32, 64, 128, 256],
            "steps": 20000,
            "measure_every": 250,
            "gd_band": [0.9, 1.1],
        },
    }
    diverging = {"lrs": [50.0, 100.0], "steps": 20, "measure_every": 10}

    def check_data(self, config: EoSSConfig) -> None:
        """``n_train`` at most the embedded training split."""
        check_at_most("n_train", config.n_train, embedded_train_size(), "embedded")

    def estimate(self, config: EoSSConfig) -> RunCost:
        d_in = 784
        weights = d_in * config.width + (config.depth - 1) * config.width**2 + 10 * config.width
        measures = config.steps // config.measure_every + 1
        per_run = [
            SECONDS_PER_SAMPLE_WEIGHT
            * weights
            * (
                b * config.steps
                + measures
                * (MC_PASSES * b * (1 if b == config.n_train else MC_BATCHES) + LANCZOS_PASSES * config.n_train)
            )
            for b in [*config.batch_sizes, config.n_train]
        ]
        b_big = max(config.n_train, 64 * max(config.batch_sizes))
        return RunCost(
            CHUNK_BASE_BYTES + BYTES_PER_ACTIVATION * b_big * (config.width * config.depth + d_in) + 32 * weights,
            sum(per_run) * len(config.lrs),
            ("n_train", "width", "depth", "steps"),
        )

    def chunks(self, config: EoSSConfig) -> list[Chunk]:
        runs = [(lr, b) for lr in config.lrs for b in [config.n_train, *config.batch_sizes]]
        replica = {run: i for i, run in enumerate(runs)}  # the run's stream index: fixed by the config alone
        runs.sort(key=lambda r: -r[1])  # GD (the costliest) first
        return [Chunk(f"lr{lr:.6g}-b{b}", {"lr": lr, "b": b, "replica": replica[(lr, b)]}) for lr, b in runs]

    def measure(self, config: EoSSConfig, chunk: Chunk) -> dict[str, pd.DataFrame]:
        data = load_default(n_train=config.n_train, seed=config.seed)
        x = data.X_train
        y = torch.nn.functional.one_hot(data.y_train, 10).to(x.dtype)
        lr, b, r = float(chunk.spec["lr"]), int(chunk.spec["b"]), int(chunk.spec["replica"])
        net = tanh_mlp(seed=config.seed, width=config.width, depth=config.depth, d_in=x.shape[1], n_out=10)
        losses, meas = sgd_with_batch_sharpness(
            net,
            half_mse,
            x,
            y,
            lr=lr,
            batch_size=b,
            steps=config.steps,
            measure_every=config.measure_every,
            gen=torch_generator(config.seed, r, 1),
            mc_gen=torch_generator(config.seed, r, 2),
            rel_se=config.mc_rel_se,
        )
        return {"results": losses.assign(lr=lr, b=b), "measurements": meas.assign(lr=lr, b=b)}

    def derive(self, config: EoSSConfig, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """``runs``: one row per (η, b), GD (b = n_train) last at each η: :func:`eoss_summary` of the run's
        measurements and the medians of η·λ_max/2 and η·bs/2 over their last ``tail_fraction`` (NaN if diverged)."""
        meas = tables["measurements"]
        band = (config.band[0], config.band[1])
        rows = []
        for lr in sorted(config.lrs):
            for b in [*sorted(config.batch_sizes), config.n_train]:
                m = meas[(meas["lr"] == lr) & (meas["b"] == b)].sort_values("step")
                s = eoss_summary(m, lr=lr, band=band).to_dict()
                ok = m if np.isnan(s["diverged_step"]) else m.iloc[:0]  # a diverged run measures nothing
                tail = ok.iloc[len(ok) - max(1, int(round(config.tail_fraction * len(ok)))) :]
                s["tail_lambda_ratio"] = float(np.median(lr * tail["lambda_max"] / 2)) if len(ok) else float("nan")
                s["tail_bs_ratio"] = float(np.median(lr * tail["batch_sharpness"] / 2)) if len(ok) else float("nan")
                rows.append({"lr": lr, "b": b, **s})
        return {"runs": pd.DataFrame(rows)}

    def checks(self, config: EoSSConfig, tables: dict[str, pd.DataFrame]) -> list[Check]:
        runs = _by_run(tables["runs"])
        checks: list[Check] = []
        for i, lr in enumerate(sorted(config.lrs), start=1):
            checks += _sgd_checks(config, i, lr, sorted(config.batch_sizes), runs)
            gd = runs[(lr, config.n_train)]
            checks.append(
                Check.within(
                    f"gd-edge-lr{i}",
                    f"η = {lr:g}, full-batch GD: λ_max ≈ 2/η (median η·λ_max/2 over the last "
                    f"{config.tail_fraction:g} of the run; Cohen et al.)",
                    gd["tail_lambda_ratio"],
                    *config.gd_band,
                    **_diverged(gd),
                )
            )
        return checks

    def metrics(self, config: EoSSConfig, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        return {"runs": tables["runs"].to_dict(orient="records")}

    def plot(self, config: EoSSConfig, tables: dict[str, pd.DataFrame], out: Path) -> None:
        meas, lrs = tables["measurements"], sorted(config.lrs)
        fig, axes = new_figure(len(lrs), 2, width=4.2, height=3.0)
        ax = np.asarray(axes).reshape(2, len(lrs))
        for j, lr in enumerate(lrs):
            for k, b in enumerate([*sorted(config.batch_sizes), config.n_train]):
                m = meas[(meas["lr"] == lr) & (meas["b"] == b)]
                label = "GD" if b == config.n_train else f"b = {b}"
                ax[0, j].plot(m["step"], lr * m["batch_sharpness"] / 2, color=f"C{k}", label=label)
                ax[1, j].plot(m["step"], lr * m["lambda_max"] / 2, color=f"C{k}", label=label)
            ax[0, j].axhspan(*config.band, color="grey", alpha=0.2)
            ax[0, j].set(xlabel="step", ylabel="η·batch sharpness/2", title=f"η = {lr:g}")
            ax[1, j].axhline(1.0, color="k", lw=0.6)
            ax[1, j].set(xlabel="step", ylabel="η·λ_max/2 (full batch)")
            ax[0, j].legend(fontsize=7)
        savefig(fig, out / "eoss_batch_sharpness.png")


def _by_run(runs: pd.DataFrame) -> dict[tuple[float, int], dict[str, Any]]:
    """The rows of the ``runs`` table by (η, b)."""
    records = [{str(k): v for k, v in r.items()} for r in runs.to_dict(orient="records")]
    return {(float(r["lr"]), int(r["b"])): r for r in records}


def _diverged(s: dict[str, Any]) -> dict[str, Any]:
    return {"detail": f"diverged at step {s['diverged_step']:g}"} if np.isfinite(s["diverged_step"]) else {}


def _sgd_checks(
    config: EoSSConfig, i: int, lr: float, sizes: list[int], runs: dict[tuple[float, int], dict[str, Any]]
) -> list[Check]:
    """The paper's three claims for the SGD runs at one learning rate (module docstring)."""
    out: list[Check] = []
    lo, hi = config.band
    for b in sizes:
        s, tag, at = runs[(lr, b)], f"lr{i}-b{b}", f"η = {lr:g}, SGD b = {b}"
        note = _diverged(s)
        out.append(
            Check.greater(
                f"eoss-reaches-{tag}",
                f"{at}: batch sharpness rises to 2/η (max η·bs/2 after its first value below 1)",
                s["max_ratio"],
                1.0,
                **note,
            )
        )
        claim = f"{at}: η·batch sharpness/2 in [{lo:g}, {hi:g}] for ≥ {config.band_fraction:.0%} of the measurements after it first rises to 1"  # noqa: E501
        if s["n_after"]:
            seen = (
                f"{s['n_after']} measurements from step {s['first_crossing']:g}; median η·bs/2 {s['median_ratio']:.3g}"
            )
            out.append(
                Check.greater(f"eoss-band-{tag}", claim, s["in_band_fraction"], config.band_fraction, detail=seen)
            )
        else:
            out.append(
                Check.not_measurable(f"eoss-band-{tag}", claim, "batch sharpness never rose to 2/η from below", **note)
            )
        out.append(
            Check.less(
                f"lambda-below-{tag}",
                f"{at}: full-batch λ_max below 2/η (median η·λ_max/2 over the last {config.tail_fraction:g} of the run)",
                s["tail_lambda_ratio"],
                1.0,
                **note,
            )
        )
    out.append(
        Check.ordered(
            f"gap-grows-lr{i}",
            f"η = {lr:g}: the gap 2/η − λ_max grows as the batch shrinks (η·λ_max/2 increasing in b = {sizes})",
            [runs[(lr, b)]["tail_lambda_ratio"] for b in sizes],
            **next((_diverged(runs[(lr, b)]) for b in sizes if _diverged(runs[(lr, b)])), {}),
        )
    )
    return out
