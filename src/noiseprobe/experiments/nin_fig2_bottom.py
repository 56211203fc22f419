"""NIN paper (001) Fig. 2 bottom: a 1 × 1024 ReLU MLP trained with MSE at the Table 1 MSE noise levels, the
four phases (decoupled, decay, catapult, divergent) along σε.

The sweep, its measurement and checks are :class:`noiseprobe.experiments._nin_sweep.NINSweep`; this module
sets the presets and draws the loss/accuracy and norm curves of one seed per level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from noiseprobe.core.plotting import PHASE_COLOURS, new_figure, savefig
from noiseprobe.experiments import _nin_phases as phases
from noiseprobe.experiments._nin_config import SweepConfig, preset
from noiseprobe.experiments._nin_sweep import NINSweep
from noiseprobe.nin.levels import TABLE1


class Fig2Bottom(NINSweep[SweepConfig]):
    """Fig. 2 bottom: 1 hidden layer × 1024 ReLU, MSE, batch 1000, η = 0.01, Table 1 MSE levels."""

    id = "nin-fig2-bottom"
    title = "NIN Fig. 2 bottom: 1x1024 ReLU MLP, MSE, the four phases at the Table 1 MSE levels"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # reduced: 14x14 pooled digits (d_in 196), width 64, ~750 steps; levels chosen on the Table 1 scale
        "quick": preset(
            seed=2022,
            pool=2,
            hidden=[64],
            loss="mse",
            lr=0.01,
            batch_size=1000,
            epochs=150,
            record_every=5,
            levels=[1e-4, 8.0, 9.0, 10.0, 12.0],
            n_seeds=3,
        ),
        "full": preset(
            seed=2022,
            dataset="fashion-mnist",
            hidden=[1024],
            loss="mse",
            lr=0.01,
            batch_size=1000,
            epochs=200,
            record_every=2,
            levels=list(TABLE1["mse"]),
            n_seeds=4,
            sigmas_per_chunk=4,
        ),
    }

    def plot(self, config: SweepConfig, tables: dict[str, pd.DataFrame], out: Path) -> None:
        curves_figure(config, tables["results"], tables["runs"], tables["fractions"], self.title.split(":")[0], out)
        super().plot(config, tables, out)


def curves_figure(
    config: SweepConfig, res: pd.DataFrame, runs: pd.DataFrame, frac: pd.DataFrame, title: str, out: Path
) -> Path:
    """One panel per level (first seed): train (purple) / test (green) loss solid, accuracy dashed; NIW
    norm (blue) and next-layer norm (red) relative to their initial values."""
    levels = sorted(int(v) for v in runs.loc[runs["level"] >= 0, "level"].unique())
    fig, axes = new_figure(len(levels), 2, width=3.4, height=2.7)
    axes = np.asarray(axes).reshape(2, len(levels))
    rep0 = int(res["replica"].min())
    for j, lev in enumerate(levels):
        g = res[(res["replica"] == rep0) & (res["level"] == lev) & (res["nin_mode"] == "epoch")].sort_values("epoch")
        ph = runs[(runs["replica"] == rep0) & (runs["level"] == lev) & (runs["nin_mode"] == "epoch")]["phase"].iloc[0]
        t = g["epoch"].to_numpy(float)
        ax, bx = axes[0, j], axes[1, j]
        ax.plot(t, g["train_loss"], color="purple", label="train loss")
        ax.plot(t, g["test_loss"], color="green", label="test loss")
        ax.set_yscale("log")
        acc = ax.twinx()
        acc.plot(t, g["train_acc"], color="purple", ls="--")
        acc.plot(t, g["test_acc"], color="green", ls="--")
        acc.set_ylim(0, 1)
        ax.set_title(
            f"c = {config.levels[lev]:g}, σε = {g['sigma'].iloc[0]:.3g}\nthis run: {ph}", color="black", fontsize=8
        )
        ax.set_facecolor(PHASE_COLOURS[ph] + "40")
        bx.plot(t, g["niw_norm"] / g["niw_norm"].iloc[0], color="blue", label="‖W_NI‖/‖W_NI(0)‖")
        bx.plot(t, g["next_norm"] / g["next_norm"].iloc[0], color="red", label="‖W^(1)‖/‖W^(1)(0)‖")
        bx.set_yscale("log")
        bx.set_xlabel("epoch")
        if j == 0:
            ax.legend(loc="lower left", fontsize=7)
            bx.legend(loc="lower left", fontsize=7)
    fig.suptitle(f"{title}; majority phase per level: " + ", ".join(phases.majority(frac)), fontsize=9)
    return savefig(fig, out / "curves.png")
