"""The config of ``gns-critical-batch`` (:mod:`noiseprobe.experiments.gns_critical_batch`)."""

from __future__ import annotations

from dataclasses import dataclass

from noiseprobe.core.config import ExperimentConfig, param
from noiseprobe.core.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class CriticalBatchConfig(ExperimentConfig):
    n_train: int = param(lo=10, hi=3000, help="training samples (the first of the embedded training split)")
    hidden: int = param(lo=1, hi=4096, help="hidden width of the ReLU MLP")
    batch_sizes: list[int] = param(lo=1, hi=10**5, min_len=6, help="batch sizes B (distinct, >= 6)")
    lrs: list[float] = param(lo=0.0, lo_open=True, min_len=2, help="learning-rate grid, tuned per B and seed")
    seeds: int = param(lo=1, hi=1000, help="seeds per batch size")
    target_loss: float = param(lo=0.0, lo_open=True, help="target training loss (cross-entropy)")
    max_steps: int = param(lo=1, hi=10**6, help="steps before a run counts as not reaching the target")
    eval_ratio: float = param(lo=1.0, hi=2.0, lo_open=True, help="training loss evaluated at steps growing by this")
    snapshot_ratio: float = param(lo=1.0, hi=4.0, lo_open=True, help="monitor measurements at steps growing by this")
    probe_samples: int = param(lo=3, help="samples of the monitor's probe batch")
    n_boot: int = param(lo=10, hi=10**5, help="bootstrap resamples over seeds for the B_crit interval")

    size_fields = ("hidden", "batch_sizes", "lrs", "probe_samples")

    def check(self) -> None:
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise ConfigError("batch_sizes", self.batch_sizes, "distinct batch sizes")
        if len(set(self.lrs)) != len(self.lrs):
            raise ConfigError("lrs", self.lrs, "distinct learning rates")
        if self.probe_samples > self.n_train:
            raise ConfigError("probe_samples", self.probe_samples, f"at most n_train = {self.n_train}")
