"""NIN paper (001) MLP sweeps (nin-fig1, nin-fig2-bottom, nin-fig3; App. B settings): the experiment they share.

Every run is a ReLU MLP with one NIN on the first hidden layer's pre-activations, trained by plain SGD
(no momentum, sampling without replacement, last incomplete batch dropped) as a batched ensemble
(:func:`noiseprobe.nin.ensemble.train_ensemble`): replicas are (σε, seed, NIN mode) points; the global
replica index is the *seed index*, so all σε of one seed share weights, data order and unit noise ξ
(common random numbers), and a σε = 0 run per seed is the same network without a NIN (ε = 0 makes the
NIN inert: its gradient is ε·g = 0). Chunks are (seed, σε-group) blocks; results do not depend on them.

Noise levels are given as Table 1 coefficients c: σε² = c · d_in/(N_w η) for MSE and c · d_in/η for CE
(:func:`noiseprobe.nin.levels.sigma2_unit`), with d_in, N_w, η those of the run (so quick presets at reduced
sizes scale the levels the way Table 1 does).

The config, data and preset defaults are :mod:`noiseprobe.experiments._nin_config` (with the ambiguities of
App. B exposed as fields); the phases, checks and metrics of the measured runs
:mod:`noiseprobe.experiments._nin_phases`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import pandas as pd
import torch

from noiseprobe.core.checks import Check
from noiseprobe.core.config import ExperimentConfig
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.experiment import Chunk, Experiment, RunCost
from noiseprobe.core.plotting import PHASE_COLOURS, new_figure, savefig
from noiseprobe.experiments import _nin_phases as phases
from noiseprobe.experiments._data import check_at_most
from noiseprobe.experiments._nin_config import SweepConfig, data_sizes, load_data
from noiseprobe.nin.drift import measure_niw_decay
from noiseprobe.nin.ensemble import init_ensemble, order_seed, train_ensemble
from noiseprobe.nin.levels import level_sigmas
from noiseprobe.nin.phases import PHASES

#: the config type of a sweep (``Fig1Config`` adds the centre level)
C = TypeVar("C", bound=SweepConfig)


class NINSweep(Experiment, Generic[C]):
    """A σε × seed sweep of MLPs with a NIN (module docstring): measurement, the per-run table and phase
    fractions (``derive``), the phase and eq. (2) checks and metrics, the phase bar. Subclasses set the
    presets and draw their figures (then the phase bar, ``super().plot``)."""

    tables = ("steps", "eq2")
    Config: ClassVar[type[ExperimentConfig] | None] = SweepConfig
    #: NIN modes run at every level ("epoch" = re-randomised each epoch, "fixed" = drawn once)
    modes: ClassVar[tuple[str, ...]] = ("epoch",)
    #: a learning rate at which every replica's weights overflow in the first steps
    diverging: ClassVar[dict[str, Any] | None] = {"lr": 1e6}

    def check_data(self, config: C) -> None:
        """``n_train`` at most the training samples the data offers; ``pool`` a divisor of its image side
        (the IDX files are read and checked here, before the run directory is claimed)."""
        available, side = data_sizes(config)
        check_at_most("n_train", config.n_train, available, config.dataset, zero_is_all=True)
        if side % config.pool:
            raise ConfigError("pool", config.pool, f"a divisor of the image side {side} of the {config.dataset} data")

    def estimate(self, config: C) -> RunCost:
        """One chunk trains K = (1 + levels in the chunk) × modes replicas: per replica its weights and
        gradients, the ξ table and the per-step losses, and activation buffers of the widest layer for
        the batch (forward and backward), the evaluation block (≤ 4096 samples) and the probe samples;
        plus the data (float32, train and test, pooled) over a fixed ~80 MB of torch's first-call
        allocations, and the eq. (2) companion run (float64 training data, probe activations). Seconds: 6 flop per weight and sample at ~2 Gflop/s."""
        d_in = 784 // config.pool**2
        sizes = [d_in, *config.hidden, 10]
        n_w = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
        n_total = 70000 if config.dataset == "fashion-mnist" else 5000
        n_train = config.n_train or int(0.6 * n_total)
        k = (1 + min(config.sigmas_per_chunk, len(config.levels))) * len(self.modes)
        widest = max(config.hidden)
        acts = 4 * k * widest * (6 * config.batch_size + 2 * min(4096, n_train) + 2 * config.probe_samples)
        steps = config.epochs * (n_train // config.batch_size)
        per_rep = 4 * 4 * n_w + 8 * n_train + 8 * steps * 6
        companion = 10e6 + 8 * n_train * d_in + 8 * 4 * config.probe_samples * widest
        peak = 80e6 + 4 * n_total * d_in * 2 + k * per_rep + acts + companion
        seconds = 6.0 * k * n_w * config.batch_size * steps / 2e9
        return RunCost(int(peak), seconds, ("hidden", "batch_size", "sigmas_per_chunk", "epochs"))

    def sigmas(self, config: C) -> np.ndarray:
        """σε per level: √(c · base) with the run's d_in, N_w = first hidden width and η."""
        return level_sigmas(
            config.levels,
            loss=config.loss,
            d_input=load_data(config)[0].shape[1],
            n_w=config.hidden[config.nin_layer],
            lr=config.lr,
        )

    def chunks(self, config: C) -> list[Chunk]:
        k, n_lev = config.sigmas_per_chunk, len(config.levels)
        return [
            Chunk(
                f"s{s:04d}-l{a:03d}", {"seed_index": s, "levels": list(range(a, min(a + k, n_lev))), "baseline": a == 0}
            )
            for s in range(config.n_seeds)
            for a in range(0, n_lev, k)
        ]

    def measure(self, config: C, chunk: Chunk) -> dict[str, pd.DataFrame]:
        """The chunk's seed at its levels (and the no-NIN run and the eq. (2) companion run in the seed's
        first chunk): per-record ``results``, per-step ``steps``, ``eq2``."""
        xtr, ytr, xte, yte = load_data(config)
        sig = self.sigmas(config)
        points = [(float(sig[i]), i, m) for i in chunk.spec["levels"] for m in self.modes]
        if chunk.spec["baseline"]:
            points.insert(0, (0.0, -1, "epoch"))
        sigmas, level_idx, modes = zip(*points)
        run = train_ensemble(
            xtr,
            ytr,
            xte,
            yte,
            hidden=config.hidden,
            sigmas=list(sigmas),
            replicas=[chunk.spec["seed_index"]] * len(points),
            seed=config.seed,
            loss=config.loss,
            lr=config.lr,
            batch_size=min(config.batch_size, xtr.shape[0]),
            epochs=config.epochs,
            nin_layer=config.nin_layer,
            nin_mode=list(modes),
            niw_init_std=_niw_std(config, xtr.shape[1]),
            record_epochs=[e for e in range(1, config.epochs + 1) if e <= 10 or e % config.record_every == 0],
            probe_samples=config.probe_samples,
        )
        for df in (run.records, run.steps):
            df.insert(1, "level", np.asarray(level_idx)[df.pop("member").to_numpy()])
        eq2 = _eq2_run(config, chunk.spec["seed_index"], float(sig[0])) if chunk.spec["baseline"] else pd.DataFrame()
        return {"results": run.records, "steps": run.steps, "eq2": eq2}

    def derive(self, config: C, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """``runs``: one row per run with its phase (:func:`~noiseprobe.experiments._nin_phases.run_table`);
        ``fractions``: the phase fractions per σε of the NIN runs."""
        chance = 1.0 / (int(load_data(config)[1].max()) + 1)
        runs = phases.run_table(config, tables["results"], tables["steps"], chance)
        return {"runs": runs, "fractions": phases.fractions(runs)}

    def checks(self, config: C, tables: dict[str, pd.DataFrame]) -> list[Check]:
        return phases.phase_checks(config, tables["runs"], tables["fractions"], tables.get("eq2", pd.DataFrame()))

    def metrics(self, config: C, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        return {
            "horizon_steps": int(tables["results"]["step"].max()),
            "sigma_levels": self.sigmas(config).tolist(),
            **phases.phase_metrics(tables["runs"], tables["fractions"], tables.get("eq2", pd.DataFrame())),
        }

    def plot(self, config: C, tables: dict[str, pd.DataFrame], out: Path) -> None:
        """The phase bar ``phases.png``: stacked phase fractions per σε (the figures' top bar, over seeds)."""
        frac = tables["fractions"]
        fig, ax = new_figure(width=5.0, height=2.2)
        x = np.arange(len(frac))
        bottom = np.zeros(len(frac))
        for p in PHASES:
            ax.bar(x, frac[p], bottom=bottom, color=PHASE_COLOURS[p], label=p)
            bottom += frac[p].to_numpy()
        ax.set_xticks(x, [f"{s:.3g}" for s in frac["sigma"]], rotation=45, fontsize=7)
        ax.set_xlabel("σε")
        ax.set_ylabel("fraction of seeds")
        ax.legend(fontsize=7, ncols=4, loc="upper center", bbox_to_anchor=(0.5, 1.35))
        savefig(fig, out / "phases.png")


def _niw_std(config: SweepConfig, d_in: int) -> float:
    """The standard deviation of the NIW init (``niw_init``: "unit" 1, "layer" the fed layer's fan-in^-1/2)."""
    fan_in = d_in if config.nin_layer == 0 else config.hidden[config.nin_layer - 1]
    return 1.0 if config.niw_init == "unit" else float(fan_in) ** -0.5


def _eq2_run(config: SweepConfig, seed_index: int, sigma: float) -> pd.DataFrame:
    """The companion run of the eq. (2) check (docs/nin_probe.md, the eq. (2) study): seed
    ``seed_index``'s network at the smallest level, same init, trained by the same SGD for the same
    steps in float64, recording ‖W_NI‖ with both predicted rates (:func:`noiseprobe.nin.drift.measure_niw_decay`)."""
    xtr, ytr, _, _ = load_data(config)
    ens = init_ensemble(
        [xtr.shape[1], *config.hidden, int(ytr.max()) + 1],
        [sigma],
        [seed_index],
        config.seed,
        nin_layer=config.nin_layer,
        niw_init_std=_niw_std(config, xtr.shape[1]),
        dtype=torch.float64,
    )
    b = min(config.batch_size, xtr.shape[0])
    m = measure_niw_decay(
        ens,
        xtr,
        ytr,
        loss=config.loss,
        lr=config.lr,
        batch_size=b,
        steps=config.epochs * (xtr.shape[0] // b),
        probe_samples=config.probe_samples,
        seed=int(order_seed(config.seed, seed_index)),
    )
    measured, local, smoothed = m.log_decay()
    table: pd.DataFrame = pd.DataFrame(
        {
            "replica": [seed_index],
            "sigma": [sigma],
            "measured_log_decay": measured,
            "predicted_local": local,
            "predicted_smoothed": smoothed,
        }
    )
    return table
