"""Time-series figures of a monitor's history (the instrument that draws what the metrics computed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from noiseprobe.core.plotting import new_figure, savefig
from noiseprobe.core.report import register_plotter


def draw_history(history: pd.DataFrame, out: Path) -> list[Path]:
    """Write ``monitor_*.png`` into ``out`` for the columns present; return the paths."""
    out = Path(out)
    paths: list[Path] = []
    step = history["step"].to_numpy()
    if "b_simple" in history:
        fig, ax = new_figure(width=5.0)
        ax.plot(step, history["b_simple"], marker="o", ms=3, label="B_simple = tr Σ / |G|²")
        if "b_simple_lo" in history:
            lo, hi = history["b_simple_lo"].to_numpy(dtype=float), history["b_simple_hi"].to_numpy(dtype=float)
            bounded = np.isfinite(lo) & np.isfinite(hi)
            if bounded.any():  # the legend names the interval only where one is drawn
                ax.fill_between(step, lo, np.where(bounded, hi, np.nan), alpha=0.25, label="95 % interval")
        if "b_noise" in history:
            ax.plot(step, history["b_noise"], marker="s", ms=3, label="B_noise = tr(HΣ) / GᵀHG")
        if "two_batch_b_simple" in history:
            ax.plot(step, history["two_batch_b_simple"], ls="--", label="two-batch estimate")
        ax.set(xlabel="optimizer step", ylabel="batch size", yscale="log", title="critical batch size estimates")
        ax.legend()
        paths.append(savefig(fig, out / "monitor_noise_scale.png"))
    pairs = [
        (c, lbl)
        for c, lbl in (("tr_sigma", "tr Σ (per sample)"), ("g_sq", "|G|²"), ("temperature", "lr·tr C"))
        if c in history
    ]
    if pairs:
        fig, ax = new_figure(width=5.0)
        for col, label in pairs:
            y = history[col].to_numpy(dtype=float)
            ax.plot(step[y > 0], y[y > 0], marker="o", ms=3, label=label)
        ax.set(xlabel="optimizer step", yscale="log", title="gradient signal and noise")
        ax.legend()
        paths.append(savefig(fig, out / "monitor_signal_noise.png"))
    if "eos_ratio" in history or "sharpness" in history:
        fig, ax = new_figure(width=5.0)
        col = "eos_ratio" if "eos_ratio" in history and history["eos_ratio"].notna().any() else "sharpness"
        ax.plot(step, history[col], marker="o", ms=3, label=col)
        if col == "eos_ratio":
            ax.axhline(1.0, color="k", ls=":", label="edge of stability")
        ax.set(xlabel="optimizer step", title="sharpness")
        ax.legend()
        paths.append(savefig(fig, out / "monitor_sharpness.png"))
    eig = sorted(
        (c for c in map(str, history) if c.startswith(("c_eig_", "h_eig_"))), key=lambda c: (c[:5], int(c[6:]))
    )
    if eig:
        fig, ax = new_figure(width=5.0)
        for col in eig:
            ax.plot(
                step,
                history[col],
                color="C0" if col.startswith("c") else "C1",
                alpha=0.8,
                label=("eigenvalues of C" if col == "c_eig_1" else "eigenvalues of H" if col == "h_eig_1" else None),
            )
        ax.set(xlabel="optimizer step", yscale="log", title="top eigenvalues")
        ax.legend()
        paths.append(savefig(fig, out / "monitor_spectrum.png"))
    return paths


register_plotter("monitor", draw_history)
