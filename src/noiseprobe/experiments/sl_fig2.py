"""``sl-fig2``: noisy GD with ``L̂ = L(w + η)`` in detail — a fast approach to Γ on the gradient-flow clock
αk, then the slow drift on the clock ``t = ασ²k`` (Theorem A, eq. fthA:GF, ``∂_tW = −P∇Reg``, Reg = ½ΔL);
the flow is overlaid from the first iteration at which the chains came close to Γ; the chains' mean error
against the limit is measured on a log grid of α (σ² ∝ α) and should shrink ∝ α (docs/theory/singular_limits.md §9.2).
Shared setting: :mod:`noiseprobe.experiments.sl_common`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from noiseprobe.core.checks import Check
from noiseprobe.core.experiment import Chunk, Experiment, RunCost
from noiseprobe.core.stats import group_mean_se, loglog_slope, worst_deviation
from noiseprobe.experiments import _sl_fig2_plot
from noiseprobe.experiments._sl_fig2_config import Fig2Config
from noiseprobe.experiments.sl_common import (
    W0_TOP,
    alive,
    chain_chunks,
    chains_of,
    chunk_estimate,
    chunk_sizes,
    n_diverged,
    ngd_seconds,
    simulate,
    steps_to,
)
from noiseprobe.limits import noises
from noiseprobe.limits.circle import argmin_on_circle, flow_angle, gradient_flow_time
from noiseprobe.limits.losses import circle_loss
from noiseprobe.limits.regulariser import regulariser


def _fast_window(config: Fig2Config, lr: float) -> range:
    """Every step of the fast approach, k ≤ t_fast/α."""
    return range(math.ceil(config.t_fast / lr) + 1)


class Fig2(Experiment):
    """Fast approach, slow drift along Γ; Theorem A flow overlaid; error against the limit vs α."""

    id = "sl-fig2"
    title = "Singular limits Fig. 2: fast approach to Γ, slow drift along it, limiting flow overlaid"
    Config = Fig2Config
    presets = {
        "quick": {
            "seed": 0,
            "lrs": [0.2, 0.1, 0.05],
            "sigma2_over_lr": 0.1,
            "main_lr": 0.1,
            "chains": 96,
            "per_chunk": 96,
            "t_end": 4.0,
            "t_check": [0.5, 1.0, 2.0, 3.0, 4.0],
            "t_fast": 5.0,
            "close": 0.05,
            "records": 160,
            "w0": W0_TOP,
            "flow_dt": 0.1,
        },
        "full": {
            "seed": 0,
            "lrs": [0.1, 0.05, 0.025],
            "sigma2_over_lr": 0.1,
            "main_lr": 0.1,
            "chains": 2000,
            "per_chunk": 500,
            "t_end": 6.0,
            "t_check": [0.5, 1.0, 2.0, 4.0, 6.0],
            "t_fast": 5.0,
            "close": 0.05,
            "records": 200,
            "w0": W0_TOP,
            "flow_dt": 0.05,
        },
    }
    diverging = {"lrs": [5.0, 4.0], "main_lr": 5.0, "sigma2_over_lr": 0.001}

    def estimate(self, config: Fig2Config) -> RunCost:
        lr = min(config.lrs)  # the smallest α keeps the most steps
        steps = steps_to(config.t_end, lr * lr * config.sigma2_over_lr)
        seconds = ngd_seconds(
            [
                (n, steps_to(config.t_end, a * a * config.sigma2_over_lr))
                for a in config.lrs
                for n in chunk_sizes(config)
            ]
        )
        return chunk_estimate(
            min(config.chains, config.per_chunk),
            steps,
            config.records,
            len(_fast_window(config, lr)) + len(config.t_check),
            2,
            ("per_chunk", "records", "t_fast"),
            seconds,
        )

    def chunks(self, config: Fig2Config) -> list[Chunk]:
        return [
            Chunk(f"lr{lr:g}-{c.key}", {**c.spec, "lr": lr}) for lr in config.lrs for c in chain_chunks(config, ["ngd"])
        ]

    def measure(self, config: Fig2Config, chunk: Chunk) -> pd.DataFrame:
        lr = chunk.spec["lr"]
        s2 = config.sigma2_over_lr * lr
        check = [steps_to(t, lr * s2) for t in config.t_check]
        return simulate(
            noises.perturbed(circle_loss, 2),
            config.w0,
            lr=lr,
            sigma2=s2,
            steps=steps_to(config.t_end, lr * s2),
            seed=config.seed,
            chains=chains_of(chunk),
            records=config.records,
            record_at=[*_fast_window(config, lr), *check],
        )

    def derive(self, config: Fig2Config, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """Per α (``grid``): the worst deviation of the chains' mean θ from Theorem A's flow over
        ``t_check`` and the first step within ``close`` of Γ; and (``fit``, one row) the log-log slope of
        the deviation in α, the minimiser of Reg on Γ and the gradient-flow time to ``close``."""
        df = tables["results"]
        df = df.assign(dist=np.abs(np.hypot(df["w0"], df["w1"]) - 1.0))
        noise = noises.perturbed(circle_loss, 2)
        t_flow, th_flow = flow_angle(noise, config.w0, config.t_end, dt=config.flow_dt)
        theta_min = argmin_on_circle(lambda w: regulariser(noise, w), th_flow[-1])
        rows = []
        for lr in sorted(config.lrs):
            sub = df[np.isclose(df["lr"], lr)]
            s2 = config.sigma2_over_lr * lr
            stats = group_mean_se(sub, "theta", "step", keep=alive(sub))
            steps = [steps_to(t, lr * s2) for t in config.t_check]
            err, se, errs = worst_deviation(
                stats.loc[steps, "mean"], stats.loc[steps, "se"], np.interp(lr * s2 * np.array(steps), t_flow, th_flow)
            )
            med = sub[alive(sub)].groupby("step")["dist"].median()
            k_close = int(med.index[np.argmax(med.to_numpy() < config.close)]) if (med < config.close).any() else -1
            rows.append(
                {
                    "lr": lr,
                    "sigma2": s2,
                    "max_err": err,
                    "se": se,
                    "errors": errs,
                    "k_close": k_close,
                    "gf_time_close": lr * k_close if k_close >= 0 else math.nan,
                    "t_close": lr * s2 * k_close if k_close >= 0 else math.nan,
                    "diverged": n_diverged(sub),
                }
            )
        grid = pd.DataFrame(rows)
        slope, slope_se = loglog_slope(grid["lr"], grid["max_err"], grid["se"])
        fit = {
            "slope": slope,
            "slope_se": slope_se,
            "theta_argmin_reg": theta_min,
            "gradient_flow_time_close": gradient_flow_time(config.w0, config.close),
        }
        return {"grid": grid, "fit": pd.DataFrame([fit])}

    def checks(self, config: Fig2Config, tables: dict[str, pd.DataFrame]) -> list[Check]:
        grid, fit = tables["grid"], tables["fit"].iloc[0]
        slope, slope_se, t_gf = float(fit.slope), float(fit.slope_se), float(fit.gradient_flow_time_close)
        small = grid.iloc[0]
        fast_claim = (
            f"the fast phase is gradient descent: α·k_close at α = {small.lr:g} ≈ the gradient-flow time "
            f"to reach distance {config.close:g} of Γ (up to O(α))"
        )
        fast_detail = (
            "α·k_close = "
            + ", ".join(f"{v:.2f}" for v in grid["gf_time_close"])
            + "; on the slow clock t = ασ²k_close = "
            + ", ".join(f"{v:.3f}" for v in grid["t_close"])
        )
        checks = [
            Check.close(
                "error-first-order",
                "the chains' mean along Γ converges to Theorem A's flow at first "
                "order in α (log-log slope of the max error over t_check vs α)",
                slope,
                1.0,
                atol=0.3,
                se=slope_se,
                detail="max errors " + ", ".join(f"α={r.lr:g}: {r.max_err:.4f}±{r.se:.4f}" for r in grid.itertuples()),
            ),
            Check.less(
                "error-order-lr",
                f"error along Γ at the smallest α = {small.lr:g} is O(α) (docs/theory/singular_limits.md §9.2: "
                "≈ 0.5 α; max |mean θ − θ_A| over t_check, rad)",
                float(small.max_err),
                0.6 * small.lr,
                se=float(small.se),
            ),
            Check.close(
                "fast-phase-gradient-flow",
                fast_claim,
                float(small.gf_time_close),
                t_gf,
                atol=2 * small.lr * (t_gf + 1),
                detail=fast_detail,
            )
            if math.isfinite(t_gf)
            else Check.not_measurable(
                "fast-phase-gradient-flow",
                fast_claim,
                f"the gradient flow from w0 does not come within {config.close:g} of Γ",
            ),
        ]
        return checks

    def metrics(self, config: Fig2Config, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        grid, fit = tables["grid"], tables["fit"].iloc[0]
        return {
            **{k: float(fit[k]) for k in ("slope", "slope_se", "theta_argmin_reg", "gradient_flow_time_close")},
            "grid": grid.drop(columns="errors").to_dict(orient="records"),
            "errors_main": grid.loc[np.isclose(grid["lr"], config.main_lr), "errors"].iloc[0],
        }

    def plot(self, config: Fig2Config, tables: dict[str, pd.DataFrame], out: Path) -> None:
        _sl_fig2_plot.plot(config, tables, out)
