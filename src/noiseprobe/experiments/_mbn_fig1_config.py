"""The configs of Fig. 1 (minibatch noise, :mod:`noiseprobe.experiments.mbn_fig1`): left/middle, right, both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from noiseprobe.core.config import ExperimentConfig, param
from noiseprobe.core.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class _Common(ExperimentConfig):
    seed: int = param(2022, lo=0, hi=2**63 - 1)
    dataset: Literal["default", "mnist5k", "digits"] = param("default")
    inputs: Literal["unit", "standardised"] = param("standardised", help="pixels / max, or standardised")
    n_seeds: int = param(lo=2, hi=1000, help="replicas (seeds) per point")


@dataclass(frozen=True, kw_only=True)
class Fig1LeftConfig(_Common):
    widths: list[int] = param(lo=1, hi=100_000, min_len=1, help="hidden widths d (distinct)")
    d_ref: int = param(lo=1, help="width at which the rescaled lr equals the fixed one")
    sgd_lr: float = param(lo=0.0, lo_open=True)
    adam_lr: float = param(lo=0.0, lo_open=True)
    batch_size: int = param(lo=1, hi=1000)
    epochs: int = param(lo=1, hi=100)

    size_fields: ClassVar[tuple[str, ...]] = ("n_seeds", "widths", "batch_size", "epochs")

    def check(self) -> None:
        if len(set(self.widths)) != len(self.widths):
            raise ConfigError("widths", self.widths, "a list of distinct integers >= 1")


@dataclass(frozen=True, kw_only=True)
class Fig1RightConfig(_Common):
    gammas: list[float] = param(min_len=2, help="weight decays γ (may be negative)")
    right_lr: float = param(lo=0.0, lo_open=True)
    right_batch_size: int = param(lo=1, hi=1000)
    right_epochs: int = param(lo=1, hi=1000)

    size_fields: ClassVar[tuple[str, ...]] = ("n_seeds", "right_batch_size", "right_epochs")


@dataclass(frozen=True, kw_only=True)
class Fig1Config(Fig1LeftConfig, Fig1RightConfig):
    size_fields: ClassVar[tuple[str, ...]] = (
        "n_seeds",
        "widths",
        "batch_size",
        "epochs",
        "right_batch_size",
        "right_epochs",
    )
