"""Minibatch-noise paper (002), Fig. 1.

Left/middle (Sec. 6.1 after Thm 6): a two-layer tanh network 784-d-10 (cross-entropy, PyTorch default
init) trained on the embedded digits by SGD or Adam; the variance of the minibatch training loss over the
first epoch, against the width d, at a fixed learning rate and at one rescaled ∝ 1/d
(lr(d) = lr·d_ref/d). Thm 6: stability needs Σ_i 1/(2/(λa_i) − 1 + 1/S) < S, and the Hessian's trace
grows with d, so the stable λ shrinks ∝ 1/d.

Right (Sec. 4.3, Cor. 1): multinomial logistic regression trained by SGD at a large learning rate
(λ = 1.5, S = 32) with weight decay γ ∈ a grid that includes negative values; the test accuracy against γ.
Cor. 1 (eqs. 161–168): when the learning rate over-regularises, the best γ is negative.

The trainers live in :mod:`noiseprobe.minibatch.nets`. Replicas: the replica index is the seed index
s = 0..n_seeds−1. The initial weights come from (config seed, s, stream 10 + width), the batch order from
(config seed, s, stream 1 left / 2 right), so both optimisers, both learning-rate rules and all widths
(right: all γ) share a seed's batch order — common random numbers, which makes their comparisons paired —
and nothing depends on chunking. A replica that diverges (the trainers' divergence rule,
:mod:`noiseprobe.minibatch.nets`) is recorded as diverged with its step (its loss variance is +inf, its test
accuracy counts as 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch

from noiseprobe.core.checks import Check
from noiseprobe.core.config import ExperimentConfig, param
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.experiment import Chunk, Experiment, RunCost
from noiseprobe.core.seeding import torch_generator
from noiseprobe.core.stats import mean_se
from noiseprobe.experiments._data import check_at_most, embedded_name, embedded_train_size
from noiseprobe.minibatch.nets import digits, epoch_batches, loss_diverged_step, train_logistic, train_tanh_net

_INIT_STREAM, _BATCH_STREAM_LEFT, _BATCH_STREAM_RIGHT = 10, 1, 2
#: check thresholds: "grows" = widest/narrowest median variance ≥ 2; "flat" = max/min over widths ≤ 3
GROWTH_MIN, FLAT_MAX = 2.0, 3.0
#: the one-sided bootstrap level of "the best γ is negative" (the 95% CI lies below 0)
BOOT_LEVEL, N_BOOT = 0.025, 2000
#: embedded digits: training / test set sizes and input dimension (for the memory estimate)
_N_TRAIN, _N_TEST, _D_IN, _K = 5000, 1000, 784, 10


@dataclass(frozen=True, kw_only=True)
class _Common(ExperimentConfig):
    seed: int = param(2022, lo=0, hi=2**63 - 1)
    dataset: Literal["default", "mnist5k", "digits"] = param("default")
    inputs: Literal["unit", "standardised"] = param("standardised", help="pixels / max, or standardised")
    n_seeds: int = param(lo=2, hi=1000, help="replicas (seeds) per point")


@dataclass(frozen=True, kw_only=True)
class Fig1LeftConfig(_Common):
    widths: list[int] = param(lo=1, hi=100_000, min_len=1, help="hidden widths d (distinct)")
    d_ref: int = param(lo=1, help="width at which the rescaled lr equals the fixed one")
    sgd_lr: float = param(lo=0.0, lo_open=True)
    adam_lr: float = param(lo=0.0, lo_open=True)
    batch_size: int = param(lo=1, hi=1000)
    epochs: int = param(lo=1, hi=100)

    size_fields: ClassVar[tuple[str, ...]] = ("n_seeds", "widths", "batch_size", "epochs")

    def check(self) -> None:
        if len(set(self.widths)) != len(self.widths):
            raise ConfigError("widths", self.widths, "a list of distinct integers >= 1")


@dataclass(frozen=True, kw_only=True)
class Fig1RightConfig(_Common):
    gammas: list[float] = param(min_len=2, help="weight decays γ (may be negative)")
    right_lr: float = param(lo=0.0, lo_open=True)
    right_batch_size: int = param(lo=1, hi=1000)
    right_epochs: int = param(lo=1, hi=1000)

    size_fields: ClassVar[tuple[str, ...]] = ("n_seeds", "right_batch_size", "right_epochs")


@dataclass(frozen=True, kw_only=True)
class Fig1Config(Fig1LeftConfig, Fig1RightConfig):
    size_fields: ClassVar[tuple[str, ...]] = (
        "n_seeds",
        "widths",
        "batch_size",
        "epochs",
        "right_batch_size",
        "right_epochs",
    )


_COMMON = {"seed": 2022, "dataset": "default", "inputs": "standardised"}
_LEFT = {
    "quick": {
        "n_seeds": 3,
        "widths": [25, 100, 400, 800],
        "d_ref": 50,
        "sgd_lr": 0.5,
        "adam_lr": 0.01,
        "batch_size": 32,
        "epochs": 1,
    },
    "full": {
        "n_seeds": 8,
        "widths": [25, 50, 100, 200, 400, 800, 1600],
        "d_ref": 50,
        "sgd_lr": 0.5,
        "adam_lr": 0.01,
        "batch_size": 32,
        "epochs": 1,
    },
}
_RIGHT = {
    "quick": {
        "n_seeds": 4,
        "gammas": [-0.02, -0.01, -0.005, -0.002, 0.0, 0.002, 0.005, 0.01],
        "right_lr": 1.5,
        "right_batch_size": 32,
        "right_epochs": 3,
    },
    "full": {
        "n_seeds": 16,
        "gammas": [
            -0.03,
            -0.02,
            -0.015,
            -0.01,
            -0.007,
            -0.005,
            -0.003,
            -0.002,
            -0.001,
            0.0,
            0.001,
            0.002,
            0.005,
            0.01,
            0.02,
        ],
        "right_lr": 1.5,
        "right_batch_size": 32,
        "right_epochs": 10,
    },
}


def _preset(name: str, panels: tuple[str, ...]) -> dict[str, Any]:
    cfg = dict(_COMMON)
    for p in panels:
        cfg.update((_LEFT if p == "left" else _RIGHT)[name])
    if len(panels) == 2:
        cfg["n_seeds"] = max(_LEFT[name]["n_seeds"], _RIGHT[name]["n_seeds"])
    return cfg


class _Fig1Base(Experiment):
    panels: tuple[str, ...] = ("left", "right")
    tables = ("curves",)

    def chunks(self, config: Any) -> list[Chunk]:
        """One chunk per (optimiser, width), largest first (Adam, widest: the chunk :meth:`estimate`
        describes, and the longest, so workers finish together), then the right panel."""
        out = []
        if "left" in self.panels:
            out += [
                Chunk(f"left-{opt}-d{w:05d}", {"panel": "left", "optimizer": opt, "width": w})
                for opt in ("adam", "sgd")
                for w in sorted(config["widths"], reverse=True)
            ]
        if "right" in self.panels:
            out.append(Chunk("right", {"panel": "right"}))
        return out

    def check_data(self, config: Any) -> None:
        """The dataset is installed, and each batch size is at most its training split."""
        n = embedded_train_size(config["dataset"])
        for field in ("batch_size", "right_batch_size"):
            if hasattr(config, field):
                check_at_most(field, config[field], n, embedded_name(config["dataset"]))

    def estimate(self, config: Any) -> RunCost:
        """Peak of one worker: the data (float32, plus the loader's working copies) and the largest chunk —
        left: 2·n_seeds replica networks; parameters, gradients, the stacked copy, Adam's two moments and its
        foreach temporaries come to 14 copies of the parameters (measured: 10 for SGD); activations
        R·S·(784 + 4d) three times; right: the replica batch indices and the per-replica evaluation logits."""
        f4 = 4
        data = (_N_TRAIN + _N_TEST) * _D_IN * f4 * 3
        peak = 0
        drivers: list[str] = ["n_seeds"]
        if "left" in self.panels:
            r, s, d = 2 * config["n_seeds"], config["batch_size"], max(config["widths"])
            steps = config["epochs"] * (_N_TRAIN // s)
            params = r * (_D_IN * d + d + d * _K + _K) * f4
            acts = r * s * (_D_IN + 4 * d) * f4
            peak = max(peak, 14 * params + 3 * acts + r * steps * (s * 8 + f4 * 4))
            drivers += ["widths", "batch_size", "epochs"]
        if "right" in self.panels:
            r, s = len(config["gammas"]) * config["n_seeds"], config["right_batch_size"]
            steps = config["right_epochs"] * (_N_TRAIN // s)
            peak = max(peak, r * steps * s * 8 * 2 + 3 * r * s * _D_IN * f4 + 4 * r * _N_TRAIN * _K * f4)
            drivers += ["gammas", "right_batch_size", "right_epochs"]
        return RunCost(peak_bytes=int(data + peak + 20e6), drivers=tuple(drivers))

    def run_chunk(self, config: Any, chunk: Chunk) -> dict[str, pd.DataFrame]:
        xtr, ytr, xte, yte = digits(config["dataset"], config["inputs"], config["seed"])
        seeds = list(range(config["n_seeds"]))
        if chunk.spec["panel"] == "right":
            gam = np.asarray(config["gammas"], dtype=np.float64)
            batches = epoch_batches(
                config["seed"],
                seeds,
                n=len(ytr),
                batch_size=config["right_batch_size"],
                epochs=config["right_epochs"],
                stream=_BATCH_STREAM_RIGHT,
            )
            res = train_logistic(
                xtr,
                ytr,
                xte,
                yte,
                lr=config["right_lr"],
                gammas=torch.from_numpy(np.repeat(gam, len(seeds))),
                batches=batches.repeat(len(gam), 1, 1),
            )
            df = pd.DataFrame(
                {"panel": "right", "gamma": np.repeat(gam, len(seeds)), "seed": np.tile(seeds, len(gam)), **res}
            )
            df["diverged"] = df["diverged_step"] >= 0
            return {"results": df}
        opt, width = chunk.spec["optimizer"], chunk.spec["width"]
        base = config["sgd_lr"] if opt == "sgd" else config["adam_lr"]
        rules = {"fixed": base, "rescaled": base * config["d_ref"] / width}
        gens = [torch_generator(config["seed"], s, _INIT_STREAM + width) for s in seeds]
        batches = epoch_batches(
            config["seed"],
            seeds,
            n=len(ytr),
            batch_size=config["batch_size"],
            epochs=config["epochs"],
            stream=_BATCH_STREAM_LEFT,
        )
        lrs = torch.tensor([rules[r] for r in rules for _ in seeds])
        losses = train_tanh_net(
            xtr,
            ytr,
            width=width,
            lrs=lrs,
            optimizer=opt,
            init_gens=gens * len(rules),
            batches=batches.repeat(len(rules), 1, 1),
        )
        first = losses[:, : len(ytr) // config["batch_size"]].double()  # the first epoch
        div_step = loss_diverged_step(losses)
        finite = torch.from_numpy(div_step < 0)
        labels = {
            "panel": "left",
            "optimizer": opt,
            "width": width,
            "lr_rule": np.repeat(list(rules), len(seeds)),
            "seed": np.tile(seeds, len(rules)),
        }
        results = pd.DataFrame(
            {
                **labels,
                "lr": lrs.double().numpy(),
                "loss_var": torch.where(finite, first.var(1), torch.inf).numpy(),
                "loss_mean": first.mean(1).numpy(),
                "final_loss": losses[:, -10:].mean(1).numpy(),
                "diverged": (~finite).numpy(),
                "diverged_step": div_step,
            }
        )
        steps = losses.shape[1]
        curves = pd.DataFrame({k: np.repeat(v, steps) if isinstance(v, np.ndarray) else v for k, v in labels.items()})
        curves["step"], curves["loss"] = np.tile(np.arange(steps), len(lrs)), losses.reshape(-1).numpy()
        return {"results": results, "curves": curves}

    def analyse(self, config: Any, tables: dict[str, pd.DataFrame], out: Path) -> tuple[dict[str, Any], list[Check]]:
        res = tables["results"]
        metrics: dict[str, Any] = {}
        checks: list[Check] = []
        if "left" in self.panels:
            m, c = _analyse_left(config, res[res["panel"] == "left"], out)
            metrics.update(m)
            checks += c
        if "right" in self.panels:
            m, c = _analyse_right(config, res[res["panel"] == "right"], out)
            metrics.update(m)
            checks += c
        return metrics, checks


def _analyse_left(config: Any, res: pd.DataFrame, out: Path) -> tuple[dict[str, Any], list[Check]]:
    """Median (over seeds) first-epoch loss variance per optimiser, width and lr rule; growth and flatness
    checks (a diverged replica has variance +inf, so a median over mostly diverged seeds is not measurable)."""
    import matplotlib.ticker

    from noiseprobe.core.plotting import new_figure, savefig

    res = res.astype({"width": int})
    med = res.groupby(["optimizer", "lr_rule", "width"])["loss_var"].median()
    metrics: dict[str, Any] = {"diverged_left": int(res["diverged"].sum())}
    checks = []
    for opt, panel in (("sgd", "left"), ("adam", "middle")):
        fig, ax = new_figure()
        for rule, mark in (("fixed", "o-"), ("rescaled", "s--")):
            s = med.loc[(opt, rule)]
            lr_note = f"lr = {config[opt + '_lr']}" + (f"·{config['d_ref']}/d" if rule == "rescaled" else "")
            ok = np.isfinite(s.to_numpy())  # a median over diverged seeds is +inf: not drawn
            ax.plot(s.index[ok], s.to_numpy()[ok], mark, label=lr_note)
            metrics[f"loss_var_{opt}_{rule}"] = {int(w): float(v) for w, v in s.items()}
        ax.set(
            xscale="log",
            yscale="log" if np.isfinite(med.loc[opt].to_numpy()).any() else "linear",
            xlabel="hidden width d",
            ylabel="1st-epoch train-loss variance (seed median)",
            title=f"Fig. 1-{panel}: tanh net, {opt.upper()}",
        )
        ax.set_xticks(s.index.to_numpy(), [str(w) for w in s.index], minor=False)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.legend()
        savefig(fig, out / f"fig1_{panel}_{opt}.png")
        fixed, resc = med.loc[(opt, "fixed")], med.loc[(opt, "rescaled")]
        with np.errstate(invalid="ignore", divide="ignore"):
            growth = float(fixed.iloc[-1] / fixed.iloc[0])
            flat = float(resc.max() / resc.min())
        note = "ratio of seed-median first-epoch loss variances"
        checks.append(
            Check.greater(
                f"{opt}-variance-grows-with-width",
                f"{opt.upper()} at fixed lr: the first-epoch loss variance grows with width (d = {fixed.index[0]} -> "
                f"{fixed.index[-1]}; paper: {'explodes for d >= 200' if opt == 'sgd' else 'as for SGD'})",
                growth,
                GROWTH_MIN,
                detail=note,
            )
        )
        checks.append(
            Check.less(
                f"{opt}-variance-flat-when-lr-rescaled",
                f"{opt.upper()} with lr ∝ 1/width: the loss variance stays roughly constant (max/min over widths)",
                flat,
                FLAT_MAX,
                detail=note,
            )
        )
    return metrics, checks


def _analyse_right(config: Any, res: pd.DataFrame, out: Path) -> tuple[dict[str, Any], list[Check]]:
    """Best weight decay by mean test accuracy; a bootstrap over seeds (paired across γ) gives its 95% CI and
    the share of resamples whose best γ is >= 0 (the one-sided bootstrap p-value of "γ* < 0")."""
    from noiseprobe.core.plotting import new_figure, savefig

    acc = res.pivot(index="seed", columns="gamma", values="test_acc").fillna(0.0)  # a diverged replica scores 0
    loss = res.pivot(index="seed", columns="gamma", values="test_loss")
    gam, a = acc.columns.to_numpy(), acc.to_numpy()
    mean, se = mean_se(a)
    best = int(np.argmax(mean))
    rng = np.random.default_rng(config["seed"])
    boot = gam[np.argmax(a[rng.integers(0, len(a), (N_BOOT, len(a)))].mean(1), axis=1)]
    lo, hi = (float(q) for q in np.quantile(boot, [0.025, 0.975]))
    p_nonneg = float(np.mean(boot >= 0))
    metrics: dict[str, Any] = {
        "gamma_star": float(gam[best]),
        "gamma_star_ci95": [lo, hi],
        "test_acc_at_gamma_star": float(mean[best]),
        "test_acc_by_gamma": {float(g): float(v) for g, v in zip(gam, mean)},
        "gamma_star_test_loss": float(gam[np.argmin(loss.median(axis=0).to_numpy())]),
        "gamma_star_bootstrap_p_nonnegative": p_nonneg,
        "diverged_right": int(res["diverged"].sum()),
    }
    all_diverged = bool(res["diverged"].all())
    claim = (
        f"logistic regression, lr = {config['right_lr']}, S = {config['right_batch_size']}: the best weight decay "
        "(test accuracy) is negative: share of bootstrap resamples (over seeds) whose best γ is >= 0"
    )
    if all_diverged:
        checks = [Check.not_measurable("best-weight-decay-negative", claim, "every replica diverged")]
    else:
        checks = [
            Check.less(
                "best-weight-decay-negative",
                claim,
                p_nonneg,
                BOOT_LEVEL,
                detail=f"γ* = {gam[best]:g}, bootstrap CI95 = [{lo:g}, {hi:g}], {N_BOOT} resamples",
            )
        ]
    if 0.0 in gam:
        diff = a[:, best] - a[:, list(gam).index(0.0)]
        metrics["test_acc_gain_over_gamma0"] = [float(v) for v in mean_se(diff)]
    fig, ax = new_figure()
    ax.errorbar(gam, mean, yerr=se, fmt="o-", label="test accuracy (mean ± SE over seeds)")
    ax.axvspan(lo, hi, color="C1", alpha=0.2, label="95% CI of the best γ")
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set(
        xlabel="weight decay γ",
        ylabel="test accuracy",
        title=f"Fig. 1-right: logistic regression, lr = {config['right_lr']}",
    )
    ax.legend()
    savefig(fig, out / "fig1_right.png")
    return metrics, checks


class Fig1(_Fig1Base):
    id = "mbn-fig1"
    title = "Minibatch-noise Fig. 1: loss variance vs width (SGD, Adam); negative optimal weight decay"
    Config = Fig1Config
    presets = {p: _preset(p, ("left", "right")) for p in ("quick", "full")}
    diverging = {"sgd_lr": 1e36, "adam_lr": 1e36, "right_lr": 1e36}


class Fig1Left(_Fig1Base):
    id = "mbn-fig1-left"
    title = "Minibatch-noise Fig. 1 left/middle: first-epoch loss variance vs width, fixed vs 1/width lr"
    panels = ("left",)
    Config = Fig1LeftConfig
    presets = {p: _preset(p, ("left",)) for p in ("quick", "full")}
    diverging = {"sgd_lr": 1e36, "adam_lr": 1e36}


class Fig1Right(_Fig1Base):
    id = "mbn-fig1-right"
    title = "Minibatch-noise Fig. 1 right: logistic regression at lr 1.5, the best weight decay is negative"
    panels = ("right",)
    Config = Fig1RightConfig
    presets = {p: _preset(p, ("right",)) for p in ("quick", "full")}
    diverging = {"right_lr": 1e36}
