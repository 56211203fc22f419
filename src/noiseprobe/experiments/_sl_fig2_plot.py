"""The figure of ``sl-fig2`` (:mod:`noiseprobe.experiments.sl_fig2`): paths at main_lr, the fast approach,
the slow drift with Theorem A's flow, and the error against the limit vs α."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from noiseprobe.core.plotting import new_figure, savefig
from noiseprobe.experiments.sl_common import alive, draw_paths, draw_plane
from noiseprobe.limits import noises
from noiseprobe.limits.circle import flow_angle
from noiseprobe.limits.losses import circle_loss

if TYPE_CHECKING:
    from pathlib import Path

    from noiseprobe.experiments._sl_fig2_config import Fig2Config


def plot(config: Fig2Config, tables: dict[str, pd.DataFrame], out: Path) -> None:
    """fig2.png from the measured ``results`` and the derived ``grid`` and ``fit``."""
    fit = tables["fit"].iloc[0]
    _draw(
        config,
        tables["results"],
        tables["grid"],
        noises.perturbed(circle_loss, 2),
        float(fit.theta_argmin_reg),
        float(fit.slope),
        out,
    )


def _draw(
    config: Fig2Config,
    df: pd.DataFrame,
    grid: pd.DataFrame,
    noise: noises.Noise,
    theta_min: float,
    slope: float,
    out: Path,
) -> None:
    """(a) paths at main_lr, (b) the fast approach, (c) the slow drift with the flow from the first close
    point, (d) the error against Theorem A vs α."""
    main = df[np.isclose(df["lr"], config.main_lr)]
    lr = config.main_lr
    s2 = config.sigma2_over_lr * lr
    k_star = int(grid.loc[np.isclose(grid["lr"], lr), "k_close"].iloc[0])
    fig, ax = new_figure(2, 2, width=4.2, height=3.4)
    ax = ax.ravel()
    draw_plane(ax[0], f"noisy GD, α = {lr:g}, σ² = {s2:g}")
    draw_paths(ax[0], main, 4)
    ax[0].plot([math.cos(theta_min)], [math.sin(theta_min)], "o", mfc="none", mec="green", ms=9)
    live = main[alive(main)]
    mean_w2 = live.groupby("step")["w1"].mean()
    fast = mean_w2[mean_w2.index <= config.t_fast / lr]
    for c in sorted(main["chain"].unique())[:4]:
        one = main[(main["chain"] == c) & (main["step"] <= config.t_fast / lr)]
        ax[1].plot(one["step"], one["w1"], lw=0.6, alpha=0.7)
    ax[1].plot(fast.index, fast.to_numpy(), "k", lw=1.2, label="chain mean")
    if k_star >= 0:
        ax[1].axvline(k_star, color="orange", ls=":", label="first close to Γ")
    ax[1].set(xlabel="iteration k", ylabel="w₂", title="fast approach to Γ")
    ax[1].legend()
    ax[2].plot(mean_w2.index, mean_w2.to_numpy(), "k", lw=1.0, label="chain mean")
    ax[2].axhline(math.sin(theta_min), color="green", ls="--", label="argmin ΔL on Γ")
    if 0 <= lr * s2 * k_star < config.t_end:
        w_start = live[live["step"] == k_star][["w0", "w1"]].mean().tolist()
        t_star = lr * s2 * k_star
        t_o, th_o = flow_angle(noise, w_start, config.t_end - t_star, dt=config.flow_dt)
        ax[2].plot(
            (t_o + t_star) / (lr * s2),
            np.sin(th_o),
            color="orange",
            lw=1.5,
            label="Thm A flow from first close point",
        )
    ax[2].set(
        xlabel="iteration k",
        ylabel="w₂",
        title=f"slow drift along Γ (t = ασ²k, {len(live['chain'].unique())} chains)",
    )
    ax[2].legend(fontsize=7)
    ax[3].loglog(grid["lr"], grid["max_err"], "o-", label="max |mean θ − θ_A(t)|")
    ax[3].loglog(grid["lr"], grid["max_err"].iloc[-1] * grid["lr"] / grid["lr"].iloc[-1], "k--", lw=0.8, label="∝ α")
    ax[3].set(
        xlabel=f"α (σ² = {config.sigma2_over_lr:g} α)",
        ylabel="error along Γ (rad)",
        title=f"convergence to Theorem A, slope {slope:.2f}",
    )
    ax[3].legend()
    savefig(fig, out / "fig2.png")
