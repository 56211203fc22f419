"""The config of ``sl-fig3`` (:mod:`noiseprobe.experiments.sl_fig3`), shared by its figure."""

from __future__ import annotations

import math
from dataclasses import dataclass

from noiseprobe.core.config import param
from noiseprobe.core.errors import ConfigError
from noiseprobe.experiments.sl_common import LR_MAX, ChainsConfig, check_iterations, check_times
from noiseprobe.limits import noises


@dataclass(frozen=True, kw_only=True)
class Fig3Config(ChainsConfig):
    lr: float = param(lo=0.0, hi=LR_MAX, lo_open=True, help="step size α of both rows")
    sigma2: float = param(lo=0.0, hi=0.05, lo_open=True, help="noise variance σ² (scalar η ~ N(0, σ²))")
    t_end_A: float = param(lo=0.5, hi=50.0, help="end of the non-degenerate run on t = ασ²k")
    t_end_B: float = param(lo=0.1, hi=50.0, help="end of the degenerate and minibatch runs on t = α²σ²k")
    t_check_A: list[float] = param(min_len=1, help="times t = ασ²k at which the top row is compared")
    t_check_B: list[float] = param(min_len=1, help="times t = α²σ²k at which the bottom row is compared")
    mb_lr: float = param(lo=0.0, hi=LR_MAX, lo_open=True, help="step size of minibatch SGD (stable on Γ for α < 0.1)")
    mb_w0: list[float] = param(min_len=2, max_len=2, help="minibatch start [w1, w2], both > 0")
    mb_chains: int = param(lo=1, hi=10**5, help="minibatch SGD chains (one chunk)")
    sde_dt: float = param(lo=1e-4, hi=0.2, help="Euler–Maruyama step of the Theorem B SDE")

    def check(self) -> None:
        check_times("t_check_A", self.t_check_A, self.t_end_A)
        check_times("t_check_B", self.t_check_B, self.t_end_B)
        if min(self.mb_w0) <= 0 or math.hypot(*self.mb_w0) > 2.5:
            raise ConfigError("mb_w0", self.mb_w0, "a point with positive coordinates and |w| <= 2.5")
        check_iterations("t_end_A/(lr·sigma2)", self.t_end_A, self.lr * self.sigma2)
        check_iterations("t_end_B/(lr²·sigma2)", self.t_end_B, self.lr**2 * self.sigma2)
        check_iterations("t_end_B/(mb_lr²·σ²_minibatch)", self.t_end_B, self.mb_lr**2 * mb_sigma2())


def mb_sigma2() -> float:
    """σ² of the minibatch noise (batch 1 of 2): 1/4."""
    sigma = noises.fig3_minibatch().sigma
    assert sigma is not None
    return sigma**2
