"""A tiny experiment used by the core tests: Gaussian random walks, one chunk per block of replicas."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from noiseprobe.core import divergence
from noiseprobe.core.checks import Check
from noiseprobe.core.config import ExperimentConfig, param
from noiseprobe.core.errors import ConfigError, NumericalError
from noiseprobe.core.experiment import Chunk, Experiment, RunCost
from noiseprobe.core.plotting import new_figure, savefig
from noiseprobe.core.seeding import ReplicaStreams


@dataclass(frozen=True, kw_only=True)
class WalkConfig(ExperimentConfig):
    n_replicas: int = param(lo=1, hi=10**6)
    per_chunk: int = param(lo=1)
    n_steps: int = param(lo=1, hi=10**6)
    step_sd: float = param(lo=0.0)
    sleep: float = param(lo=0.0, hi=10.0)

    size_fields = ("n_replicas", "n_steps")
    renamed = {"walks": "n_replicas"}  # as if the field had been called `walks` when runs were stored


class Walk(Experiment):
    id = "sample-walk"
    title = "random walks (test experiment)"
    tables = ("paths",)
    Config = WalkConfig
    diverging = {"step_sd": 1e10}  # every walk leaves 1e8 × the unit scale: nothing measurable
    presets = {
        "quick": {"seed": 7, "n_replicas": 24, "per_chunk": 4, "n_steps": 50, "step_sd": 1.0, "sleep": 0.0},
        "full": {"seed": 7, "n_replicas": 240, "per_chunk": 8, "n_steps": 500, "step_sd": 1.0, "sleep": 0.0},
    }

    def estimate(self, config: WalkConfig) -> RunCost:
        """Two (per_chunk, n_steps) float64 arrays live at once (the draws and their stack; then the steps
        and their cumulative sums), plus the small tables."""
        k, t = min(config.per_chunk, config.n_replicas), config.n_steps
        return RunCost(peak_bytes=2 * 8 * k * t + 4096 * k, seconds=None, drivers=("per_chunk", "n_steps"))

    def chunks(self, config: WalkConfig) -> list[Chunk]:
        n, k = config.n_replicas, config.per_chunk
        return [Chunk(f"r{a:05d}", {"start": a, "stop": min(a + k, n)}) for a in range(0, n, k)]

    def measure(self, config: WalkConfig, chunk: Chunk) -> dict[str, pd.DataFrame]:
        time.sleep(config.sleep)
        reps = np.arange(chunk.spec["start"], chunk.spec["stop"])
        steps = ReplicaStreams(config.seed, reps).normal((config.n_steps,)) * config.step_sd
        paths = np.cumsum(steps, axis=1)
        results = pd.DataFrame({"replica": reps, "final": paths[:, -1], "max": paths.max(axis=1)})
        long = pd.DataFrame(
            {"replica": np.repeat(reps, 5), "step": np.tile(np.arange(5), len(reps)), "x": paths[:, :5].ravel()}
        )
        return {"results": results, "paths": long}

    def derive(self, config: WalkConfig, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """The walks that stayed finite (shared by the check, the metric and the histogram)."""
        res = tables["results"]
        values = res[["final", "max"]].to_numpy()
        return {"finite": res[~divergence.diverged(values, divergence.bound(1.0), axis=1)]}  # unit-step walk

    def checks(self, config: WalkConfig, tables: dict[str, pd.DataFrame]) -> list[Check]:
        finals = tables["finite"]["final"]
        expected = config.n_steps * config.step_sd**2
        se = expected * np.sqrt(2 / max(len(finals) - 1, 1))
        return [Check.close("var-final", "Var x_T = T sd^2", _var(finals), expected, atol=0.0, se=se)]

    def metrics(self, config: WalkConfig, tables: dict[str, pd.DataFrame]) -> dict[str, float]:
        return {"var_final": _var(tables["finite"]["final"])}

    def plot(self, config: WalkConfig, tables: dict[str, pd.DataFrame], out: Path) -> None:
        fig, ax = new_figure()
        ax.hist(tables["finite"]["final"], bins=20)
        savefig(fig, out / "finals.png")


def _var(finals: pd.Series) -> float:
    return float(finals.var(ddof=1)) if len(finals) > 1 else float("nan")


@dataclass(frozen=True, kw_only=True)
class FaultyConfig(WalkConfig):
    error: str = param("none", choices=("none", "config", "numerical", "user", "data", "analyse"))
    flag: str = param("", help="the error is raised only while this file exists (then the run resumes)")
    fail_key: str = param("r00004", help="the chunk that raises")


class Faulty(Walk):
    """Walk that raises, in chunk ``fail_key`` (or in analyse, or in check_data) while ``flag`` exists."""

    id = "sample-faulty"
    Config = FaultyConfig
    presets = {"quick": {**Walk.presets["quick"], "error": "none", "flag": "", "fail_key": "r00004"}}

    def _armed(self, config: FaultyConfig) -> bool:
        return bool(config.flag) and Path(config.flag).exists()

    def check_data(self, config: FaultyConfig) -> None:
        if config.error == "data" and self._armed(config):
            raise ConfigError("n_train", 10**9, "at most the 3000 training samples of the data")

    def measure(self, config: FaultyConfig, chunk: Chunk) -> dict[str, pd.DataFrame]:
        if chunk.key == config.fail_key and self._armed(config):
            if config.error == "config":
                raise ConfigError("n_train", 100000, "at most 3000 (the training samples of the data)")
            if config.error == "numerical":
                raise NumericalError("the walk overflowed in chunk " + chunk.key)
            if config.error == "user":
                raise RuntimeError("a bug in the user's own experiment")
        return super().measure(config, chunk)

    def checks(self, config: FaultyConfig, tables: dict[str, pd.DataFrame]) -> list[Check]:
        if config.error == "analyse" and self._armed(config):
            raise RuntimeError("a bug in the user's own analysis")
        return super().checks(config, tables)
