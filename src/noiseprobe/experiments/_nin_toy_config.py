"""The config of ``nin-fig2-top`` (:mod:`noiseprobe.experiments.nin_toy`), shared by its analysis and figures."""

from __future__ import annotations

from dataclasses import dataclass

from noiseprobe.core.config import ExperimentConfig, param
from noiseprobe.core.errors import ConfigError
from noiseprobe.nin import toy


@dataclass(frozen=True, kw_only=True)
class Fig2TopConfig(ExperimentConfig):
    """The toy sweep: a log grid of σε × seeds, both methods, plus the four illustrative panels."""

    methods: list[str] = param(
        choices=toy.METHODS, min_len=1, max_len=len(toy.METHODS), help="reduced (eqs. 5-6) and/or exact minibatch SGD"
    )
    batch_size: int = param(lo=1, hi=10**6)
    init: str = param(
        choices=tuple(toy.INITS), help="initial weight scales (docs/theory/noise_injection_nodes.md §5.1)"
    )
    sigma_min: float = param(lo=0.0, lo_open=True)
    sigma_max: float = param(lo=0.0, lo_open=True)
    n_sigma: int = param(lo=4, hi=4096)
    n_seeds: int = param(lo=2, hi=100_000)
    steps: int = param(lo=10, hi=10**8)
    lr: float = param(lo=0.0, lo_open=True)
    sigma_x: float = param(lo=0.0, lo_open=True)
    M: float = param()
    traj_sigmas: list[float] = param(lo=0.0, lo_open=True, min_len=4, max_len=4, help="one σε per phase panel")
    traj_seeds: int = param(lo=1, hi=64)
    traj_points: int = param(
        lo=2, hi=10_000, help="log-spaced points per illustrative trajectory (a panel's curve shows a few hundred)"
    )

    size_fields = ("n_sigma", "n_seeds", "steps", "traj_seeds", "traj_points")

    def check(self) -> None:
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError("methods", self.methods, "distinct entries of " + ", ".join(toy.METHODS))
        if not self.sigma_max > self.sigma_min:
            raise ConfigError("sigma_max", self.sigma_max, f"a number > sigma_min = {self.sigma_min:g}")
