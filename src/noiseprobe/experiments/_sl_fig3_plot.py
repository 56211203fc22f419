"""The figure of ``sl-fig3`` (:mod:`noiseprobe.experiments.sl_fig3`): paths in the plane, mean θ against
iterations, each row on its own clock with its limit, and the frozen minibatch run."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from noiseprobe.core.plotting import new_figure, savefig
from noiseprobe.experiments.sl_common import draw_paths, draw_plane

if TYPE_CHECKING:
    from pathlib import Path

    from noiseprobe.experiments._sl_fig3_config import Fig3Config


def plot(config: Fig3Config, tables: dict[str, pd.DataFrame], out: Path) -> None:
    """fig3.png from the measured ``results`` and the derived ``stA``, ``stB``, ``flowA``, ``limB``, ``numbers``."""
    df, n = tables["results"], tables["numbers"].iloc[0]
    top, bot, mb = (df[df["variant"] == v] for v in ("nondegenerate", "degenerate", "minibatch"))
    stA, stB = tables["stA"], tables["stB"]
    tA, thA = tables["flowA"]["t"].to_numpy(), tables["flowA"]["theta"].to_numpy()
    tB, thB = tables["limB"]["t"].to_numpy(), tables["limB"]["theta"].to_numpy()
    minA, minB = float(n.minA), float(n.minB)
    lr, s2 = config.lr, config.sigma2
    fig, ax = new_figure(2, 2, width=4.2, height=3.4)
    ax = ax.ravel()
    draw_plane(ax[0], "paths: non-degenerate (blue), degenerate (purple)")
    draw_paths(ax[0], top, 3, color="tab:blue")
    draw_paths(ax[0], bot, 3, color="tab:purple")
    for th in (minA, minB):
        ax[0].plot([math.cos(th)], [math.sin(th)], "o", mfc="none", mec="green", ms=9)
    ax[1].plot(stA.index, stA["mean"], color="tab:blue", label="non-degenerate ½a(w)η²")
    ax[1].plot(stB.index, stB["mean"], color="tab:purple", label="degenerate ½|w|²η")
    ax[1].axhline(minA, color="green", ls="--", lw=0.8)
    ax[1].axhline(minB, color="green", ls="--", lw=0.8)
    ax[1].set(xlabel="iteration k", ylabel="mean θ", title="same iterations, different clocks")
    if np.isfinite(stA["mean"]).any() or np.isfinite(stB["mean"]).any():  # else every chain diverged
        ax[1].set(xscale="log")
    ax[1].legend(fontsize=7)
    ax[2].plot(lr * s2 * stA.index, stA["mean"], color="tab:blue", label="non-deg. vs t = ασ²k")
    ax[2].plot(tA[tA <= config.t_end_A], thA[tA <= config.t_end_A], "k--", lw=0.8, label="Thm A, Reg = a/2")
    ax[2].plot(
        tA[tA <= 4 * config.t_end_A] / 4,
        thA[tA <= 4 * config.t_end_A],
        ":",
        color="grey",
        label="caption's Reg = 2a",
    )
    ax[2].plot(lr * lr * s2 * stB.index, stB["mean"], color="tab:purple", label="degenerate vs t = α²σ²k")
    ax[2].plot(tB, thB, "k-.", lw=0.8, label="Thm B: −P∇¼log ΔL")
    ax[2].set(xlabel="rescaled time t (own clock)", ylabel="mean θ", title="each row on its own clock")
    ax[2].legend(fontsize=7)
    for c in sorted(mb["chain"].unique())[:6]:
        one = mb[mb["chain"] == c]
        ax[3].plot(one["step"], one["s"], lw=0.8)
    ax[3].axvline(int(n.k_ref), color="grey", ls=":")
    ax[3].set(
        xscale="symlog",
        xlim=(0, None),
        xlabel="iteration k",
        ylabel="s = ½ log(w₁/w₂)",
        title=f"minibatch SGD (B=1 of 2), α = {config.mb_lr:g}: frozen",
    )
    savefig(fig, out / "fig3.png")
