"""Minibatch-noise paper (002), Fig. 1.

Left/middle (Sec. 6.1 after Thm 6): a two-layer tanh network 784-d-10 (cross-entropy, PyTorch default
init) trained on the embedded digits by SGD or Adam; the variance of the minibatch training loss over the
first epoch, against the width d, at a fixed learning rate and at one rescaled ∝ 1/d
(lr(d) = lr·d_ref/d). Thm 6: stability needs Σ_i 1/(2/(λa_i) − 1 + 1/S) < S, and the Hessian's trace
grows with d, so the stable λ shrinks ∝ 1/d.

Right (Sec. 4.3, Cor. 1): multinomial logistic regression trained by SGD at a large learning rate
(λ = 1.5, S = 32) with weight decay γ ∈ a grid that includes negative values; the test accuracy against γ.
Cor. 1 (eqs. 161–168): when the learning rate over-regularises, the best γ is negative.

The trainers live in :mod:`noiseprobe.minibatch.nets`; each panel's measurement, summary, checks and figures
in :mod:`noiseprobe.experiments._mbn_fig1_left` and :mod:`~noiseprobe.experiments._mbn_fig1_right`. Replicas: the replica index is the seed index
s = 0..n_seeds−1. The initial weights come from (config seed, s, stream 10 + width), the batch order from
(config seed, s, stream 1 left / 2 right), so both optimisers, both learning-rate rules and all widths
(right: all γ) share a seed's batch order — common random numbers, which makes their comparisons paired —
and nothing depends on chunking. A replica that diverges (the trainers' divergence rule,
:mod:`noiseprobe.minibatch.nets`) is recorded as diverged with its step (its loss variance is +inf, its test
accuracy counts as 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pandas as pd

from noiseprobe.core.checks import Check
from noiseprobe.core.experiment import Chunk, Experiment, RunCost
from noiseprobe.experiments import _mbn_fig1_left as left
from noiseprobe.experiments import _mbn_fig1_right as right
from noiseprobe.experiments._data import check_at_most, embedded_name, embedded_train_size
from noiseprobe.experiments._mbn_fig1_config import Fig1Config, Fig1LeftConfig, Fig1RightConfig

#: embedded digits: training / test set sizes and input dimension (for the memory estimate)
_N_TRAIN, _N_TEST, _D_IN, _K = 5000, 1000, 784, 10


_COMMON: dict[str, Any] = {"seed": 2022, "dataset": "default", "inputs": "standardised"}
_LEFT: dict[str, dict[str, Any]] = {
    "quick": {
        "n_seeds": 3,
        "widths": [25, 100, 400, 800],
        "d_ref": 50,
        "sgd_lr": 0.5,
        "adam_lr": 0.01,
        "batch_size": 32,
        "epochs": 1,
    },
    "full": {
        "n_seeds": 8,
        "widths": [25, 50, 100, 200, 400, 800, 1600],
        "d_ref": 50,
        "sgd_lr": 0.5,
        "adam_lr": 0.01,
        "batch_size": 32,
        "epochs": 1,
    },
}
_RIGHT: dict[str, dict[str, Any]] = {
    "quick": {
        "n_seeds": 4,
        "gammas": [-0.02, -0.01, -0.005, -0.002, 0.0, 0.002, 0.005, 0.01],
        "right_lr": 1.5,
        "right_batch_size": 32,
        "right_epochs": 3,
    },
    "full": {
        "n_seeds": 16,
        "gammas": [
            -0.03,
            -0.02,
            -0.015,
            -0.01,
            -0.007,
            -0.005,
            -0.003,
            -0.002,
            -0.001,
            0.0,
            0.001,
            0.002,
            0.005,
            0.01,
            0.02,
        ],
        "right_lr": 1.5,
        "right_batch_size": 32,
        "right_epochs": 10,
    },
}


def _preset(name: str, panels: tuple[str, ...]) -> dict[str, Any]:
    cfg = dict(_COMMON)
    for p in panels:
        cfg.update((_LEFT if p == "left" else _RIGHT)[name])
    if len(panels) == 2:
        cfg["n_seeds"] = max(_LEFT[name]["n_seeds"], _RIGHT[name]["n_seeds"])
    return cfg


#: the config of any of the three experiments (Fig1Config is both)
Fig1Panels = Fig1LeftConfig | Fig1RightConfig


def _left(config: Fig1Panels) -> Fig1LeftConfig:
    """``config`` as the left panels' config: an experiment with "left" in its ``panels`` has a
    :class:`Fig1LeftConfig` (Fig1Config or Fig1LeftConfig)."""
    return cast(Fig1LeftConfig, config)


def _right(config: Fig1Panels) -> Fig1RightConfig:
    """``config`` as the right panel's config: an experiment with "right" in its ``panels`` has a
    :class:`Fig1RightConfig` (Fig1Config or Fig1RightConfig)."""
    return cast(Fig1RightConfig, config)


class _Fig1Base(Experiment):
    panels: tuple[str, ...] = ("left", "right")
    tables = ("curves",)

    def chunks(self, config: Fig1Panels) -> list[Chunk]:
        """One chunk per (optimiser, width), largest first (Adam, widest: the chunk :meth:`estimate`
        describes, and the longest, so workers finish together), then the right panel."""
        out = []
        if "left" in self.panels:
            out += [
                Chunk(f"left-{opt}-d{w:05d}", {"panel": "left", "optimizer": opt, "width": w})
                for opt in ("adam", "sgd")
                for w in sorted(_left(config).widths, reverse=True)
            ]
        if "right" in self.panels:
            out.append(Chunk("right", {"panel": "right"}))
        return out

    def check_data(self, config: Fig1Panels) -> None:
        """The dataset is installed, and each batch size is at most its training split."""
        n = embedded_train_size(config.dataset)
        for field in ("batch_size", "right_batch_size"):
            if hasattr(config, field):
                check_at_most(field, getattr(config, field), n, embedded_name(config.dataset))

    def estimate(self, config: Fig1Panels) -> RunCost:
        """Peak of one worker: the data (float32, plus the loader's working copies) and the largest chunk —
        left: 2·n_seeds replica networks; parameters, gradients, the stacked copy, Adam's two moments and its
        foreach temporaries come to 14 copies of the parameters (measured: 10 for SGD); activations
        R·S·(784 + 4d) three times; right: the replica batch indices and the per-replica evaluation logits."""
        f4 = 4
        data = (_N_TRAIN + _N_TEST) * _D_IN * f4 * 3
        peak = 0
        drivers: list[str] = ["n_seeds"]
        if "left" in self.panels:
            lc = _left(config)
            r, s, d = 2 * lc.n_seeds, lc.batch_size, max(lc.widths)
            steps = lc.epochs * (_N_TRAIN // s)
            params = r * (_D_IN * d + d + d * _K + _K) * f4
            acts = r * s * (_D_IN + 4 * d) * f4
            peak = max(peak, 14 * params + 3 * acts + r * steps * (s * 8 + f4 * 4))
            drivers += ["widths", "batch_size", "epochs"]
        if "right" in self.panels:
            rc = _right(config)
            r, s = len(rc.gammas) * rc.n_seeds, rc.right_batch_size
            steps = rc.right_epochs * (_N_TRAIN // s)
            peak = max(peak, r * steps * s * 8 * 2 + 3 * r * s * _D_IN * f4 + 4 * r * _N_TRAIN * _K * f4)
            drivers += ["gammas", "right_batch_size", "right_epochs"]
        return RunCost(peak_bytes=int(data + peak + 20e6), drivers=tuple(drivers))

    def measure(self, config: Fig1Panels, chunk: Chunk) -> dict[str, pd.DataFrame]:
        if chunk.spec["panel"] == "right":
            return right.measure(_right(config))
        return left.measure(_left(config), chunk.spec["optimizer"], chunk.spec["width"])

    def checks(self, config: Fig1Panels, tables: dict[str, pd.DataFrame]) -> list[Check]:
        res = tables["results"]
        out = left.checks(res) if "left" in self.panels else []
        rc = _right(config)
        return out + (right.checks(rc, right.best_decay(rc, res)) if "right" in self.panels else [])

    def metrics(self, config: Fig1Panels, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        res = tables["results"]
        out = left.metrics(res) if "left" in self.panels else {}
        return out | (right.metrics(right.best_decay(_right(config), res)) if "right" in self.panels else {})

    def plot(self, config: Fig1Panels, tables: dict[str, pd.DataFrame], out: Path) -> None:
        res = tables["results"]
        if "left" in self.panels:
            left.plot(_left(config), res, out)
        if "right" in self.panels:
            right.plot(_right(config), right.best_decay(_right(config), res), out)


class Fig1(_Fig1Base):
    id = "mbn-fig1"
    title = "Minibatch-noise Fig. 1: loss variance vs width (SGD, Adam); negative optimal weight decay"
    Config = Fig1Config
    presets = {p: _preset(p, ("left", "right")) for p in ("quick", "full")}
    diverging = {"sgd_lr": 1e36, "adam_lr": 1e36, "right_lr": 1e36}


class Fig1Left(_Fig1Base):
    id = "mbn-fig1-left"
    title = "Minibatch-noise Fig. 1 left/middle: first-epoch loss variance vs width, fixed vs 1/width lr"
    panels = ("left",)
    Config = Fig1LeftConfig
    presets = {p: _preset(p, ("left",)) for p in ("quick", "full")}
    diverging = {"sgd_lr": 1e36, "adam_lr": 1e36}


class Fig1Right(_Fig1Base):
    id = "mbn-fig1-right"
    title = "Minibatch-noise Fig. 1 right: logistic regression at lr 1.5, the best weight decay is negative"
    panels = ("right",)
    Config = Fig1RightConfig
    presets = {p: _preset(p, ("right",)) for p in ("quick", "full")}
    diverging = {"right_lr": 1e36}
