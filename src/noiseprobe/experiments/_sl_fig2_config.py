"""The config of ``sl-fig2`` (:mod:`noiseprobe.experiments.sl_fig2`), shared by its figure."""

from __future__ import annotations

from dataclasses import dataclass

from noiseprobe.core.config import param
from noiseprobe.core.errors import ConfigError
from noiseprobe.experiments.sl_common import LR_MAX, ChainsConfig, check_iterations, check_start, check_times


@dataclass(frozen=True, kw_only=True)
class Fig2Config(ChainsConfig):
    lrs: list[float] = param(lo=0.0, hi=LR_MAX, lo_open=True, min_len=2, help="distinct step sizes α")
    sigma2_over_lr: float = param(lo=0.0, hi=0.2, lo_open=True, help="σ²/α (noise variance per unit step)")
    main_lr: float = param(lo=0.0, hi=LR_MAX, lo_open=True, help="the α of the path panels (one of lrs)")
    t_end: float = param(lo=0.5, hi=50.0, help="end of the run on the clock t = ασ²k")
    t_check: list[float] = param(min_len=1, help="times t at which the error against Theorem A is measured")
    t_fast: float = param(lo=0.5, hi=50.0, help="window of the fast approach on the clock αk (every step kept)")
    close: float = param(lo=0.0, hi=0.5, lo_open=True, help="distance to Γ that counts as 'came close'")
    w0: list[float] = param(min_len=2, max_len=2, help="start [w1, w2] near Γ")

    def check(self) -> None:
        if len(set(self.lrs)) != len(self.lrs):
            raise ConfigError("lrs", self.lrs, "a list of at least two distinct step sizes")
        if self.main_lr not in self.lrs:
            raise ConfigError("main_lr", self.main_lr, f"one of lrs = {self.lrs}")
        check_times("t_check", self.t_check, self.t_end)
        check_start("w0", self.w0)
        check_iterations("t_end/(lrs·sigma2_over_lr·lrs)", self.t_end, min(self.lrs) ** 2 * self.sigma2_over_lr)
