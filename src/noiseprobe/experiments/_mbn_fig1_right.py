"""Fig. 1 right (minibatch noise): multinomial logistic regression by SGD at a large learning rate over a grid
of weight decays γ (negative ones included); the best γ by test accuracy, with a bootstrap over seeds. The
measurement, the bootstrap summary, its check and its figure; :mod:`noiseprobe.experiments.mbn_fig1`
composes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from noiseprobe.core.checks import Check
from noiseprobe.core.stats import mean_se
from noiseprobe.minibatch.nets import digits, epoch_batches, train_logistic

if TYPE_CHECKING:
    from pathlib import Path

    from noiseprobe.experiments._mbn_fig1_config import Fig1RightConfig

_BATCH_STREAM = 2
#: the one-sided bootstrap level of "the best γ is negative" (the 95% CI lies below 0)
BOOT_LEVEL, N_BOOT = 0.025, 2000


def measure(config: Fig1RightConfig) -> dict[str, pd.DataFrame]:
    """Train every (γ, seed) replica at once: final test accuracy and loss, and the divergence step."""
    xtr, ytr, xte, yte = digits(config.dataset, config.inputs, config.seed)
    seeds = list(range(config.n_seeds))
    gam = np.asarray(config.gammas, dtype=np.float64)
    batches = epoch_batches(
        config.seed,
        seeds,
        n=len(ytr),
        batch_size=config.right_batch_size,
        epochs=config.right_epochs,
        stream=_BATCH_STREAM,
    )
    res = train_logistic(
        xtr,
        ytr,
        xte,
        yte,
        lr=config.right_lr,
        gammas=torch.from_numpy(np.repeat(gam, len(seeds))),
        batches=batches.repeat(len(gam), 1, 1),
    )
    df = pd.DataFrame({"panel": "right", "gamma": np.repeat(gam, len(seeds)), "seed": np.tile(seeds, len(gam)), **res})
    df["diverged"] = df["diverged_step"] >= 0
    return {"results": df}


@dataclass(frozen=True)
class BestDecay:
    """Mean test accuracy (± SE over seeds) per γ, the best γ, and a bootstrap over seeds (paired across γ):
    its 95% CI and the share of resamples whose best γ is >= 0 (the one-sided p-value of "γ* < 0")."""

    gammas: np.ndarray
    acc: np.ndarray  # (seeds, γ); a diverged replica scores 0
    mean: np.ndarray
    se: np.ndarray
    best: int
    ci95: tuple[float, float]
    p_nonneg: float
    gamma_star_test_loss: float
    diverged: int
    all_diverged: bool


def best_decay(config: Fig1RightConfig, res: pd.DataFrame) -> BestDecay:
    res = res[res["panel"] == "right"]
    acc = res.pivot(index="seed", columns="gamma", values="test_acc").fillna(0.0)  # a diverged replica scores 0
    loss = res.pivot(index="seed", columns="gamma", values="test_loss")
    gam, a = acc.columns.to_numpy(), acc.to_numpy()
    mean, se = mean_se(a)
    best = int(np.argmax(mean))
    rng = np.random.default_rng(config.seed)
    boot = gam[np.argmax(a[rng.integers(0, len(a), (N_BOOT, len(a)))].mean(1), axis=1)]
    lo, hi = (float(q) for q in np.quantile(boot, [0.025, 0.975]))
    return BestDecay(
        gammas=gam,
        acc=a,
        mean=mean,
        se=se,
        best=best,
        ci95=(lo, hi),
        p_nonneg=float(np.mean(boot >= 0)),
        gamma_star_test_loss=float(gam[np.argmin(loss.median(axis=0).to_numpy())]),
        diverged=int(res["diverged"].sum()),
        all_diverged=bool(res["diverged"].all()),
    )


def checks(config: Fig1RightConfig, bd: BestDecay) -> list[Check]:
    claim = (
        f"logistic regression, lr = {config.right_lr}, S = {config.right_batch_size}: the best weight decay "
        "(test accuracy) is negative: share of bootstrap resamples (over seeds) whose best γ is >= 0"
    )
    if bd.all_diverged:
        return [Check.not_measurable("best-weight-decay-negative", claim, "every replica diverged")]
    lo, hi = bd.ci95
    return [
        Check.less(
            "best-weight-decay-negative",
            claim,
            bd.p_nonneg,
            BOOT_LEVEL,
            detail=f"γ* = {bd.gammas[bd.best]:g}, bootstrap CI95 = [{lo:g}, {hi:g}], {N_BOOT} resamples",
        )
    ]


def metrics(bd: BestDecay) -> dict[str, Any]:
    out: dict[str, Any] = {
        "gamma_star": float(bd.gammas[bd.best]),
        "gamma_star_ci95": list(bd.ci95),
        "test_acc_at_gamma_star": float(bd.mean[bd.best]),
        "test_acc_by_gamma": {float(g): float(v) for g, v in zip(bd.gammas, bd.mean)},
        "gamma_star_test_loss": bd.gamma_star_test_loss,
        "gamma_star_bootstrap_p_nonnegative": bd.p_nonneg,
        "diverged_right": bd.diverged,
    }
    if 0.0 in bd.gammas:
        diff = bd.acc[:, bd.best] - bd.acc[:, list(bd.gammas).index(0.0)]
        out["test_acc_gain_over_gamma0"] = [float(v) for v in mean_se(diff)]
    return out


def plot(config: Fig1RightConfig, bd: BestDecay, out: Path) -> None:
    """fig1_right.png: mean test accuracy against γ with the bootstrap CI of the best γ."""
    from noiseprobe.core.plotting import new_figure, savefig

    fig, ax = new_figure()
    ax.errorbar(bd.gammas, bd.mean, yerr=bd.se, fmt="o-", label="test accuracy (mean ± SE over seeds)")
    ax.axvspan(*bd.ci95, color="C1", alpha=0.2, label="95% CI of the best γ")
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set(
        xlabel="weight decay γ",
        ylabel="test accuracy",
        title=f"Fig. 1-right: logistic regression, lr = {config.right_lr}",
    )
    ax.legend()
    savefig(fig, out / "fig1_right.png")
