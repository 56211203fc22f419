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
    bb = np.geomspace(b.min() / 1.5, b.max() * 1.5, 100)
    _steps_panel(ax[0], target_loss, grid, fit, b, bb)
    _tradeoff_panel(ax[1], grid, fit, b, bb)
    _noise_scale_panel(ax[2], runs, fit, factor)
    _lr_panel(ax[3], target_loss, curves)
    for a in ax:
        a.xaxis.set_minor_formatter(NullFormatter())
        a.yaxis.set_minor_formatter(NullFormatter())
    savefig(fig, out / "critical_batch.png")


def _steps_panel(ax: Any, target_loss: float, grid: pd.DataFrame, fit: Any, b: np.ndarray, bb: np.ndarray) -> None:
    """Steps to target against B (mean over seeds) with the fitted hyperbola S_min(1 + B_crit/B)."""
    ax.errorbar(b, grid["steps"], yerr=grid["steps_se"], fmt="o", color="k", label="tuned, mean over seeds")
    if math.isfinite(fit.b_crit):
        ax.plot(bb, fit.s_min * (1 + fit.b_crit / bb), "C0-", label=f"fit, B_crit = {fit.b_crit:.3g}")
        ax.axvline(fit.b_crit, color="C0", ls=":", lw=0.8)
    _log_log(ax, "batch size B", "steps to target S", f"steps to loss {target_loss:g}", legend_size=None)


def _tradeoff_panel(ax: Any, grid: pd.DataFrame, fit: Any, b: np.ndarray, bb: np.ndarray) -> None:
    """Examples E = B·S against steps S, with the fitted trade-off (S/S_min − 1)(E/E_min − 1) = 1."""
    e = grid["steps"] * b
    ax.plot(grid["steps"], e, "ko")
    if math.isfinite(fit.b_crit):
        ax.plot(
            fit.s_min * (1 + fit.b_crit / bb),
            fit.e_min * (1 + bb / fit.b_crit),
            "C0-",
            label="(S/S_min − 1)(E/E_min − 1) = 1",
        )
        ax.legend()
    ax.set(xscale="log", yscale="log", xlabel="steps S", ylabel="examples E = B·S", title="the trade-off")


def _noise_scale_panel(ax: Any, runs: pd.DataFrame, fit: Any, factor: float) -> None:
    """The monitor's B_simple and B_noise per batch size (mean ± SE over runs) against the fitted B_crit."""
    by_b = runs.groupby("batch_size")
    for col, style, label in (("b_simple", "o", "B_simple = tr Σ/|G|²"), ("b_noise", "s", "B_noise = tr(HΣ)/GᵀHG")):
        mean, count = by_b[col].mean(), by_b[col].count()
        ax.errorbar(
            mean.index,
            mean.to_numpy(),
            yerr=(by_b[col].std(ddof=1) / np.sqrt(count)).to_numpy(),
            fmt=style,
            ms=4,
            label=label,
        )
    if math.isfinite(fit.b_crit):
        ax.axhline(fit.b_crit, color="k", lw=1.2, label="fitted B_crit")
        ax.axhspan(fit.b_crit / factor, fit.b_crit * factor, color="grey", alpha=0.15, label=f"B_crit ×/÷ {factor:g}")
    _log_log(
        ax,
        "batch size B of the run",
        "noise scale (mean over steps to target)",
        "NoiseMonitor during the tuned runs",
        legend_size=7,
    )


def _lr_panel(ax: Any, target_loss: float, curves: pd.DataFrame) -> None:
    """Learning-rate tuning: per B, the training loss when the fastest replica reached the target."""
    stop = _loss_at_stop(curves)
    for i, (bs, sub) in enumerate(stop.groupby("batch_size")):
        ax.plot(sub["lr"], sub["loss_at_stop"], "o-", ms=3, color=f"C{i % 10}", label=f"B = {bs}")
    ax.axhline(target_loss, color="k", ls=":", lw=0.8)
    _log_log(
        ax,
        "learning rate",
        "training loss when the fastest reached the target",
        "learning-rate tuning (mean over seeds)",
        legend_size=6,
    )


def _log_log(ax: Any, xlabel: str, ylabel: str, title: str, *, legend_size: float | None) -> None:
    """Log-log axes with their labels and title, and the legend (``legend_size`` None: the default size)."""
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=legend_size)


def _loss_at_stop(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (batch size, lr): the training loss at each chunk's last evaluation, mean over seeds."""
    last = curves.sort_values("step").groupby(["batch_size", "seed_index", "lr"]).tail(1)
    table: pd.DataFrame = last.groupby(["batch_size", "lr"])["train_loss"].mean().rename("loss_at_stop").reset_index()
    return table
