"""The figures of ``nin-fig2-top`` (:mod:`noiseprobe.experiments.nin_toy`): the four trajectory panels of
Fig. 2 top, the phase diagram with the measured, corrected and printed boundaries, and the decay-phase
e-fold times against eq. (10)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from noiseprobe.core.plotting import PHASE_COLOURS, new_figure, savefig
from noiseprobe.nin.phases import PHASES

if TYPE_CHECKING:
    from pathlib import Path

    from noiseprobe.experiments._nin_toy_config import Fig2TopConfig


def plot(config: Fig2TopConfig, tables: dict[str, pd.DataFrame], out: Path) -> None:
    """fig2_top_trajectories.png (when trajectories were recorded), phase_diagram.png, decay_times.png."""
    res, traj = tables["results"], tables.get("trajectories", pd.DataFrame())
    if len(traj):
        _trajectories(config, traj, res[res["kind"] == "trajectory"], out)
    _phase_diagram(config, tables["fractions"], tables["boundaries"], out)
    _decay_times(config.methods, tables["decay"], out)


def _trajectories(config: Fig2TopConfig, traj: pd.DataFrame, runs: pd.DataFrame, out: Path) -> None:
    """The four panels of Fig. 2 top per method: of the recorded seeds, one in the panel's phase (if
    any), with the largest |w_NI(0)|."""
    methods = list(dict.fromkeys(traj["method"]))
    phase = runs.set_index(["method", "replica"])["phase"]
    fig, axes = new_figure(4, len(methods), width=3.3, height=2.7)
    axes = np.atleast_2d(axes)
    for i, method in enumerate(methods):
        for p in range(4):
            ax = axes[i, p]
            g = traj[(traj["method"] == method) & (traj["panel"] == p)]
            first = g[g["step"] == 0]
            reps = first["replica"].to_numpy()
            match = np.array([phase.get((method, r)) == PHASES[p] for r in reps])
            rep = reps[np.lexsort((-np.abs(first["w_ni"].to_numpy()), ~match))[0]]
            g = g[g["replica"] == rep]
            step = np.maximum(g["step"].to_numpy(), 0.5)
            for col, colour in (("w0", "black"), ("w1", "red"), ("w_ni", "blue"), ("loss", "purple")):
                ax.plot(step, g[col], color=colour, label=col)
            ax.set_xscale("log")
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.set_title(f"{method}, sigma_eps = {config.traj_sigmas[p]:g}: {phase.get((method, rep), '?')}")
            ax.set_xlabel("SGD step")
            if p == 0:
                ax.legend(loc="lower left")
    savefig(fig, out / "fig2_top_trajectories.png")


def _phase_diagram(config: Fig2TopConfig, fractions: pd.DataFrame, bounds: pd.DataFrame, out: Path) -> None:
    fig, axes = new_figure(1, len(config.methods), width=7.0, height=2.8)
    for ax, method in zip(np.atleast_1d(axes), config.methods):
        f = fractions[fractions["method"] == method]
        ax.stackplot(f["sigma"], *(f[p] for p in PHASES), labels=PHASES, colors=[PHASE_COLOURS[p] for p in PHASES])
        for k, (_, t) in enumerate(bounds[bounds["method"] == method].iterrows()):
            ax.axvline(t["measured"], color="black", lw=1.5, label="measured (50 %)" if k == 0 else None)
            ax.axvline(t["corrected"], color="black", ls="--", lw=1, label="corrected predictor" if k == 0 else None)
            ax.axvline(t["paper"], color="grey", ls=":", lw=1.2, label="paper formula" if k == 0 else None)
        ax.set_xscale("log")
        ax.set_xlim(f["sigma"].min(), f["sigma"].max())
        ax.set_ylim(0, 1)
        ax.set_xlabel("sigma_eps")
        ax.set_ylabel("fraction of seeds")
        ax.set_title(f"{method} (B = {config.batch_size}, T = {config.steps})")
        ax.legend(loc="center left", fontsize=6)
    savefig(fig, out / "phase_diagram.png")


def _decay_times(methods: list[str], decay: pd.DataFrame, out: Path) -> None:
    fig, ax = new_figure(1, 1, width=5.0, height=3.4)
    for method, c in zip(methods, ("tab:blue", "tab:orange")):
        d = decay[decay["method"] == method]
        if not len(d):
            continue
        ax.errorbar(
            d["sigma"], d["t_e_niw"], yerr=d["t_e_niw_se"], fmt="o", color=c, label=f"{method}: NIW first e-fold"
        )
        ax.plot(d["sigma"], d["tau_noise0"], ls=":", color=c, label=f"{method}: eq. (10) tau_noise(0)")
        ax.plot(d["sigma"], d["t_e_loss"], "s", mfc="none", color=c, label=f"{method}: loss first e-fold")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sigma_eps")
    ax.set_ylabel("steps")
    if ax.get_legend_handles_labels()[0]:  # none when no σε is in the decay phase (e.g. all diverged)
        ax.legend(fontsize=6)
    savefig(fig, out / "decay_times.png")
