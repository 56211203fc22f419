"""``eos-sharpness``: gradient descent at the edge of stability (Cohen et al., ICLR 2021), measured with
:class:`~noiseprobe.NoiseMonitor`.

Setting (their Sec. 3, on the embedded data instead of a CIFAR-10 subset): full-batch GD on the first
``n_train`` samples of the embedded training split, MSE loss ℓ_i = ½ Σ_c (f_c(x_i) − y_ic)² on one-hot
targets, a tanh MLP (``depth`` hidden layers of ``width``; PyTorch's default initialisation, drawn from
stream (seed, 0) so that every learning rate starts from the same network), one run per learning rate η
(one chunk each). The sharpness λ_max(H) of the full-batch loss is the monitor's ``sharpness`` metric
(warm-started Lanczos) every ``measure_every`` steps; for GD its ``eos_ratio`` is η·λ_max/2.

Checks per learning rate (k = 1, 2, ... in increasing η; :func:`noiseprobe.monitor.edge_of_stability.eos_phases`):
``crosses-lr{k}`` the sharpness reaches 2/η; ``sharpening-lr{k}`` it rises before (mean sharpness in 4
equal windows of measurements from its pre-crossing minimum to the crossing, increasing);
``hover-median-lr{k}``, ``hover-p10-lr{k}``, ``hover-p90-lr{k}`` the median and the 10 %/90 % quantiles of
η·λ_max/2 over the measurements from ``settle_steps`` after the first crossing lie in [0.9, 1.1];
``loss-decreases-lr{k}`` the mean loss over the last quarter of the phase after the crossing is below that
of its first quarter; ``loss-nonmonotone-lr{k}`` the loss rose in at least 1 % of those steps. All are
deterministic (full-batch GD, Lanczos to 1e-3): no standard errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from noiseprobe.core.checks import Check
from noiseprobe.core.config import ExperimentConfig, param
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.experiment import Chunk, Experiment, RunCost
from noiseprobe.core.plotting import new_figure, savefig
from noiseprobe.core.seeding import torch_generator
from noiseprobe.data.embedded import load_default
from noiseprobe.experiments._data import check_at_most, embedded_train_size
from noiseprobe.monitor.edge_of_stability import eos_phases, gd_with_sharpness

#: the band of η·λ_max/2 that counts as hovering at the edge of stability, and the least fraction of
#: loss increases that counts as non-monotone
HOVER_BAND = (0.9, 1.1)
MIN_RISE_FRACTION = 0.01
#: memory model of one chunk (bytes above a warm worker's state; fitted to the RSS growth of the quick
#: preset's chunks, docs/monitor.md): torch's first-use working set, plus per (sample × layer width) the
#: activations of forward, backward and the Hessian-vector products
CHUNK_BASE_BYTES = 80 * 2**20
BYTES_PER_ACTIVATION = 24
#: time model (one torch thread, the shared development machine): seconds per (sample × weight) of one GD
#: step; a sharpness measurement costs about 10 steps (warm-started Lanczos)
SECONDS_PER_SAMPLE_WEIGHT = 1.6e-10
MEASURE_COST_STEPS = 10


@dataclass(frozen=True, kw_only=True)
class EoSConfig(ExperimentConfig):
    n_train: int = param(lo=10, hi=3000, help="training samples (the first of the embedded training split)")
    width: int = param(lo=1, hi=4096, help="hidden width of the tanh MLP")
    depth: int = param(lo=1, hi=8, help="hidden layers")
    lrs: list[float] = param(lo=0.0, lo_open=True, min_len=1, help="GD step sizes η")
    steps: int = param(lo=10, hi=10**6, help="GD steps per learning rate")
    measure_every: int = param(lo=1, help="steps between sharpness measurements")
    settle_steps: int = param(lo=0, help="steps after the first crossing left out of the hovering statistics")

    size_fields = ("n_train", "width", "depth")

    def check(self) -> None:
        if len(set(self.lrs)) != len(self.lrs):
            raise ConfigError("lrs", self.lrs, "distinct learning rates")
        if self.measure_every > self.steps:
            raise ConfigError("measure_every", self.measure_every, f"at most steps = {self.steps}")


def half_mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE on one-hot targets, ½ Σ_c (f_c − y_c)² (Cohen et al.)."""
    return 0.5 * ((out - y) ** 2).sum(1)


def tanh_mlp(*, seed: int, width: int, depth: int, d_in: int, n_out: int) -> nn.Sequential:
    """The tanh MLP (``depth`` hidden layers of ``width``), initialised from stream (seed, 0): the same network
    for every learning rate (and batch size, in ``eoss-batch-sharpness``)."""
    sizes = [d_in] + [width] * depth + [n_out]
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.Tanh()]
    model = nn.Sequential(*layers[:-1])
    gen = torch_generator(seed, 0)
    with torch.no_grad():
        for lin in model:
            if isinstance(lin, nn.Linear):  # PyTorch's default: U(±1/√fan_in) for weight and bias
                bound = 1 / lin.in_features**0.5
                lin.weight.copy_(torch.rand(lin.weight.shape, generator=gen) * 2 * bound - bound)
                lin.bias.copy_(torch.rand(lin.bias.shape, generator=gen) * 2 * bound - bound)
    return model


class EoSSharpness(Experiment):
    """Progressive sharpening to 2/η, then hovering there while the loss keeps decreasing."""

    id = "eos-sharpness"
    title = "Edge of stability (Cohen et al. 2021): full-batch GD, MSE, tanh MLP; sharpness rises to 2/lr and hovers"
    Config = EoSConfig
    tables = ("sharpness",)
    presets = {
        "quick": {
            "seed": 0,
            "n_train": 1000,
            "width": 100,
            "depth": 2,
            "lrs": [0.035, 0.045, 0.055],
            "steps": 2500,
            "measure_every": 20,
            "settle_steps": 100,
        },
        "full": {
            "seed": 0,
            "n_train": 2000,
            "width": 100,
            "depth": 2,
            "lrs": [0.025, 0.03, 0.035, 0.04, 0.045, 0.05, 0.055],
            "steps": 8000,
            "measure_every": 10,
            "settle_steps": 100,
        },
    }
    diverging = {"lrs": [50.0, 100.0, 200.0], "steps": 50, "measure_every": 10}

    def check_data(self, config: EoSConfig) -> None:
        """``n_train`` at most the embedded training split (3,000 MNIST digits, or 1,078 of sklearn's)."""
        check_at_most("n_train", config.n_train, embedded_train_size(), "embedded")

    def estimate(self, config: EoSConfig) -> RunCost:
        d_in = 784
        weights = d_in * config.width + (config.depth - 1) * config.width**2 + 10 * config.width
        acts = config.n_train * (config.width * config.depth + d_in)
        measures = config.steps // config.measure_every + 1
        per_lr = SECONDS_PER_SAMPLE_WEIGHT * config.n_train * weights * (config.steps + MEASURE_COST_STEPS * measures)
        return RunCost(
            CHUNK_BASE_BYTES + BYTES_PER_ACTIVATION * acts + 16 * weights,
            per_lr * len(config.lrs),
            ("n_train", "width", "depth", "steps"),
        )

    def chunks(self, config: EoSConfig) -> list[Chunk]:
        return [Chunk(f"lr{lr:.6g}", {"lr": lr}) for lr in config.lrs]

    def measure(self, config: EoSConfig, chunk: Chunk) -> dict[str, pd.DataFrame]:
        data = load_default(n_train=config.n_train, seed=config.seed)
        x = data.X_train
        y = torch.nn.functional.one_hot(data.y_train, 10).to(x.dtype)
        lr = float(chunk.spec["lr"])
        net = tanh_mlp(seed=config.seed, width=config.width, depth=config.depth, d_in=x.shape[1], n_out=10)
        losses, sharp = gd_with_sharpness(
            net, half_mse, x, y, lr=lr, steps=config.steps, measure_every=config.measure_every
        )
        return {"results": losses.assign(lr=lr), "sharpness": sharp.assign(lr=lr)}

    def checks(self, config: EoSConfig, tables: dict[str, pd.DataFrame]) -> list[Check]:
        phases = _phases(config, tables)
        checks: list[Check] = []
        for k, lr in enumerate(phases, start=1):
            checks += _checks(k, lr, phases[lr], config.settle_steps)
        return checks

    def metrics(self, config: EoSConfig, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        phases = _phases(config, tables)
        return {"phases": [{"lr": lr, "threshold": 2 / lr, **ph.to_dict()} for lr, ph in phases.items()]}

    def plot(self, config: EoSConfig, tables: dict[str, pd.DataFrame], out: Path) -> None:
        """eos_sharpness.png: loss, sharpness against 2/η, and the edge-of-stability ratio."""
        losses, sharp, phases = tables["results"], tables["sharpness"], _phases(config, tables)
        fig, ax = new_figure(3, width=4.2)
        for i, lr in enumerate(phases):
            c = f"C{i}"
            lo, sh = losses[losses["lr"] == lr], sharp[sharp["lr"] == lr]
            ax[0].plot(lo["step"], lo["loss"], color=c, lw=0.8, label=f"η = {lr:g}")
            ax[1].plot(sh["step"], sh["sharpness"], color=c, lw=1.0, label=f"η = {lr:g}")
            ax[1].axhline(2 / lr, color=c, ls=":", lw=0.8)
            ax[2].plot(sh["step"], sh["eos_ratio"], color=c, lw=1.0)
            if np.isfinite(phases[lr].first_crossing):
                ax[2].axvline(phases[lr].first_crossing, color=c, ls="--", lw=0.6)
        ax[0].set(xlabel="GD step", ylabel="training loss (MSE)", yscale="log", title="loss")
        ax[0].legend()
        ax[1].set(xlabel="GD step", ylabel="sharpness λ_max(H)", title="sharpness; dotted: 2/η")
        ax[1].legend()
        ax[2].axhspan(*HOVER_BAND, color="grey", alpha=0.2)
        ax[2].axhline(1.0, color="k", lw=0.6)
        ax[2].set(xlabel="GD step", ylabel="η·λ_max/2", title="edge-of-stability ratio (band: [0.9, 1.1])")
        savefig(fig, out / "eos_sharpness.png")


def _phases(config: EoSConfig, tables: dict[str, pd.DataFrame]) -> dict[float, Any]:
    """The phases of each learning rate's run (:func:`~noiseprobe.monitor.edge_of_stability.eos_phases`), by
    increasing learning rate."""
    losses, sharp = tables["results"], tables["sharpness"]
    return {
        lr: eos_phases(losses[losses["lr"] == lr], sharp[sharp["lr"] == lr], settle=config.settle_steps)
        for lr in sorted(config.lrs)
    }


def _checks(k: int, lr: float, ph: Any, settle: int) -> list[Check]:
    """The seven checks of one learning rate (module docstring)."""
    tag = f"lr{k}"
    at = f"η = {lr:g} (2/η = {2 / lr:.4g})"
    diverged = np.isfinite(ph.diverged_step)
    note: dict[str, Any] = {"detail": f"GD diverged at step {ph.diverged_step:g}"} if diverged else {}
    out = [
        Check.greater(
            f"crosses-{tag}", f"{at}: the sharpness reaches 2/η (max of η·λ_max/2 ≥ 1)", ph.max_ratio, 1.0, **note
        )
    ]
    sharpen = f"{at}: progressive sharpening — the sharpness rises from its minimum to the first crossing"
    if len(ph.sharpening_windows) >= 2:
        out.append(
            Check.ordered(
                f"sharpening-{tag}",
                sharpen + " (means of 4 equal windows, increasing)",
                ph.sharpening_windows,
                detail=f"factor {ph.sharpening_factor:.3g} from the minimum",
            )
        )
    else:
        out.append(
            Check.not_measurable(
                f"sharpening-{tag}",
                sharpen,
                "no crossing, or fewer than 4 measurements between the sharpness minimum and the crossing",
                **note,
            )
        )
    lo, hi = HOVER_BAND
    phase = (
        f"over the {ph.hover_n} measurements from {settle} steps after the first crossing (step {ph.first_crossing:g})"
    )
    for q, val in (("median", ph.hover_median), ("p10", ph.hover_p10), ("p90", ph.hover_p90)):
        name = {"median": "median", "p10": "10 % quantile", "p90": "90 % quantile"}[q]
        out.append(
            Check.within(
                f"hover-{q}-{tag}", f"{at}: the {name} of η·λ_max/2 {phase} is in [{lo}, {hi}]", val, lo, hi, **note
            )
        )
    out.append(
        Check.less(
            f"loss-decreases-{tag}",
            f"{at}: the loss keeps decreasing at the edge of stability "
            "(mean of the last quarter / mean of the first quarter of the steps after the crossing)",
            ph.loss_ratio,
            1.0,
            **note,
        )
    )
    out.append(
        Check.greater(
            f"loss-nonmonotone-{tag}",
            f"{at}: ... non-monotonically (fraction of steps after the "
            f"crossing at which the loss rose ≥ {MIN_RISE_FRACTION:g})",
            ph.loss_rise_fraction,
            MIN_RISE_FRACTION,
            **note,
        )
    )
    return out
