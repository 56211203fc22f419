"""Paper 002 (minibatch noise), Fig. 4: parameter distributions in 1d, 2d and 16d against the exact (Thm 2,
eq. 3 with Lemma 1) and Hessian-approximation predictions.

All panels: label noise σ = 1, ½ in the loss, online data (N → ∞), sampling with replacement, μ = 0,
:func:`noiseprobe.minibatch.sgd.simulate_sgd`. Panels with different chain counts never share global
chain indices: panel (a) uses ``point·chains + j``, every other panel ``point·max(chain counts) + j``.
A learning rate past a stability bound is allowed: its chains diverge and the panel's checks are
"not measurable".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from noiseprobe.core.checks import Check
from noiseprobe.core.experiment import Chunk, Experiment, RunCost
from noiseprobe.core.plotting import new_figure, savefig
from noiseprobe.experiments import _mbn_fig4_highdim as highdim
from noiseprobe.experiments import _mbn_fig4_law as law
from noiseprobe.experiments import _mbn_fig4_sigma as sigma
from noiseprobe.experiments._mbn import BASE_BYTES, chains_1d, sim_peak_bytes
from noiseprobe.experiments._mbn_fig4_config import Fig4Config
from noiseprobe.minibatch.sgd import LinearProblem, simulate_sgd


class Fig4(Experiment):
    """Fig. 4. (a) Σ vs λ in 1d (a = 1, S = 10; divergence at λ = 2S/(S+2)): Thm 2 vs the discrete Hessian
    approximation (Liu et al. 2021) and the continuous one. (b), (c) stationary distributions in D = 2
    (Hessian eigenvalues 1 and 0.5, λ = 1.5, S = 50 and S = 10) against the covariance ellipses predicted by
    Thm 2 and by the two Hessian approximations. (d) the 1d stationary law of w (log density) against
    eq. (90) and two Gaussians, with a chain-clustered χ² goodness of fit. (e) D = 16, anisotropic Hessian
    (rotated, eigenvalues evenly spaced): eigenvalues of the simulated Σ against the exact solve of Thm 1 with
    the Lemma 1 noise and the two Hessian approximations."""

    id = "mbn-fig4"
    title = "Parameter distributions in 1d, 2d and 16d vs exact and Hessian-approximation predictions"
    tables = ("samples", "samples1d", "sigma_hd")
    Config = Fig4Config
    presets = {
        "quick": {
            "seed": 0,
            "a": 1.0,
            "batch_size": 10,
            "lrs": [0.2, 0.5, 0.8, 1.0, 1.2, 1.4],
            "hess": [1.0, 0.5],
            "lr2d": 1.5,
            "batch_sizes_2d": [50, 10],
            "chains": 1000,
            "steps": 1500,
            "burn_in": 300,
            "chains2d": 300,
            "steps2d": 1500,
            "snapshot_every": 100,
            "lr_dist": 1.4,
            "dist_bins": [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0],
            "chains_dist": 1000,
            "steps_dist": 1500,
            "every_dist": 10,
            "D_hd": 16,
            "batch_size_hd": 16,
            "lr_hd": 1.0,
            "hess_hd": [0.05, 0.8],
            "chains_hd": 300,
            "steps_hd": 1500,
        },
        "full": {
            "seed": 0,
            "a": 1.0,
            "batch_size": 10,
            "lrs": [0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.3, 1.4, 1.5, 1.6],
            "hess": [1.0, 0.5],
            "lr2d": 1.5,
            "batch_sizes_2d": [50, 10],
            "chains": 20000,
            "steps": 10000,
            "burn_in": 2000,
            "chains2d": 4000,
            "steps2d": 8000,
            "snapshot_every": 200,
            "lr_dist": 1.4,
            "dist_bins": [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0, 10.0],
            "chains_dist": 4000,
            "steps_dist": 8000,
            "every_dist": 20,
            "D_hd": 16,
            "batch_size_hd": 16,
            "lr_hd": 1.0,
            "hess_hd": [0.05, 0.8],
            "chains_hd": 2000,
            "steps_hd": 8000,
        },
    }
    diverging = {"lrs": [5.0], "lr2d": 5.0, "lr_dist": 5.0, "lr_hd": 5.0}

    def estimate(self, config: Fig4Config) -> RunCost:
        """The largest chunk: a 1d point, a 2d point with snapshots, the 1d law with snapshots (and their long
        tables), or the D_hd point with its per-chain D² second moments (and their long table)."""
        D = config.D_hd
        peaks = [
            sim_peak_bytes(config.chains),
            sim_peak_bytes(config.chains2d, 2, snapshots=config.steps2d // config.snapshot_every),
            sim_peak_bytes(config.chains_dist, snapshots=config.steps_dist // config.every_dist),
            sim_peak_bytes(config.chains_hd, D, frame_columns=4 * D * (D + 1) // 2),
        ]
        return RunCost(
            peak_bytes=int(max(peaks)) + BASE_BYTES,
            drivers=("chains", "chains2d", "steps2d", "chains_dist", "steps_dist", "chains_hd", "D_hd"),
        )

    def chunks(self, config: Fig4Config) -> list[Chunk]:
        a = [Chunk(f"lr{lr:g}", {"panel": "a", "lr": lr, "point": i}) for i, lr in enumerate(config.lrs)]
        n = len(a) + len(config.batch_sizes_2d)
        b = [
            Chunk(f"S2d{S}", {"panel": "2d", "S": S, "point": len(a) + i}) for i, S in enumerate(config.batch_sizes_2d)
        ]
        return (
            a + b + [Chunk("dist1d", {"panel": "dist", "point": n}), Chunk("highdim", {"panel": "hd", "point": n + 1})]
        )

    @staticmethod
    def _first_chain(config: Fig4Config, point: int) -> int:
        """First global chain index of a point outside panel (a) (see the module docstring)."""
        return point * max(config.chains, config.chains2d, config.chains_dist, config.chains_hd)

    def measure(self, config: Fig4Config, chunk: Chunk) -> pd.DataFrame | dict[str, pd.DataFrame]:
        sp = chunk.spec
        if sp["panel"] == "a":
            df = chains_1d(config, sp["point"], a=config.a, lr=sp["lr"], batch_size=config.batch_size, sigma=1.0)
            table: pd.DataFrame = df.assign(panel="a", lr=sp["lr"], S=config.batch_size)
            return table
        first = self._first_chain(config, sp["point"])
        if sp["panel"] == "2d":
            R = config.chains2d
            run = simulate_sgd(
                LinearProblem(np.diag(config.hess), sigma=1.0),
                lr=config.lr2d,
                batch_size=sp["S"],
                steps=config.steps2d,
                chains=R,
                snapshot_every=config.snapshot_every,
                burn_in=config.burn_in,
                seed=config.seed,
                first_chain=first,
            )
            sm = run.second_moment
            df = pd.DataFrame(
                {
                    "chain": first + np.arange(R),
                    "s11": sm[:, 0, 0],
                    "s12": sm[:, 0, 1],
                    "s22": sm[:, 1, 1],
                    "diverged": run.diverged,
                }
            )
            assert run.snapshots is not None  # snapshot_every was given
            snaps = run.snapshots.reshape(-1, 2)
            samples = pd.DataFrame({"S": sp["S"], "w1": snaps[:, 0], "w2": snaps[:, 1]}).dropna()
            return {"results": df.assign(panel="2d", lr=config.lr2d, S=sp["S"]), "samples": samples}
        if sp["panel"] == "dist":
            R = config.chains_dist
            run = simulate_sgd(
                LinearProblem(config.a, sigma=1.0),
                lr=config.lr_dist,
                batch_size=config.batch_size,
                steps=config.steps_dist,
                chains=R,
                snapshot_every=config.every_dist,
                burn_in=config.burn_in,
                seed=config.seed,
                first_chain=first,
            )
            chain = first + np.arange(R)
            assert run.snapshots is not None  # snapshot_every was given
            n = run.snapshots.shape[1]
            samples = pd.DataFrame({"chain": np.repeat(chain, n), "w": run.snapshots[..., 0].ravel()}).dropna()
            df = pd.DataFrame({"chain": chain, "sigma_w": run.second_moment[:, 0, 0], "diverged": run.diverged})
            return {"results": df.assign(panel="dist", lr=config.lr_dist, S=config.batch_size), "samples1d": samples}
        R, D = config.chains_hd, config.D_hd
        run = simulate_sgd(
            LinearProblem(highdim.highdim_hessian(config), sigma=1.0),
            lr=config.lr_hd,
            batch_size=config.batch_size_hd,
            steps=config.steps_hd,
            chains=R,
            burn_in=config.burn_in,
            seed=config.seed,
            first_chain=first,
        )
        i, j = np.triu_indices(D)
        chain = first + np.arange(R)
        sig = pd.DataFrame(
            {
                "chain": np.repeat(chain, len(i)),
                "i": np.tile(i, R),
                "j": np.tile(j, R),
                "m": run.second_moment[:, i, j].ravel(),
            }
        )
        df = pd.DataFrame({"chain": chain, "diverged": run.diverged})
        return {"results": df.assign(panel="hd", lr=config.lr_hd, S=config.batch_size_hd), "sigma_hd": sig}

    def checks(self, config: Fig4Config, tables: dict[str, pd.DataFrame]) -> list[Check]:
        res = tables["results"]
        return [
            *sigma.panel_a_checks(config, sigma.panel_a_table(config, res)),
            *sigma.panels_2d_checks(sigma.sigma_2d(config, res)),
            *law.law_checks(law.law_fit(config, tables["samples1d"])),
            *highdim.panel_hd_checks(config, highdim.sigma_highdim(config, res, tables["sigma_hd"])),
        ]

    def metrics(self, config: Fig4Config, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        res = tables["results"]
        pa = sigma.panel_a_table(config, res)
        out: dict[str, Any] = {"sigma_1d": dict(zip(pa.lr.astype(str), pa.sim))}
        for p in sigma.sigma_2d(config, res):
            if p.why_not is None:
                out[f"eig_sigma_S{p.S}"] = {n: v.tolist() for n, v in p.eigenvalues.items()}
        lf = law.law_fit(config, tables["samples1d"])
        if lf.why_not is None:
            out["dist_1d_fit"] = lf.fit
        hd = highdim.sigma_highdim(config, res, tables["sigma_hd"])
        if hd.why_not is None:
            out["eig_sigma_highdim"] = {
                "sim": hd.ev.tolist(),
                "se": hd.se.tolist(),
                **{k: v.tolist() for k, v in hd.pred.items()},
            }
        return out

    def plot(self, config: Fig4Config, tables: dict[str, pd.DataFrame], out: Path) -> None:
        res = tables["results"]
        fig, axes = new_figure(3, 2, width=4.0, height=3.4)
        ax = axes.ravel()
        sigma.panel_a_plot(config, sigma.panel_a_table(config, res), ax[0])
        sigma.panels_2d_plot(config, sigma.sigma_2d(config, res), tables["samples"], ax[1:3])
        law.law_plot(config, law.law_fit(config, tables["samples1d"]), tables["samples1d"], ax[3])
        highdim.panel_hd_plot(config, highdim.sigma_highdim(config, res, tables["sigma_hd"]), ax[4])
        ax[5].legend(*ax[3].get_legend_handles_labels(), loc="center", title="(d) stationary law of w")
        ax[5].axis("off")
        savefig(fig, out / "fig4.png")
