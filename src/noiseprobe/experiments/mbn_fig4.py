"""Paper 002 (minibatch noise), Fig. 4: parameter distributions in 1d, 2d and 16d against the exact (Thm 2,
eq. 3 with Lemma 1) and Hessian-approximation predictions.

All panels: label noise σ = 1, ½ in the loss, online data (N → ∞), sampling with replacement, μ = 0,
:func:`noiseprobe.minibatch.simulate.simulate_sgd`. Panels with different chain counts never share global
chain indices: panel (a) uses ``point·chains + j``, every other panel ``point·max(chain counts) + j``.
A learning rate past a stability bound is allowed: its chains diverge and the panel's checks are
"not measurable".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import integrate, stats

from noiseprobe.core.checks import Check, Z
from noiseprobe.core.config import param
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.experiment import Chunk, Experiment, RunCost
from noiseprobe.core.linalg import psd_power
from noiseprobe.core.plotting import new_figure, savefig
from noiseprobe.core.seeding import replica_generators
from noiseprobe.core.stats import clustered_chi2, mean_se_kept, standard_error
from noiseprobe.experiments._mbn import BASE_BYTES, ChainsConfig, chains_1d, sim_peak_bytes, worst_point
from noiseprobe.minibatch.baselines import hessian_approx_sigma
from noiseprobe.minibatch.fluctuation import NoStationaryState, or_inf, solve_fluctuation
from noiseprobe.minibatch.linear import label_noise_kappa, label_noise_lr_bound, label_noise_sigma, lemma1_noise_map
from noiseprobe.minibatch.simulate import LinearProblem, simulate_sgd
from noiseprobe.minibatch.tails import student_t_pdf, tail_index_eq93, tail_index_exact

#: random stream of the high-dimensional panel's Hessian eigenbasis (distinct from every chain's noise streams)
_HD_BASIS_STREAM = 4004
#: thresholds of the claims: Σ̂/Σ_H at the largest λ; Hellinger distance of eq. (90); χ² p-value and ratio
UNDERESTIMATE_MIN, HELLINGER_MAX, P_REJECT, CHI2_RATIO_MIN = 1.2, 0.03, 1e-6, 10.0


@dataclass(frozen=True, kw_only=True)
class Fig4Config(ChainsConfig):
    a: float = param(lo=0.0, lo_open=True, help="curvature of the 1d panels")
    S: int = param(lo=1, hi=10**6, help="batch size of the 1d panels")
    lrs: list[float] = param(lo=0.0, lo_open=True, min_len=1, help="learning rates of panel (a)")
    hess: list[float] = param(lo=0.0, lo_open=True, min_len=2, max_len=2, help="Hessian eigenvalues of the 2d panels")
    lr2d: float = param(lo=0.0, lo_open=True)
    S2d: list[int] = param(lo=1, hi=10**6, min_len=1)
    chains2d: int = param(lo=2, hi=10**8)
    steps2d: int = param(lo=10, hi=10**8)
    snapshot_every: int = param(lo=1)
    lr_dist: float = param(lo=0.0, lo_open=True, help="learning rate of the 1d distribution panel (d)")
    dist_bins: list[float] = param(lo=0.0, lo_open=True, min_len=1, help="bin edges in units of the exact √Σ")
    chains_dist: int = param(lo=2, hi=10**8)
    steps_dist: int = param(lo=10, hi=10**8)
    every_dist: int = param(lo=1)
    D_hd: int = param(lo=2, hi=64)
    S_hd: int = param(lo=1, hi=10**6)
    lr_hd: float = param(lo=0.0, lo_open=True)
    hess_hd: list[float] = param(lo=0.0, lo_open=True, min_len=2, max_len=2, help="[smallest, largest] eigenvalue")
    chains_hd: int = param(lo=2, hi=10**8)
    steps_hd: int = param(lo=10, hi=10**8)

    size_fields = (
        "chains",
        "steps",
        "burn_in",
        "chains2d",
        "steps2d",
        "S2d",
        "chains_dist",
        "steps_dist",
        "chains_hd",
        "steps_hd",
        "D_hd",
        "S_hd",
    )

    def check(self) -> None:
        bins = self.dist_bins
        if any(b1 <= b0 for b0, b1 in zip(bins, bins[1:])):
            raise ConfigError("dist_bins", bins, "strictly increasing bin edges (in units of the exact √Σ)")
        if self.chains_dist < len(bins) + 2:  # the clustered χ² needs more chains than bins
            raise ConfigError("chains_dist", self.chains_dist, f"an integer >= {len(bins) + 2} (number of bins + 1)")
        if self.steps_dist < self.every_dist:
            raise ConfigError("steps_dist", self.steps_dist, f">= every_dist = {self.every_dist}")
        if self.hess_hd[0] > self.hess_hd[1]:
            raise ConfigError("hess_hd", self.hess_hd, "[smallest, largest] Hessian eigenvalue")


def highdim_hessian(config: Any) -> np.ndarray:
    """A = Q diag(h) Qᵀ: h evenly spaced over ``hess_hd``, Q a random rotation drawn from ``seed``."""
    D = config["D_hd"]
    g = replica_generators(config["seed"], [0], stream=_HD_BASIS_STREAM)[0]
    Q = np.linalg.qr(g.standard_normal((D, D)))[0]
    A = Q @ np.diag(np.linspace(*config["hess_hd"], D)) @ Q.T
    return (A + A.T) / 2


def highdim_sigma(config: Any) -> np.ndarray:
    """Exact Σ of the high-dimensional panel: eq. (3) with the Lemma 1 noise (eq. 5), σ = 1, solved exactly
    (raises NoStationaryState past the stability bound)."""
    A = highdim_hessian(config)
    C0, noise_map = lemma1_noise_map(A, batch_size=config["S_hd"])
    return solve_fluctuation(A, C0, lr=config["lr_hd"], noise_map=noise_map)


def dist_models(config: Any) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Predicted stationary densities of the 1d panel (a, S, λ = ``lr_dist``, σ = 1), each with its label:

    * eq. (90) with the exact tail index β_K (root of E|1 − λaχ²_S/S|^β = 1) and the scale set so that the
      variance is Thm 2's Σ: p ∝ (s² + aw²)^(−(1+β_K)/2), s² = a(β_K − 2)Σ (corrected form);
    * eq. (90) as in Prop. 7: scale σ², β from eq. (93); its variance equals Σ by eq. (92) (paper's form);
    * Gaussians N(0, Σ) (exact Thm 2 variance) and N(0, Σ_H) with the discrete Hessian approximation
      Σ_H = λ/(S(2 − λa)) (eq. 19, C = H/S, σ² = 1).

    Raises NoStationaryState when λ is past Thm 2's bound (no finite variance).
    """
    a, S, lr = config["a"], config["S"], config["lr_dist"]
    var = float(np.ravel(label_noise_sigma(a, lr=lr, batch_size=S, sigma=1.0))[0])
    var_h = float(np.ravel(hessian_approx_sigma(a, lr=lr, batch_size=S))[0])
    bk, b93 = float(tail_index_exact(lr=lr, batch_size=S, a=a)), float(tail_index_eq93(lr=lr, batch_size=S, a=a))
    s_k = np.sqrt(a * (bk - 2) * var)
    return {
        f"eq. (90), exact β_K = {bk:.2f}": lambda w: student_t_pdf(w, bk, sigma=s_k, a=a),
        f"eq. (90), paper β (eq. 93) = {b93:.2f}": lambda w: student_t_pdf(w, b93, sigma=1.0, a=a),
        "Gaussian, exact Σ (Thm 2)": lambda w: stats.norm.pdf(w, scale=np.sqrt(var)),
        "Gaussian, Hessian-approx. Σ (eq. 19)": lambda w: stats.norm.pdf(w, scale=np.sqrt(var_h)),
    }


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
            "S": 10,
            "lrs": [0.2, 0.5, 0.8, 1.0, 1.2, 1.4],
            "hess": [1.0, 0.5],
            "lr2d": 1.5,
            "S2d": [50, 10],
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
            "S_hd": 16,
            "lr_hd": 1.0,
            "hess_hd": [0.05, 0.8],
            "chains_hd": 300,
            "steps_hd": 1500,
        },
        "full": {
            "seed": 0,
            "a": 1.0,
            "S": 10,
            "lrs": [0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.3, 1.4, 1.5, 1.6],
            "hess": [1.0, 0.5],
            "lr2d": 1.5,
            "S2d": [50, 10],
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
            "S_hd": 16,
            "lr_hd": 1.0,
            "hess_hd": [0.05, 0.8],
            "chains_hd": 2000,
            "steps_hd": 8000,
        },
    }
    diverging = {"lrs": [5.0], "lr2d": 5.0, "lr_dist": 5.0, "lr_hd": 5.0}

    def estimate(self, config: Any) -> RunCost:
        """The largest chunk: a 1d point, a 2d point with snapshots, the 1d law with snapshots (and their long
        tables), or the D_hd point with its per-chain D² second moments (and their long table)."""
        D = config["D_hd"]
        peaks = [
            sim_peak_bytes(config["chains"]),
            sim_peak_bytes(config["chains2d"], 2, snapshots=config["steps2d"] // config["snapshot_every"]),
            sim_peak_bytes(config["chains_dist"], snapshots=config["steps_dist"] // config["every_dist"]),
            sim_peak_bytes(config["chains_hd"], D, frame_columns=4 * D * (D + 1) // 2),
        ]
        return RunCost(
            peak_bytes=int(max(peaks)) + BASE_BYTES,
            drivers=("chains", "chains2d", "steps2d", "chains_dist", "steps_dist", "chains_hd", "D_hd"),
        )

    def chunks(self, config: Any) -> list[Chunk]:
        a = [Chunk(f"lr{lr:g}", {"panel": "a", "lr": lr, "point": i}) for i, lr in enumerate(config["lrs"])]
        n = len(a) + len(config["S2d"])
        b = [Chunk(f"S2d{S}", {"panel": "2d", "S": S, "point": len(a) + i}) for i, S in enumerate(config["S2d"])]
        return (
            a + b + [Chunk("dist1d", {"panel": "dist", "point": n}), Chunk("highdim", {"panel": "hd", "point": n + 1})]
        )

    @staticmethod
    def _first_chain(config: Any, point: int) -> int:
        """First global chain index of a point outside panel (a) (see the module docstring)."""
        return point * max(config["chains"], config["chains2d"], config["chains_dist"], config["chains_hd"])

    def run_chunk(self, config: Any, chunk: Chunk) -> pd.DataFrame | dict[str, pd.DataFrame]:
        sp = chunk.spec
        if sp["panel"] == "a":
            df = chains_1d(config, sp["point"], a=config["a"], lr=sp["lr"], batch_size=config["S"], sigma=1.0)
            return df.assign(panel="a", lr=sp["lr"], S=config["S"])
        first = self._first_chain(config, sp["point"])
        common = dict(burn_in=config["burn_in"], seed=config["seed"], first_chain=first)
        if sp["panel"] == "2d":
            R = config["chains2d"]
            run = simulate_sgd(
                LinearProblem(np.diag(config["hess"]), sigma=1.0),
                lr=config["lr2d"],
                batch_size=sp["S"],
                steps=config["steps2d"],
                chains=R,
                snapshot_every=config["snapshot_every"],
                **common,
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
            snaps = run.snapshots.reshape(-1, 2)
            samples = pd.DataFrame({"S": sp["S"], "w1": snaps[:, 0], "w2": snaps[:, 1]}).dropna()
            return {"results": df.assign(panel="2d", lr=config["lr2d"], S=sp["S"]), "samples": samples}
        if sp["panel"] == "dist":
            R = config["chains_dist"]
            run = simulate_sgd(
                LinearProblem(config["a"], sigma=1.0),
                lr=config["lr_dist"],
                batch_size=config["S"],
                steps=config["steps_dist"],
                chains=R,
                snapshot_every=config["every_dist"],
                **common,
            )
            chain = first + np.arange(R)
            n = run.snapshots.shape[1]
            samples = pd.DataFrame({"chain": np.repeat(chain, n), "w": run.snapshots[..., 0].ravel()}).dropna()
            df = pd.DataFrame({"chain": chain, "sigma_w": run.second_moment[:, 0, 0], "diverged": run.diverged})
            return {"results": df.assign(panel="dist", lr=config["lr_dist"], S=config["S"]), "samples1d": samples}
        R, D = config["chains_hd"], config["D_hd"]
        run = simulate_sgd(
            LinearProblem(highdim_hessian(config), sigma=1.0),
            lr=config["lr_hd"],
            batch_size=config["S_hd"],
            steps=config["steps_hd"],
            chains=R,
            **common,
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
        return {"results": df.assign(panel="hd", lr=config["lr_hd"], S=config["S_hd"]), "sigma_hd": sig}

    def analyse(self, config: Any, tables: dict[str, pd.DataFrame], out: Path) -> tuple[dict, list[Check]]:
        fig, axes = new_figure(3, 2, width=4.0, height=3.4)
        ax = axes.ravel()
        metrics: dict[str, Any] = {}
        checks = self._panel_a(config, tables["results"], ax[0], metrics)
        checks += self._panels_2d(config, tables["results"], tables["samples"], ax[1:3], metrics)
        checks += self._panel_dist(config, tables["samples1d"], ax[3], metrics)
        checks += self._panel_hd(config, tables["results"], tables["sigma_hd"], ax[4], metrics)
        ax[5].legend(*ax[3].get_legend_handles_labels(), loc="center", title="(d) stationary law of w")
        ax[5].axis("off")
        savefig(fig, out / "fig4.png")
        return metrics, checks

    def _panel_a(self, config: Any, res: pd.DataFrame, ax: Any, metrics: dict[str, Any]) -> list[Check]:
        a, S = config["a"], config["S"]
        rows = []
        for lr, g in res[res.panel == "a"].groupby("lr"):
            m, se, frac = mean_se_kept(g["sigma_w"], g["diverged"])
            rows.append(
                {
                    "lr": lr,
                    "sim": m,
                    "se": se,
                    "exact": or_inf(label_noise_sigma, a, lr=lr, batch_size=S, sigma=1.0),
                    "discrete": or_inf(hessian_approx_sigma, a, lr=lr, batch_size=S),
                    "beta": float(tail_index_exact(lr=lr, batch_size=S, a=a)),
                }
            )
        pa = pd.DataFrame(rows).sort_values("lr")
        checks = [
            worst_point(
                "thm2-sigma-1d-matches-simulation",
                "Fig. 4(a): Thm 2 matches simulated Σ(λ) in 1d",
                pa.sim,
                pa.exact,
                pa.se,
                [f"λ={x:g}" for x in pa.lr],
                rtol=np.where(pa.beta > 4, 0.0, 0.1),
                detail="+10 % relative where the tail index < 4",
            )
        ]
        bound = label_noise_lr_bound(a, batch_size=S)
        checks.append(
            Check.close(
                "divergence-bound-closed-form",
                "Fig. 4(a): Σ diverges at λ = 2S/((S+2)a), which the continuous theory misses",
                bound,
                2 * S / ((S + 2) * a),
                atol=1e-8,
            )
        )
        hi = pa.iloc[-1]
        checks.append(
            Check.greater(
                "hessian-underestimates-large-lr",
                "Fig. 4(a): the discrete Hessian approximation underestimates Σ at large λ "
                "(simulated Σ / discrete approximation)",
                hi.sim / hi.discrete,
                UNDERESTIMATE_MIN,
                detail=f"at λ = {hi.lr:g}; SE of the ratio {hi.se / hi.discrete:.2g} (not a slack: "
                "the tail index there is < 4, its SE unreliable)",
            )
        )
        lg = np.linspace(0.02, bound * 0.995, 200)
        ax.plot(lg, [or_inf(label_noise_sigma, a, lr=x, batch_size=S, sigma=1.0) for x in lg], label="exact (Thm 2)")
        ax.plot(
            lg,
            [or_inf(hessian_approx_sigma, a, lr=x, batch_size=S) for x in lg],
            "--",
            label="Hessian approx., discrete",
        )
        ax.plot(lg, lg / (2 * S), ":", label="Hessian approx., continuous")
        fin = np.isfinite(pa.sim)
        ax.errorbar(pa.lr[fin], pa.sim[fin], yerr=Z * pa.se[fin], fmt="o", ms=4, label="simulation")
        ax.axvline(bound, color="C1", lw=0.8)
        ax.set(yscale="log", xlabel="learning rate λ", ylabel="Σ", title=f"(a) 1d, a={a}, S={S}")
        ax.legend()
        metrics["sigma_1d"] = dict(zip(pa.lr.astype(str), pa.sim))
        return checks

    def _panels_2d(
        self, config: Any, res: pd.DataFrame, samples: pd.DataFrame, axes: Any, metrics: dict[str, Any]
    ) -> list[Check]:
        H = np.diag(config["hess"])
        checks = []
        for k, (Sb, g) in enumerate(res[res.panel == "2d"].groupby("S", sort=False)):
            key = f"sigma-2d-s{int(Sb)}-matches-thm2"
            claim = (
                f"Fig. 4({'bc'[k % 2]}): the simulated 2d Σ (S = {int(Sb)}) matches Thm 2 in every direction "
                "(‖Σ^{-1/2} Σ̂ Σ^{-1/2} − I‖₂)"
            )
            ok = g[~g.diverged.astype(bool)]
            try:
                ex = label_noise_sigma(H, lr=config["lr2d"], batch_size=int(Sb), sigma=1.0)
            except NoStationaryState as e:
                checks.append(Check.not_measurable(key, claim, f"no stationary Σ ({e})"))
                continue
            if len(ok) < 2:
                checks.append(Check.not_measurable(key, claim, "fewer than two convergent chains"))
                continue
            sim = np.array([[ok.s11.mean(), ok.s12.mean()], [ok.s12.mean(), ok.s22.mean()]])
            disc = hessian_approx_sigma(H, lr=config["lr2d"], batch_size=int(Sb))
            cont = hessian_approx_sigma(H, lr=config["lr2d"], batch_size=int(Sb), time="continuous")
            ev = {
                n: np.sort(np.linalg.eigvalsh(M))[::-1]
                for n, M in (("sim", sim), ("exact", ex), ("discrete", disc), ("continuous", cont))
            }
            beta = float(tail_index_exact(lr=config["lr2d"], batch_size=int(Sb), a=max(config["hess"])))  # stiff mode
            # relative error in every direction, orientation included: ‖Σ_ex^{-1/2} Σ̂ Σ_ex^{-1/2} − I‖₂
            half = psd_power(ex, -0.5)
            rel = float(np.abs(np.linalg.eigvalsh(half @ sim @ half - np.eye(2))).max())
            tol = 0.05 if beta > 4 else 0.25
            checks.append(
                Check.less(
                    key,
                    claim,
                    rel,
                    tol,
                    detail=f"eigenvalues: simulated {ev['sim']}, Thm 2 {ev['exact']}, "
                    f"discrete Hessian {ev['discrete']}, continuous {ev['continuous']}; "
                    f"tail index of the stiff direction ≈ {beta:.2f} (bound 0.05 if > 4, else 0.25)",
                )
            )
            metrics[f"eig_sigma_S{int(Sb)}"] = {n: v.tolist() for n, v in ev.items()}
            axk = axes[k % 2]
            sm = samples[samples.S == Sb]
            lim = 4 * np.sqrt(ev["exact"][0])
            sm = sm[(sm.w1.abs() < lim) & (sm.w2.abs() < lim)].iloc[:4000]
            axk.scatter(sm.w1, sm.w2, s=1, alpha=0.3, color="0.4")
            t = np.linspace(0, 2 * np.pi, 200)
            for (n, M), st in zip(
                (("exact", ex), ("discrete Hess.", disc), ("continuous Hess.", cont)), ("-", "--", ":")
            ):
                e = 2 * np.linalg.cholesky(M) @ np.vstack([np.cos(t), np.sin(t)])
                axk.plot(e[0], e[1], st, label=f"{n} (2σ)")
            axk.set(
                xlabel="w₁", ylabel="w₂", title=f"({'bc'[k % 2]}) D=2, λ={config['lr2d']}, S={int(Sb)}", aspect="equal"
            )
            axk.legend(loc="upper right")
        return checks

    def _panel_dist(self, config: Any, samples: pd.DataFrame, ax: Any, metrics: dict[str, Any]) -> list[Check]:
        """Chain-clustered χ² of |w| in bins ``dist_bins``·√Σ (plus [last, ∞)) against each model of
        :func:`dist_models`; the bin probabilities integrate the model densities."""
        a, S, lr = config["a"], config["S"], config["lr_dist"]
        keys = {
            "eq90-exact-describes-1d-law": "Fig. 4(d): eq. (90) with the exact tail index β_K describes the "
            "simulated 1d stationary law closely (Hellinger distance of the binned laws)",
            "gaussian-hessian-rejected": "Fig. 4(d): a Gaussian with the Hessian-approximation variance does not: "
            "rejected by the clustered χ² (p-value)",
            "gaussian-hessian-chi2-ratio": "Fig. 4(d): the Hessian-approximation Gaussian has at least 10 times the "
            "χ² of eq. (90) with β_K",
        }
        chains = samples.chain.nunique() if len(samples) else 0
        try:
            models = dist_models(config)
        except NoStationaryState as e:
            return [Check.not_measurable(k, c, f"no stationary variance ({e})") for k, c in keys.items()]
        if chains <= len(config["dist_bins"]) + 1:
            return [
                Check.not_measurable(
                    k,
                    c,
                    f"{chains} convergent chains: the clustered χ² needs more than the "
                    f"{len(config['dist_bins']) + 1} bins",
                )
                for k, c in keys.items()
            ]
        scale = np.sqrt(float(np.ravel(label_noise_sigma(a, lr=lr, batch_size=S, sigma=1.0))[0]))
        edges = np.concatenate([[0.0], np.asarray(config["dist_bins"]) * scale, [np.inf]])
        x = samples.w.abs().to_numpy()
        ids, inv = np.unique(samples.chain.to_numpy(), return_inverse=True)
        counts = np.zeros((len(ids), len(edges) - 1))
        np.add.at(counts, (inv, np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)), 1.0)
        fractions = counts / counts.sum(1, keepdims=True)
        fit = {}
        for name, pdf in models.items():
            p = np.array([2 * integrate.quad(pdf, lo, hi, epsabs=1e-13)[0] for lo, hi in zip(edges[:-1], edges[1:])])
            t2, d, pval = clustered_chi2(fractions, p / p.sum())
            hell = float(np.sqrt(0.5 * np.sum((np.sqrt(fractions.mean(0)) - np.sqrt(p)) ** 2)))
            fit[name] = {"chi2": t2, "dof": d, "p_value": pval, "hellinger": hell}
        names = list(models)
        k90, kh = fit[names[0]], fit[names[3]]
        n = len(x)
        detail = "; ".join(
            f"{k}: χ²={v['chi2']:.1f}, p={v['p_value']:.2g}, Hellinger={v['hellinger']:.4f}" for k, v in fit.items()
        )
        checks = [
            Check.less(
                "eq90-exact-describes-1d-law",
                keys["eq90-exact-describes-1d-law"],
                k90["hellinger"],
                HELLINGER_MAX,
                detail=f"n = {n} samples from {len(ids)} chains; {detail}. Eq. (90) is the continuous-time shape, "
                "not the exact discrete-time law: at large n the clustered χ² detects its small deviation "
                "(see its p-value).",
            ),
            Check.less(
                "gaussian-hessian-rejected",
                keys["gaussian-hessian-rejected"],
                kh["p_value"],
                P_REJECT,
                detail="Wald χ², chains as clusters, F test; " + detail,
            ),
            Check.greater(
                "gaussian-hessian-chi2-ratio",
                keys["gaussian-hessian-chi2-ratio"],
                kh["chi2"] / k90["chi2"],
                CHI2_RATIO_MIN,
                detail=f"dof {kh['dof']}",
            ),
        ]
        metrics["dist_1d_fit"] = fit
        lim = edges[-2]
        hb = np.linspace(-lim, lim, 61)
        dens, _ = np.histogram(samples.w.to_numpy(), hb, density=False)
        centers = (hb[1:] + hb[:-1]) / 2
        dens = dens / (n * np.diff(hb))
        ax.plot(centers[dens > 0], dens[dens > 0], "o", ms=3, color="0.3", label="simulation")
        ww = np.linspace(-lim, lim, 400)
        for (name, pdf), st in zip(models.items(), ("-", "-.", "--", ":")):
            ax.plot(ww, pdf(ww), st, label=name)
        ax.set(
            yscale="log",
            ylim=(0.3 / (n * np.diff(hb)[0]), None),
            xlabel="w",
            ylabel="density",
            title=f"(d) 1d stationary law, a={a}, λ={lr}, S={S}",
        )
        return checks

    def _panel_hd(
        self, config: Any, res: pd.DataFrame, sig: pd.DataFrame, ax: Any, metrics: dict[str, Any]
    ) -> list[Check]:
        """Eigenvalues e_k of the pooled Σ̂ (mean over surviving chains); SE by the delta method,
        de_k = v_kᵀ dΣ v_k: the across-chain SE of the per-chain v_kᵀ M_r v_k (v_k eigenvectors of Σ̂).
        Eigenvalues alone would not see a wrong orientation (and a sample covariance's eigenvalues are
        spread out), so Σ̂ is also compared as a matrix: its entries Uᵀ Σ̂ U in the eigenbasis U of the
        exact Σ against diag(exact eigenvalues), each with its across-chain SE."""
        D, lr, S = config["D_hd"], config["lr_hd"], config["S_hd"]
        keys = {
            "highdim-eigenvalues-match": f"Fig. 4(e): the eigenvalues of the simulated Σ in D = {D} match the "
            "exact solve of eq. (3) with the Lemma 1 noise",
            "highdim-matrix-matches": f"Fig. 4(e): the simulated Σ in D = {D} equals the exact solve as a matrix: "
            "in the exact eigenbasis, diagonal entries = the exact eigenvalues and "
            "off-diagonal entries = 0",
            "hessian-approximations-miss-highdim": f"Fig. 4(e): both Hessian approximations miss the {D}d "
            "eigenvalues (min |z| over the eigenvalues and both)",
        }
        ok = set(res[(res.panel == "hd") & ~res.diverged.astype(bool)].chain)
        sig = sig[sig.chain.isin(ok)]
        try:
            exact = highdim_sigma(config)
        except NoStationaryState as e:
            return [Check.not_measurable(k, c, f"no stationary Σ ({e})") for k, c in keys.items()]
        if len(ok) < 2:
            return [Check.not_measurable(k, c, "fewer than two convergent chains") for k, c in keys.items()]
        ids, inv = np.unique(sig.chain.to_numpy(), return_inverse=True)
        M = np.zeros((len(ids), D, D))
        M[inv, sig.i.to_numpy(), sig.j.to_numpy()] = sig.m.to_numpy()
        M[inv, sig.j.to_numpy(), sig.i.to_numpy()] = sig.m.to_numpy()
        ev, V = np.linalg.eigh(M.mean(0))
        se = standard_error(np.einsum("ik,rij,jk->rk", V, M, V))
        A = highdim_hessian(config)
        lam, U = np.linalg.eigh(exact)
        pred = {
            "exact": np.linalg.eigvalsh(exact),
            "discrete": np.linalg.eigvalsh(hessian_approx_sigma(A, lr=lr, batch_size=S)),
            "continuous": np.linalg.eigvalsh(hessian_approx_sigma(A, lr=lr, batch_size=S, time="continuous")),
        }
        rot = np.einsum("ik,rij,jl->rkl", U, M, U)  # per-chain Σ̂ in the exact eigenbasis
        upper = np.triu_indices(D)
        z = {k: (ev - v) / se for k, v in pred.items()}
        ratio = {k: ev / v for k, v in pred.items()}
        z_miss = float(min(np.abs(z["discrete"]).min(), np.abs(z["continuous"]).min()))
        checks = [
            worst_point(
                "highdim-eigenvalues-match",
                keys["highdim-eigenvalues-match"],
                ev,
                pred["exact"],
                se,
                [f"rank {k + 1}" for k in range(D)],
                detail=f"{len(ids)} chains; relative SE {float((se / ev).min()):.2g}–{float((se / ev).max()):.2g}",
            ),
            worst_point(
                "highdim-matrix-matches",
                keys["highdim-matrix-matches"],
                rot.mean(0)[upper],
                np.diag(lam)[upper],
                standard_error(rot)[upper],
                [f"({i},{j})" for i, j in zip(*upper)],
                detail="across-chain SE of each entry of Uᵀ M_r U",
            ),
            Check.greater(
                "hessian-approximations-miss-highdim",
                keys["hessian-approximations-miss-highdim"],
                z_miss,
                Z,
                detail="simulated/predicted eigenvalue ranges: "
                + ", ".join(f"{k} [{ratio[k].min():.3f}, {ratio[k].max():.3f}]" for k in ("discrete", "continuous"))
                + f"; Thm 2's isotropic enhancement 1 + κ/S = "
                f"{1 + label_noise_kappa(A, lr=lr, batch_size=S) / S:.3f}, absent from both",
            ),
        ]
        metrics["eig_sigma_highdim"] = {
            "sim": ev.tolist(),
            "se": se.tolist(),
            **{k: v.tolist() for k, v in pred.items()},
        }
        k = np.arange(1, D + 1)
        ax.errorbar(k, ev, yerr=Z * se, fmt="o", ms=4, label="simulation (±4 SE)")
        for (name, v), st in zip(pred.items(), ("-", "--", ":")):
            ax.plot(k, v, st, label={"exact": "exact (eq. 3 + Lemma 1)"}.get(name, f"Hessian approx., {name}"))
        h = config["hess_hd"]
        ax.set(
            yscale="log",
            xlabel="eigenvalue rank",
            ylabel="eigenvalue of Σ",
            title=f"(e) D={D}, Hessian eig. {h[0]:g}…{h[1]:g}, λ={lr}, S={S}",
        )
        ax.legend(fontsize="x-small")
        return checks
