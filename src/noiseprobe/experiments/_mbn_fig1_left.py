"""Fig. 1 left/middle (minibatch noise): the first-epoch training-loss variance of a two-layer tanh network
against its width, for SGD and Adam, at a fixed learning rate and one rescaled ∝ 1/d. The measurement of one
(optimiser, width) chunk, the seed-median summary, its checks and its figures;
:mod:`noiseprobe.experiments.mbn_fig1` composes them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from noiseprobe.core.checks import Check
from noiseprobe.core.seeding import torch_generator
from noiseprobe.minibatch.nets import digits, epoch_batches, loss_diverged_step, train_tanh_net

if TYPE_CHECKING:
    from pathlib import Path

    from noiseprobe.experiments._mbn_fig1_config import Fig1LeftConfig

_INIT_STREAM, _BATCH_STREAM = 10, 1
#: check thresholds: "grows" = widest/narrowest median variance ≥ 2; "flat" = max/min over widths ≤ 3
GROWTH_MIN, FLAT_MAX = 2.0, 3.0
PANELS = (("sgd", "left"), ("adam", "middle"))


def measure(config: Fig1LeftConfig, opt: str, width: int) -> dict[str, pd.DataFrame]:
    """Train the 2·n_seeds replicas of one (optimiser, width): per replica the first-epoch loss variance and
    mean, the final loss and the divergence step (``results``), and every step's loss (``curves``)."""
    xtr, ytr, _, _ = digits(config.dataset, config.inputs, config.seed)
    seeds = list(range(config.n_seeds))
    base = config.sgd_lr if opt == "sgd" else config.adam_lr
    rules = {"fixed": base, "rescaled": base * config.d_ref / width}
    gens = [torch_generator(config.seed, s, _INIT_STREAM + width) for s in seeds]
    batches = epoch_batches(
        config.seed, seeds, n=len(ytr), batch_size=config.batch_size, epochs=config.epochs, stream=_BATCH_STREAM
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
    first = losses[:, : len(ytr) // config.batch_size].double()  # the first epoch
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


def medians(res: pd.DataFrame) -> pd.Series:
    """Seed-median first-epoch loss variance per (optimiser, lr rule, width); a diverged replica has variance
    +inf, so a median over mostly diverged seeds is +inf (not measurable)."""
    left = res[res["panel"] == "left"].astype({"width": int})
    out: pd.Series = left.groupby(["optimizer", "lr_rule", "width"])["loss_var"].median()
    return out


def checks(res: pd.DataFrame) -> list[Check]:
    med = medians(res)
    out = []
    for opt, _ in PANELS:
        fixed, resc = med.loc[(opt, "fixed")], med.loc[(opt, "rescaled")]
        with np.errstate(invalid="ignore", divide="ignore"):
            growth = float(fixed.iloc[-1] / fixed.iloc[0])
            flat = float(resc.max() / resc.min())
        note = "ratio of seed-median first-epoch loss variances"
        out.append(
            Check.greater(
                f"{opt}-variance-grows-with-width",
                f"{opt.upper()} at fixed lr: the first-epoch loss variance grows with width (d = {fixed.index[0]} -> "
                f"{fixed.index[-1]}; paper: {'explodes for d >= 200' if opt == 'sgd' else 'as for SGD'})",
                growth,
                GROWTH_MIN,
                detail=note,
            )
        )
        out.append(
            Check.less(
                f"{opt}-variance-flat-when-lr-rescaled",
                f"{opt.upper()} with lr ∝ 1/width: the loss variance stays roughly constant (max/min over widths)",
                flat,
                FLAT_MAX,
                detail=note,
            )
        )
    return out


def metrics(res: pd.DataFrame) -> dict[str, Any]:
    med = medians(res)
    out: dict[str, Any] = {"diverged_left": int(res[res["panel"] == "left"]["diverged"].sum())}
    for opt, _ in PANELS:
        for rule in ("fixed", "rescaled"):
            out[f"loss_var_{opt}_{rule}"] = {int(w): float(v) for w, v in med.loc[(opt, rule)].items()}
    return out


def plot(config: Fig1LeftConfig, res: pd.DataFrame, out: Path) -> None:
    """fig1_left_sgd.png and fig1_middle_adam.png: median variance against width, both lr rules."""
    import matplotlib.ticker

    from noiseprobe.core.plotting import new_figure, savefig

    med = medians(res)
    for opt, panel in PANELS:
        fig, ax = new_figure()
        for rule, mark in (("fixed", "o-"), ("rescaled", "s--")):
            s = med.loc[(opt, rule)]
            base = config.sgd_lr if opt == "sgd" else config.adam_lr
            lr_note = f"lr = {base}" + (f"·{config.d_ref}/d" if rule == "rescaled" else "")
            ok = np.isfinite(s.to_numpy())  # a median over diverged seeds is +inf: not drawn
            ax.plot(s.index[ok], s.to_numpy()[ok], mark, label=lr_note)
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
