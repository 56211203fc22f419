"""NIN paper (001) Fig. 2 top: the linear toy model's four regimes and its phase diagram over σε.

Model, loss (½-MSE, eq. 4) and samplers: :mod:`noiseprobe.nin.toy`; theory: :mod:`noiseprobe.nin.toy_theory`;
rule: :mod:`noiseprobe.nin.phases` (docs/theory/noise_injection_nodes.md §5.2). A grid of σε (log-spaced) × seeds is run with both the
reduced map of eqs. (5)–(6) (what the paper solved) and exact minibatch SGD; seed s has the same initial
weights at every σε and in both methods. Per run only online statistics are kept; a few illustrative
runs keep log-spaced trajectories (the four panels of Fig. 2 top).

Checks (the paper's claims, measured): the four phases appear in order of increasing σε; each measured
boundary (50 % crossing of the cumulative phase fraction over seeds) against the paper's formula and
against the corrected predictor of docs/theory/noise_injection_nodes.md (horizon law, final-minimum edge); the integrated decay
law eq. (9) and the t = 0 time scale eq. (10) in the decay phase; exact SGD and the reduced map agree on
the phase at every σε away from the boundaries.

The typed config is :mod:`._nin_toy_config`, the analysis (derived tables and checks) :mod:`._nin_toy_analysis`,
the figures :mod:`._nin_toy_plot`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from noiseprobe.core.checks import Check
from noiseprobe.core.experiment import Chunk, Experiment, RunCost
from noiseprobe.core.fitting import fit_exponential
from noiseprobe.experiments import _nin_toy_analysis as analysis
from noiseprobe.experiments import _nin_toy_plot
from noiseprobe.experiments._nin_toy_config import Fig2TopConfig
from noiseprobe.nin import toy
from noiseprobe.nin.phases import PHASES

_SIGMA_BLOCK = 16  # σ values per chunk


def _grid(cfg: Fig2TopConfig) -> np.ndarray:
    return np.logspace(np.log10(cfg.sigma_min), np.log10(cfg.sigma_max), cfg.n_sigma)


class Fig2Top(Experiment):
    id = "nin-fig2-top"
    title = "NIN paper Fig. 2 top: linear toy model, four regimes and phase diagram over sigma_eps"
    tables = ("trajectories",)
    Config = Fig2TopConfig
    _common = {
        "seed": 0,
        "methods": ["reduced", "exact"],
        "batch_size": 32,
        "init": "niw_large",
        "sigma_min": 0.01,
        "sigma_max": 1000.0,
        "steps": 20000,
        "lr": 0.01,
        "sigma_x": 1.0,
        "M": 1.0,
        "traj_sigmas": [0.03, 1.0, 20.0, 100.0],
        "traj_seeds": 6,
        "traj_points": 160,
    }
    presets = {
        "quick": {**_common, "n_sigma": 64, "n_seeds": 32},
        "full": {**_common, "n_sigma": 128, "n_seeds": 128},
    }
    #: a learning rate at which every replica overflows within a few steps
    diverging = {"lr": 1e4}

    def estimate(self, config: Fig2TopConfig) -> RunCost:
        """One chunk: R = 16 σ × n_seeds replicas (or 4 traj_seeds with traj_points records); the
        result frames hold ~40 float64 columns per replica and 8 per trajectory point, a few copies
        each (pandas), over a fixed ~60 MB for the kernel's compiled code and the first frames."""
        reps = min(_SIGMA_BLOCK, config.n_sigma) * config.n_seeds
        traj = 4 * config.traj_seeds * (config.traj_points + 1)
        peak = 60e6 + 8 * 4 * (40 * reps + 8 * traj)
        seconds = 2.5e-8 * len(config.methods) * config.n_sigma * config.n_seeds * config.steps
        return RunCost(int(peak), seconds, ("n_seeds", "traj_seeds", "traj_points"))

    def chunks(self, config: Fig2TopConfig) -> list[Chunk]:
        n = config.n_sigma
        out = [
            Chunk(f"{m}-s{i:04d}", {"method": m, "sigma_index": [i, min(i + _SIGMA_BLOCK, n)]})
            for m in config.methods
            for i in range(0, n, _SIGMA_BLOCK)
        ]
        return out + [Chunk(f"{m}-traj", {"method": m, "trajectories": True}) for m in config.methods]

    def measure(self, config: Fig2TopConfig, chunk: Chunk) -> dict[str, pd.DataFrame]:
        method, n_seeds = chunk.spec["method"], config.n_seeds
        kw = dict(
            steps=config.steps,
            lr=config.lr,
            batch_size=config.batch_size,
            sigma_x=config.sigma_x,
            M=config.M,
            method=method,
            seed=config.seed,
        )
        if chunk.spec.get("trajectories"):
            sig = np.repeat(np.asarray(config.traj_sigmas, dtype=float), config.traj_seeds)
            seeds = np.tile(np.arange(config.traj_seeds), 4)
            # global replica indices beyond the grid's, so these streams are distinct from the sweep's
            reps = config.n_sigma * n_seeds + np.arange(sig.size)
            rsteps = np.unique(
                np.concatenate([[0], np.geomspace(1, config.steps, config.traj_points).round().astype(np.int64)])
            )
            w0, w1, wn = toy.init_weights(config.init, config.seed, seeds)
            run = toy.simulate(
                sig, w0=w0, w1=w1, w_ni=wn, replicas=reps, record=np.arange(sig.size), record_steps=rsteps, **kw
            )
            res = self._frame(run, seeds)
            traj = run.trajectories().assign(
                method=method,
                seed=np.repeat(seeds, rsteps.size),
                panel=np.repeat(np.repeat(np.arange(4), config.traj_seeds), rsteps.size),
            )
            return {"results": res.assign(kind="trajectory"), "trajectories": traj}
        i0, i1 = chunk.spec["sigma_index"]
        sig = np.repeat(_grid(config)[i0:i1], n_seeds)
        seeds = np.tile(np.arange(n_seeds), i1 - i0)
        reps = np.arange(i0 * n_seeds, i1 * n_seeds)
        w0, w1, wn = toy.init_weights(config.init, config.seed, np.arange(n_seeds))
        run = toy.simulate(sig, w0=w0[seeds], w1=w1[seeds], w_ni=wn[seeds], replicas=reps, **kw)
        return {"results": self._frame(run, seeds).assign(kind="sweep"), "trajectories": pd.DataFrame()}

    @staticmethod
    def _frame(run: toy.ToyRun, seeds: np.ndarray) -> pd.DataFrame:
        df = run.frame()
        df.insert(1, "seed", seeds)
        codes = run.phases()
        df["phase_code"] = codes
        df["phase"] = np.asarray(PHASES)[codes]
        df["stalled"] = run.stalled()
        return df

    def derive(self, config: Fig2TopConfig, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """``fractions``, ``boundaries``, ``decay`` and ``agreement`` (:mod:`._nin_toy_analysis`)."""
        return analysis.derive(config, tables["results"])

    def checks(self, config: Fig2TopConfig, tables: dict[str, pd.DataFrame]) -> list[Check]:
        checks = [c for method in config.methods for c in analysis.method_checks(config, tables, method)]
        if len(config.methods) == 2:
            checks.append(analysis.agreement_check(tables["agreement"]))
        return checks

    def metrics(self, config: Fig2TopConfig, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        res, bounds, frac = tables["results"], tables["boundaries"], tables["fractions"]
        sweep = res[res["kind"] == "sweep"]
        metrics: dict[str, Any] = {"horizon T (steps)": config.steps, "batch size": config.batch_size}
        metrics["init"] = config.init
        for method in config.methods:
            for _, row in bounds[bounds["method"] == method].iterrows():
                metrics[f"{method}: {row['name']}"] = analysis.boundary_summary(row)
            f = frac[frac["method"] == method]
            metrics[f"{method}: phase fractions max over sigma"] = {p: float(f[p].max()) for p in PHASES}
            cat = sweep[(sweep["method"] == method) & (sweep["phase_code"] == 2)]
            u_t = (config.lr * cat["sigma_eps"] ** 2 * cat["w1_T"] ** 2).to_numpy()
            landing = [float(v) for v in np.quantile(u_t, [0.5, 0.25, 0.75])] if u_t.size else []
            metrics[f"{method}: catapult runs land at eta sigma^2 w1(T)^2 (median, quartiles)"] = landing
            metrics[f"{method}: decay phase, first e-folds (steps) vs eqs. (9)-(10)"] = {
                f"sigma={r.sigma:.3g}": (
                    f"t_e NIW {r.t_e_niw:.4g} ± {r.t_e_niw_se:.2g}, eq.9 exponent {r.exp_niw:.3f}, "
                    f"eq.10 tau_noise(0) {r.tau_noise0:.4g}; t_e loss {r.t_e_loss:.4g}, "
                    f"exponent {r.exp_loss:.3f}, tau_loss(0) {r.tau_loss0:.4g}"
                )
                for r in tables["decay"][tables["decay"]["method"] == method].itertuples()
            }
        if len(config.methods) == 2:
            agree = tables["agreement"].iloc[0]
            metrics["exact vs reduced: agreement away from boundaries"] = {
                "fraction": float(agree["fraction"]),
                "sigmas": int(agree["sigmas"]),
            }
        traj = tables.get("trajectories", pd.DataFrame())
        return metrics | (_fits(traj) if len(traj) else {})

    def plot(self, config: Fig2TopConfig, tables: dict[str, pd.DataFrame], out: Path) -> None:
        _nin_toy_plot.plot(config, tables, out)


def _fits(traj: pd.DataFrame) -> dict[str, Any]:
    """Exponential fits |w_NI|(t) = A exp(-t/tau) (no offset; curve_fit standard errors) of the recorded
    decay-panel runs (panel 1), for comparison with their e-fold times."""
    out = {}
    for method, g in traj[traj["panel"] == 1].groupby("method"):
        fits = []
        for _, r in g.groupby("replica"):
            f = fit_exponential(r["step"].to_numpy(float), np.abs(r["w_ni"].to_numpy()), offset=False)
            fits.append(f"{f.tau[0]:.4g} ± {f.tau_err[0]:.2g}")
        out[f"{method}: decay panel exponential-fit tau of |w_NI| (steps)"] = fits
    return out
