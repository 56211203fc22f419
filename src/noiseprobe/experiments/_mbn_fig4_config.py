"""The config of Fig. 4 (minibatch noise, :mod:`noiseprobe.experiments.mbn_fig4`), shared by its panel modules."""

from __future__ import annotations

from dataclasses import dataclass

from noiseprobe.core.config import param
from noiseprobe.core.errors import ConfigError
from noiseprobe.experiments._mbn import ChainsConfig


@dataclass(frozen=True, kw_only=True)
class Fig4Config(ChainsConfig):
    a: float = param(lo=0.0, lo_open=True, help="curvature of the 1d panels")
    batch_size: int = param(lo=1, hi=10**6, help="batch size S of the 1d panels")
    lrs: list[float] = param(lo=0.0, lo_open=True, min_len=1, help="learning rates of panel (a)")
    hess: list[float] = param(lo=0.0, lo_open=True, min_len=2, max_len=2, help="Hessian eigenvalues of the 2d panels")
    lr2d: float = param(lo=0.0, lo_open=True)
    batch_sizes_2d: list[int] = param(lo=1, hi=10**6, min_len=1, help="batch sizes of the 2d panels (b), (c)")
    chains2d: int = param(lo=2, hi=10**8)
    steps2d: int = param(lo=10, hi=10**8)
    snapshot_every: int = param(lo=1)
    lr_dist: float = param(lo=0.0, lo_open=True, help="learning rate of the 1d distribution panel (d)")
    dist_bins: list[float] = param(lo=0.0, lo_open=True, min_len=1, help="bin edges in units of the exact √Σ")
    chains_dist: int = param(lo=2, hi=10**8)
    steps_dist: int = param(lo=10, hi=10**8)
    every_dist: int = param(lo=1)
    D_hd: int = param(lo=2, hi=64)
    batch_size_hd: int = param(lo=1, hi=10**6, help="batch size of the high-dimensional panel (e)")
    lr_hd: float = param(lo=0.0, lo_open=True)
    hess_hd: list[float] = param(lo=0.0, lo_open=True, min_len=2, max_len=2, help="[smallest, largest] eigenvalue")
    chains_hd: int = param(lo=2, hi=10**8)
    steps_hd: int = param(lo=10, hi=10**8)
    #: renamed fields (old name -> new name): old --set and run.json still work, with a deprecation line
    renamed = {"S": "batch_size", "S2d": "batch_sizes_2d", "S_hd": "batch_size_hd"}

    size_fields = (
        "chains",
        "steps",
        "burn_in",
        "chains2d",
        "steps2d",
        "batch_sizes_2d",
        "chains_dist",
        "steps_dist",
        "chains_hd",
        "steps_hd",
        "D_hd",
        "batch_size_hd",
    )

    def check(self) -> None:
        bins = self.dist_bins
        if any(b1 <= b0 for b0, b1 in zip(bins, bins[1:])):
            raise ConfigError("dist_bins", bins, "strictly increasing bin edges (in units of the exact √Σ)")
        if self.chains_dist < len(bins) + 2:  # the clustered χ² needs more chains than bins
            raise ConfigError("chains_dist", self.chains_dist, f"an integer >= {len(bins) + 2} (number of bins + 1)")
        if self.steps_dist < self.every_dist:
            raise ConfigError("steps_dist", self.steps_dist, f">= every_dist = {self.every_dist}")
        if self.hess_hd[0] > self.hess_hd[1]:
            raise ConfigError("hess_hd", self.hess_hd, "[smallest, largest] Hessian eigenvalue")
