"""NIN paper (001) Fig. 1: a 3 × 1024 ReLU MLP trained with cross-entropy; the NIW, train and test loss
decay of a re-randomised and a fixed NIN at one σε (centre panel) and their first e-fold times against σε
(right panel), over the phases of the sweep.

The sweep, its measurement and phase checks are :class:`noiseprobe.experiments._nin_sweep.NINSweep`; this
module adds the fixed-NIN runs, the centre level, its checks and metrics, and the two panels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from noiseprobe.core.checks import Check
from noiseprobe.core.config import ExperimentConfig, param
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.fitting import fit_exponential
from noiseprobe.core.plotting import PHASE_COLOURS, new_figure, savefig
from noiseprobe.experiments import _nin_phases as phases
from noiseprobe.experiments._nin_config import SweepConfig, preset
from noiseprobe.experiments._nin_sweep import NINSweep
from noiseprobe.nin.ensemble import NIN_MODES


@dataclass(frozen=True, kw_only=True)
class Fig1Config(SweepConfig):
    centre_level: int = param(lo=0, help="index of the level of the centre panel")

    def check(self) -> None:
        super().check()
        if self.centre_level > len(self.levels) - 1:
            raise ConfigError("centre_level", self.centre_level, f"an integer >= 0 and <= {len(self.levels) - 1}")


class Fig1(NINSweep[Fig1Config]):
    """Fig. 1: 3 hidden layers × 1024 ReLU, cross-entropy, batch 128, η = 0.05; NIW / train / test decay
    for a re-randomised and a fixed NIN at one σε (centre) and decay times against σε (right)."""

    id = "nin-fig1"
    title = "NIN Fig. 1: 3x1024 ReLU MLP, CE; NIW/loss decay (re-randomised vs fixed NIN) and decay times vs sigma"
    modes = NIN_MODES
    Config: ClassVar[type[ExperimentConfig] | None] = Fig1Config
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": preset(
            seed=2022,
            pool=2,
            hidden=[64, 64, 64],
            loss="ce",
            lr=0.05,
            batch_size=128,
            epochs=40,
            record_every=2,
            levels=[1e-4, 1e-2, 0.1, 0.3, 1.0, 3.0, 10.0],
            centre_level=3,
            n_seeds=2,
        ),
        "full": preset(
            seed=2022,
            dataset="fashion-mnist",
            hidden=[1024, 1024, 1024],
            loss="ce",
            lr=0.05,
            batch_size=128,
            epochs=100,
            record_every=5,
            levels=[1e-5, 1e-4, 1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0, 1.8, 3.0],
            centre_level=4,
            n_seeds=3,
            sigmas_per_chunk=2,
        ),
    }

    def checks(self, config: Fig1Config, tables: dict[str, pd.DataFrame]) -> list[Check]:
        centre, med, phases_c = _centre(config, tables["runs"])
        lev = config.centre_level
        detail = (
            f"sigma_eps = {float(centre['sigma'].iloc[0]):.4g} (level {lev}); tau = first e-fold of |W_NI| in "
            f"epochs, median over seeds: epoch mode {med['epoch']:.4g}, fixed {med['fixed']:.4g}"
        )
        claim = (
            "at the centre sigma_eps both the re-randomised and the fixed NIN are in the decay phase "
            "(majority over seeds; Fig. 1 centre)"
        )
        both = (
            Check.not_measurable("centre-both-decay", claim, "every centre run diverged", detail=detail)
            if centre["diverged"].all()
            else Check.equal("centre-both-decay", claim, phases_c, {m: "decay" for m in NIN_MODES}, detail=detail)
        )
        ratio = Check.close(
            "centre-tau-ratio",
            "at the centre sigma_eps the NIW decay times of the fixed and "
            "the re-randomised NIN are similar (ratio fixed/epoch of the median tau)",
            med["fixed"] / med["epoch"],
            1.0,
            factor=2.0,
            detail=detail,
        )
        return [*super().checks(config, tables), both, ratio]

    def metrics(self, config: Fig1Config, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        runs = tables["runs"]
        centre, med, phases_c = _centre(config, runs)
        taus = runs[(runs["level"] >= 0)].groupby(["nin_mode", "sigma"])[["tau_niw", "tau_train", "tau_test"]].median()
        return {
            **super().metrics(config, tables),
            "centre": {"sigma": float(centre["sigma"].iloc[0]), "tau_niw_epochs": med, "phase": phases_c},
            "decay_times_epochs": {f"{m}@{s:.4g}": v for (m, s), v in taus.round(4).to_dict(orient="index").items()},
        }

    def plot(self, config: Fig1Config, tables: dict[str, pd.DataFrame], out: Path) -> None:
        _centre_figure(config, tables["results"], out)
        _right_figure(tables["runs"], tables["fractions"], out)
        super().plot(config, tables, out)


def _centre(config: Fig1Config, runs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float], dict[str, str]]:
    """The runs at the centre level; per NIN mode the median τ_NIW over seeds (epochs) and the majority phase."""
    centre = runs[runs["level"] == config.centre_level]
    tau = {m: centre.loc[centre["nin_mode"] == m, "tau_niw"].to_numpy(float) for m in NIN_MODES}
    med = {m: float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan") for m, v in tau.items()}
    phases_c = centre.groupby("nin_mode")["phase"].agg(lambda s: s.value_counts().idxmax()).to_dict()
    return centre, med, phases_c


def _centre_figure(config: Fig1Config, res: pd.DataFrame, out: Path) -> Path:
    """Centre panel (first seed): NIW, train and test loss relative to epoch 0 for both NIN modes, with
    exponential fits and their e-fold times (stars)."""
    lev = config.centre_level
    rep0 = int(res["replica"].min())
    fig, ax = new_figure(width=5.0, height=3.6)
    styles = {"epoch": ("NIN re-randomised each epoch", 1.0), "fixed": ("fixed NIN", 0.45)}
    for mode, (label, alpha) in styles.items():
        g = res[(res["replica"] == rep0) & (res["level"] == lev) & (res["nin_mode"] == mode)].sort_values("epoch")
        t = g["epoch"].to_numpy(float)
        for col, colour, name in (
            ("niw_norm", "blue", "NIW"),
            ("train_loss", "purple", "train loss"),
            ("test_loss", "green", "test loss"),
        ):
            y = g[col].to_numpy(float) / g[col].iloc[0]
            ax.plot(t, y, "o", ms=2.5, color=colour, alpha=alpha, label=f"{name} ({label})")
            if not np.isfinite(y).all():  # a diverged run: nothing to fit
                continue
            fit = fit_exponential(t, y, offset=True, window=(0.9, 0.1))
            if np.isfinite(fit.tau[0]) and 0 < fit.tau[0] <= t[-1]:
                tt = np.linspace(fit.t_start[0], fit.t_stop[0], 100)
                ax.plot(tt, fit.amplitude[0] * np.exp(-tt / fit.tau[0]) + fit.offset[0], color=colour, alpha=alpha)
                star = fit.amplitude[0] * np.exp(-1) + fit.offset[0]
                ax.plot([fit.tau[0]], [star], "*", ms=10, color=colour, alpha=alpha)
    ax.set_yscale("log")
    ax.set_xlim(0, res["epoch"].max())
    ax.set_xlabel("epoch")
    ax.set_ylabel("relative to epoch 0")
    ax.set_title(
        f"σε = {res.loc[res['level'] == lev, 'sigma'].iloc[0]:.3g}: points = data, lines = exp fits, stars = τ",
        fontsize=8,
    )
    ax.legend(fontsize=6, ncols=2)
    return savefig(fig, out / "centre.png")


def _right_figure(runs: pd.DataFrame, frac: pd.DataFrame, out: Path) -> Path:
    """Right panel: median first e-fold times of NIW, train and test loss against σε for both NIN modes,
    over the majority phase per σε."""
    fig, ax = new_figure(width=5.0, height=3.6)
    _shade_phases(ax, frac["sigma"].to_numpy(), phases.majority(frac))
    for mode, alpha in (("epoch", 1.0), ("fixed", 0.45)):
        med = (
            runs[(runs["level"] >= 0) & (runs["nin_mode"] == mode)]
            .groupby("sigma")[["tau_niw", "tau_train", "tau_test"]]
            .median()
        )
        for col, colour in (("tau_niw", "blue"), ("tau_train", "purple"), ("tau_test", "green")):
            ax.plot(med.index, med[col], "o-", color=colour, alpha=alpha, label=f"{col} ({mode})")
    ax.set_xscale("log")
    if (runs[["tau_niw", "tau_train", "tau_test"]].to_numpy(float) > 0).any():  # no finite tau: all diverged
        ax.set_yscale("log")
    ax.set_xlabel("σε")
    ax.set_ylabel("first e-fold time [epochs]")
    ax.legend(fontsize=6, ncols=2)
    return savefig(fig, out / "decay_times.png")


def _shade_phases(ax: Any, sigma: np.ndarray, names: list[str]) -> None:
    """Shade the σ axis by the majority phase of each level (edges at geometric midpoints)."""
    s = np.asarray(sigma, dtype=float)
    mids = np.sqrt(s[1:] * s[:-1])
    lo = np.r_[s[0] / 1.5, mids]
    hi = np.r_[mids, s[-1] * 1.5]
    for a, b, name in zip(lo, hi, names):
        ax.axvspan(a, b, color=PHASE_COLOURS[name], alpha=0.5, lw=0)
