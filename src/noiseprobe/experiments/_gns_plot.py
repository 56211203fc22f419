"""The figure of ``gns-critical-batch`` (:mod:`noiseprobe.experiments.gns_critical_batch`): steps to target
against B with the fitted hyperbola, the S–E trade-off, the monitor's noise scales against B_crit, and the
learning-rate tuning."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from noiseprobe.core.plotting import new_figure, savefig

if TYPE_CHECKING:
    from pathlib import Path


def plot(
    target_loss: float,
    curves: pd.DataFrame,
    grid: pd.DataFrame,
    fit: Any,
    runs: pd.DataFrame,
    out: Path,
    *,
    factor: float,
) -> None:
    """critical_batch.png; ``factor``: the band of agreement drawn about B_crit."""
    if not np.isfinite(grid["steps"]).any():  # nothing reached the target (e.g. every replica diverged)
        fig, one = new_figure(width=4.4)
        one.text(0.5, 0.5, "no run reached the target loss", ha="center", va="center")
        savefig(fig, out / "critical_batch.png")
        return
    fig, ax = new_figure(2, 2, width=4.4, height=3.4)
    ax = ax.ravel()
    b = grid["batch_size"].to_numpy(dtype=float)
    ax[0].errorbar(b, grid["steps"], yerr=grid["steps_se"], fmt="o", color="k", label="tuned, mean over seeds")
    bb = np.geomspace(b.min() / 1.5, b.max() * 1.5, 100)
    if math.isfinite(fit.b_crit):
        ax[0].plot(bb, fit.s_min * (1 + fit.b_crit / bb), "C0-", label=f"fit, B_crit = {fit.b_crit:.3g}")
        ax[0].axvline(fit.b_crit, color="C0", ls=":", lw=0.8)
    ax[0].set(
        xscale="log",
        yscale="log",
        xlabel="batch size B",
        ylabel="steps to target S",
        title=f"steps to loss {target_loss:g}",
    )
    ax[0].legend()
    e = grid["steps"] * b
    ax[1].plot(grid["steps"], e, "ko")
    if math.isfinite(fit.b_crit):
        ax[1].plot(
            fit.s_min * (1 + fit.b_crit / bb),
            fit.e_min * (1 + bb / fit.b_crit),
            "C0-",
            label="(S/S_min − 1)(E/E_min − 1) = 1",
        )
        ax[1].legend()
    ax[1].set(xscale="log", yscale="log", xlabel="steps S", ylabel="examples E = B·S", title="the trade-off")
    by_b = runs.groupby("batch_size")
    for col, style, label in (("b_simple", "o", "B_simple = tr Σ/|G|²"), ("b_noise", "s", "B_noise = tr(HΣ)/GᵀHG")):
        mean, count = by_b[col].mean(), by_b[col].count()
        ax[2].errorbar(
            mean.index,
            mean.to_numpy(),
            yerr=(by_b[col].std(ddof=1) / np.sqrt(count)).to_numpy(),
            fmt=style,
            ms=4,
            label=label,
        )
    if math.isfinite(fit.b_crit):
        ax[2].axhline(fit.b_crit, color="k", lw=1.2, label="fitted B_crit")
        ax[2].axhspan(
            fit.b_crit / factor, fit.b_crit * factor, color="grey", alpha=0.15, label=f"B_crit ×/÷ {factor:g}"
        )
    ax[2].set(
        xscale="log",
        yscale="log",
        xlabel="batch size B of the run",
        ylabel="noise scale (mean over steps to target)",
        title="NoiseMonitor during the tuned runs",
    )
    ax[2].legend(fontsize=7)
    stop = _loss_at_stop(curves)
    for i, (bs, sub) in enumerate(stop.groupby("batch_size")):
        ax[3].plot(sub["lr"], sub["loss_at_stop"], "o-", ms=3, color=f"C{i % 10}", label=f"B = {bs}")
    ax[3].axhline(target_loss, color="k", ls=":", lw=0.8)
    ax[3].set(
        xscale="log",
        yscale="log",
        xlabel="learning rate",
        ylabel="training loss when the fastest reached the target",
        title="learning-rate tuning (mean over seeds)",
    )
    ax[3].legend(fontsize=6)
    for a in ax:
        a.xaxis.set_minor_formatter(NullFormatter())
        a.yaxis.set_minor_formatter(NullFormatter())
    savefig(fig, out / "critical_batch.png")


def _loss_at_stop(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (batch size, lr): the training loss at each chunk's last evaluation, mean over seeds."""
    last = curves.sort_values("step").groupby(["batch_size", "seed_index", "lr"]).tail(1)
    table: pd.DataFrame = last.groupby(["batch_size", "lr"])["train_loss"].mean().rename("loss_at_stop").reset_index()
    return table
