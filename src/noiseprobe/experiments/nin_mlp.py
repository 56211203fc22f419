"""NIN paper (001) MLP experiments: Fig. 1, Fig. 2 bottom, Fig. 3 and Table 1 (App. B settings).

Every run is a ReLU MLP with one NIN on the first hidden layer's pre-activations, trained by plain SGD
(no momentum, sampling without replacement, last incomplete batch dropped) as a batched ensemble
(:func:`noiseprobe.nin.ensemble.train_ensemble`): replicas are (σε, seed, NIN mode) points; the global
replica index is the *seed index*, so all σε of one seed share weights, data order and unit noise ξ
(common random numbers), and a σε = 0 run per seed is the same network without a NIN (ε = 0 makes the
NIN inert: its gradient is ε·g = 0). Chunks are (seed, σε-group) blocks; results do not depend on them.

Noise levels are given as Table 1 coefficients c: σε² = c · d_in/(N_w η) for MSE and c · d_in/η for CE
(:func:`noise_base`), with d_in, N_w, η those of the run (so quick presets at reduced sizes scale the
levels the way Table 1 does).

Reference ambiguities exposed as config fields (reference §2): ``niw_init`` ("unit": W_NI ~ N(0, 1),
the NIN's own fan-in 1; "layer": N(0, 1/d_ℓ), the fan-in of the layer it feeds, as an extra input
column of W^(0) would get), ``standardize`` (global/pixel), ``split`` (FMNIST: merged 70k / official
train 60k / official), ``nin_layer``, ``epochs``, the MSE target (one-hot, Keras mean, no ½).
Default ``niw_init = "layer"``: only then does the downstream stability edge η σε² λ_max ≈ 2 with
λ_max ≈ (2/C)·‖W_NI‖²/2 for MSE scale as Table 1's d_in/(N_w η) (‖W_NI‖² ≈ N_w/d_in).

Phases per run (:func:`noiseprobe.nin.phases.classify_summary`, reference §7 rules for classifiers):

* divergent: overflow/non-finite (recorded by the ensemble) or stalled (the final clean train accuracy
  gained over chance less than ``stall_fraction`` of what the same seed's no-NIN run gained);
* catapult: the noisy batch loss rose above ``spike_factor`` × its first-step value at some step and the
  run then learned (not divergent). This is the loss-spike half of the §7 proxy; in these MLPs the NIW
  shrinks during a catapult instead of growing, so the NIW-growth half never fires;
* decay: min_t ‖W_NI(t)‖ ≤ ‖W_NI(0)‖/e, the NIW lost an e-fold within the horizon (in the deep CE net
  strong noise can make it re-grow afterwards, which the final-value rule n(T) ≤ n(0)/e would call
  decoupled; such runs are counted in the metric ``niw_regrown``);
* decoupled: otherwise.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_choice, check_int, check_real
from noiseprobe.core.experiment import Check, Chunk, Experiment
from noiseprobe.core.fitting import efold_time, fit_exponential
from noiseprobe.core.plotting import PHASE_COLOURS, new_figure, savefig
from noiseprobe.nin.ensemble import LOSSES, NIN_MODES, train_ensemble
from noiseprobe.nin.phases import PHASES, boundaries, classify_summary, phase_fractions
from noiseprobe.nin.probe import niw_decay_rate

#: Table 1 coefficients c of σε² (decoupled, decay, catapult, divergent examples)
TABLE1: dict[str, tuple[float, float, float, float]] = {"mse": (1e-4, 30.0, 47.0, 50.0),
                                                         "ce": (1e-4, 0.1, 1.0, 1.8)}
#: Table 1 evaluated at d_in = 784, N_w = 1024, η = 0.01 (reference §2), σε² per phase
TABLE1_REFERENCE: dict[str, tuple[float, float, float, float]] = {"mse": (7.66e-3, 2297.0, 3598.0, 3828.0),
                                                                   "ce": (7.84, 7840.0, 78400.0, 141120.0)}
NIW_INITS = ("unit", "layer")
DATASETS = ("embedded", "fashion-mnist")


def noise_base(loss: str, d_input: int, n_w: int, lr: float) -> float:
    """The unit of Table 1's σε² levels: d_in/(N_w η) for MSE, d_in/η for CE."""
    check_choice("loss", loss, LOSSES)
    return d_input / (n_w * lr) if loss == "mse" else d_input / lr


def table1(d_input: int = 784, n_w: int = 1024, lr: float = 0.01) -> pd.DataFrame:
    """Table 1 as rows (loss, phase, coefficient c, sigma2 = c·base, sigma = √sigma2)."""
    rows = []
    for loss, cs in TABLE1.items():
        base = noise_base(loss, d_input, n_w, lr)
        for phase, c in zip(PHASES, cs):
            rows.append({"loss": loss, "phase": phase, "coefficient": c, "sigma2": c * base,
                         "sigma": float(np.sqrt(c * base))})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ data
@lru_cache(maxsize=4)
def _load(data_dir: str, split: str, standardize: str, split_seed: int, n_train: int,
          pool: int) -> tuple[torch.Tensor, ...]:
    """(X_train, y_train, X_test, y_test): the embedded digits ("" data_dir) or the user's FMNIST,
    split 60/40 and standardised by the training part (B1's loaders), then optionally average-pooled
    ``pool`` × ``pool`` and re-standardised (global) by the pooled training part."""
    from noiseprobe.data.embedded import load_default
    from noiseprobe.data.idx import load_fashion_mnist

    nt = n_train or None
    ds = (load_fashion_mnist(data_dir, split_seed, split=split, n_train=nt, standardize=standardize)
          if data_dir else load_default(nt, split_seed, standardize=standardize))
    xtr, ytr, xte, yte = ds
    if pool > 1:
        side = int(round(np.sqrt(xtr.shape[1])))
        if side * side != xtr.shape[1] or side % pool:
            raise ConfigError("pool", pool, f"a divisor of the image side {side} (d_in = {xtr.shape[1]})")

        def p(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(-1, side // pool, pool, side // pool, pool).mean((2, 4)).reshape(x.shape[0], -1)

        xtr, xte = p(xtr), p(xte)
        mu, sd = xtr.mean(), xtr.std()
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    return xtr.float(), ytr, xte.float(), yte


def load_data(config: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """The run's data: the embedded digits, or FMNIST from ``data_dir`` (dataset "fashion-mnist")."""
    data_dir = config["data_dir"] if config["dataset"] == "fashion-mnist" else ""
    return _load(data_dir, config["split"], config["standardize"], config["split_seed"], config["n_train"],
                 config["pool"])


# ------------------------------------------------------------------------------------ base class
_COMMON_FIELDS = ("seed", "dataset", "data_dir", "split", "standardize", "split_seed", "n_train", "pool",
                  "hidden", "loss", "lr", "batch_size", "epochs", "record_every", "nin_layer", "niw_init",
                  "levels", "n_seeds", "sigmas_per_chunk", "stall_fraction", "spike_factor", "acc_margin",
                  "probe_samples")


def _preset(**kw: Any) -> dict[str, Any]:
    base = {"seed": 2022, "dataset": "embedded", "data_dir": "", "split": "merged", "standardize": "global",
            "split_seed": 0, "n_train": 0, "pool": 1, "nin_layer": 0, "niw_init": "layer", "record_every": 1,
            "sigmas_per_chunk": 16, "stall_fraction": 0.5, "spike_factor": 2.0, "acc_margin": 0.02,
            "probe_samples": 1000}
    base.update(kw)
    return base


class _NINSweep(Experiment):
    """A σε × seed sweep of MLPs with a NIN (module docstring). Subclasses set presets and the figure."""

    tables = ("steps",)
    #: NIN modes run at every level ("epoch" = re-randomised each epoch, "fixed" = drawn once)
    modes: tuple[str, ...] = ("epoch",)

    # -- config ---------------------------------------------------------------------------------
    def validate(self, config: dict[str, Any]) -> None:
        missing = [f for f in _COMMON_FIELDS if f not in config]
        if missing:
            raise ConfigError("config", sorted(config), "a config with the fields " + ", ".join(missing))
        check_int("seed", config["seed"], lo=0)
        check_choice("split", config["split"], ("merged", "train", "official"))
        check_choice("standardize", config["standardize"], ("global", "pixel"))
        check_int("split_seed", config["split_seed"], lo=0)
        check_int("n_train", config["n_train"], lo=0)
        check_int("pool", config["pool"], lo=1, hi=28)
        hidden = config["hidden"]
        if not isinstance(hidden, list) or not hidden or not all(isinstance(h, int) and h >= 1 for h in hidden):
            raise ConfigError("hidden", hidden, "a non-empty list of positive layer widths, e.g. [1024]")
        check_choice("loss", config["loss"], LOSSES)
        check_real("lr", config["lr"], lo=0.0, lo_open=True)
        check_int("batch_size", config["batch_size"], lo=1)
        check_int("epochs", config["epochs"], lo=1)
        check_int("record_every", config["record_every"], lo=1)
        check_int("nin_layer", config["nin_layer"], lo=0, hi=len(hidden) - 1)
        check_choice("niw_init", config["niw_init"], NIW_INITS)
        levels = config["levels"]
        if not isinstance(levels, list) or not levels or not all(
                isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0 for c in levels):
            raise ConfigError("levels", levels, "a non-empty list of positive Table 1 coefficients c")
        if sorted(levels) != list(levels):
            raise ConfigError("levels", levels, "coefficients in increasing order")
        check_int("n_seeds", config["n_seeds"], lo=1)
        check_int("sigmas_per_chunk", config["sigmas_per_chunk"], lo=1)
        check_real("stall_fraction", config["stall_fraction"], lo=0.0, hi=1.0)
        check_real("spike_factor", config["spike_factor"], lo=1.0)
        check_real("acc_margin", config["acc_margin"], lo=0.0, hi=1.0)
        check_int("probe_samples", config["probe_samples"], lo=1)
        check_choice("dataset", config["dataset"], DATASETS)
        if config["dataset"] == "fashion-mnist":
            if not config["data_dir"]:
                raise ConfigError("data_dir", "", "the folder with the Fashion-MNIST IDX files: pass --data-dir DIR "
                                                  "(this preset trains on FMNIST; nothing is downloaded)")
            from noiseprobe.data.idx import find_idx_files

            find_idx_files(config["data_dir"])  # ConfigError naming the missing files, before any work
        elif config["data_dir"]:
            raise ConfigError("data_dir", config["data_dir"], "empty for dataset 'embedded' (use the full preset, "
                                                              "or --set dataset=fashion-mnist)")

    def sigmas(self, config: dict[str, Any]) -> np.ndarray:
        """σε per level: √(c · base) with the run's d_in, N_w = first hidden width and η."""
        d_in = load_data(config)[0].shape[1]
        base = noise_base(config["loss"], d_in, config["hidden"][config["nin_layer"]], config["lr"])
        return np.sqrt(np.asarray(config["levels"], dtype=np.float64) * base)

    def chunks(self, config: dict[str, Any]) -> list[Chunk]:
        k = config["sigmas_per_chunk"]
        n_lev = len(config["levels"])
        return [Chunk(f"s{s:04d}-l{a:03d}", {"seed_index": s, "levels": list(range(a, min(a + k, n_lev))),
                                             "baseline": a == 0})
                for s in range(config["n_seeds"]) for a in range(0, n_lev, k)]

    def run_chunk(self, config: dict[str, Any], chunk: Chunk) -> dict[str, pd.DataFrame]:
        xtr, ytr, xte, yte = load_data(config)
        sig = self.sigmas(config)
        lev = chunk.spec["levels"]
        points = [(float(sig[i]), i, m) for i in lev for m in self.modes]
        if chunk.spec["baseline"]:
            points.insert(0, (0.0, -1, "epoch"))
        sigmas, level_idx, modes = zip(*points)
        fan_in = xtr.shape[1] if config["nin_layer"] == 0 else config["hidden"][config["nin_layer"] - 1]
        epochs, every = config["epochs"], config["record_every"]
        run = train_ensemble(
            xtr, ytr, xte, yte, hidden=config["hidden"], sigmas=list(sigmas),
            replicas=[chunk.spec["seed_index"]] * len(points), seed=config["seed"], loss=config["loss"],
            lr=config["lr"], batch_size=min(config["batch_size"], xtr.shape[0]), epochs=epochs,
            nin_layer=config["nin_layer"], nin_mode=list(modes),
            niw_init_std=1.0 if config["niw_init"] == "unit" else float(fan_in) ** -0.5,
            record_epochs=[e for e in range(1, epochs + 1) if e <= 10 or e % every == 0],
            probe_samples=config["probe_samples"])
        for df in (run.records, run.steps):
            df.insert(1, "level", np.asarray(level_idx)[df.pop("member").to_numpy()])
        return {"results": run.records, "steps": run.steps}

    # -- analysis -------------------------------------------------------------------------------
    def summarise(self, config: dict[str, Any], tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
        """One row per run (replica, level, nin_mode): phase code and name, decay times, the eq. (2) check."""
        res = tables["results"].sort_values(["replica", "level", "nin_mode", "epoch"], kind="stable")
        steps = tables["steps"].reset_index(drop=True)
        keys = ["replica", "level", "nin_mode"]
        first = steps[steps["step"] == 1].set_index(keys)["noisy_loss"]
        peak = steps.groupby(keys)["noisy_loss"].max()
        peak_step = steps.loc[steps["noisy_loss"].fillna(np.inf).groupby([steps[c] for c in keys]).idxmax()]
        peak_step = peak_step.set_index(keys)["step"]
        after = steps.merge(peak_step.rename("peak_step").reset_index(), on=keys)
        post_min = after[after["step"] > after["peak_step"]].groupby(keys)["noisy_loss"].min()
        runs = []
        for (rep, lev, mode), g in res.groupby(keys, sort=True):
            t = g["epoch"].to_numpy(float)
            n = g["niw_norm"].to_numpy(float)
            ok = np.isfinite(n)
            rate = niw_decay_rate(g["sigma"].iloc[0], config["lr"], g["curv_niw"].to_numpy(float), form="corrected")
            pred = float(np.trapezoid(rate, g["step"].to_numpy(float))) if ok.all() else np.nan
            row = {"replica": rep, "level": lev, "nin_mode": mode, "sigma": float(g["sigma"].iloc[0]),
                   "diverged": bool(g["diverged"].iloc[-1]), "niw_ratio": n[-1] / n[0] if ok.all() else np.nan,
                   "niw_min_ratio": n.min() / n[0] if ok.all() else np.nan,
                   "final_train_acc": g["train_acc"].iloc[-1], "final_test_acc": g["test_acc"].iloc[-1],
                   "initial_train_loss": g["train_loss"].iloc[0], "final_train_loss": g["train_loss"].iloc[-1],
                   "spike": float(peak.get((rep, lev, mode), np.nan) / first.get((rep, lev, mode), np.nan)),
                   "spike_step": int(peak_step.get((rep, lev, mode), -1)),
                   "post_spike_min": float(post_min.get((rep, lev, mode), np.nan)
                                           / first.get((rep, lev, mode), np.nan)),
                   "tau_niw": float(efold_time(t, n)) if ok.all() else np.nan,
                   "tau_train": _tau_excess(t, g["train_loss"].to_numpy(float)),
                   "tau_test": _tau_excess(t, g["test_loss"].to_numpy(float)),
                   "measured_log_decay": float(-np.log(n[-1] / n[0])) if ok.all() else np.nan,
                   "predicted_log_decay": pred}
            runs.append(row)
        runs = pd.DataFrame(runs)
        base = runs[runs["level"] == -1].set_index("replica")["final_train_acc"]
        runs["baseline_train_acc"] = runs["replica"].map(base)
        chance = 1.0 / (int(load_data(config)[1].max()) + 1)
        learned = ((runs["final_train_acc"].to_numpy(float) - chance)
                   / (runs["baseline_train_acc"].to_numpy(float) - chance))
        stalled = ~(learned >= config["stall_fraction"])
        spike = (runs["spike"].to_numpy(float) > config["spike_factor"]) & ~runs["diverged"].to_numpy(bool)
        codes = classify_summary(overflow=runs["diverged"].to_numpy(bool), stalled=stalled, max_stability=None,
                                 niw_ratio=runs["niw_min_ratio"].fillna(np.inf).to_numpy(float), transient=spike)
        runs["stalled"] = stalled & ~runs["diverged"].to_numpy(bool)
        runs["phase_code"] = codes
        runs["phase"] = [PHASES[c] for c in codes]
        return runs

    def _phase_checks(self, config: dict[str, Any], runs: pd.DataFrame,
                      metrics: dict[str, Any]) -> tuple[list[Check], pd.DataFrame]:
        nin = runs[(runs["level"] >= 0) & (runs["nin_mode"] == "epoch")]
        frac = phase_fractions(nin["sigma"].to_numpy(), nin["phase_code"].to_numpy())
        major = frac[list(PHASES)].to_numpy().argmax(1)
        names = [PHASES[m] for m in major]
        metrics["phase_fractions"] = frac.round(4).to_dict(orient="list")
        metrics["niw_regrown"] = int(((nin["niw_min_ratio"] <= np.exp(-1)) & (nin["niw_ratio"] > np.exp(-1))).sum())
        metrics["boundaries_sigma"] = boundaries(nin["sigma"].to_numpy(), nin["phase_code"].to_numpy())
        med = [float(np.exp(np.median(np.log(nin.loc[nin["phase_code"] == k, "sigma"]))))
               if (nin["phase_code"] == k).any() else float("nan") for k in range(len(PHASES))]
        metrics["median_sigma_per_phase"] = dict(zip(PHASES, med))
        ok = bool(np.all(np.isfinite(med)) and np.all(np.diff(med) > 0))
        checks = [Check("the four phases appear in order of sigma_eps (median sigma_eps of the runs in each phase)",
                        dict(zip(PHASES, np.round(med, 4).tolist())), "all four present, increasing in this order",
                        "strictly increasing", ok,
                        f"levels c = {config['levels']}; sigma = {np.round(frac['sigma'].to_numpy(), 4).tolist()}; "
                        f"majority phase per level: {', '.join(names)}; "
                        f"{len(nin) // max(len(frac), 1)} runs per level")]
        # divergence detection
        nonfinite = runs["diverged"].to_numpy(bool)
        div_runs = nin[nin["phase_code"] == 3]
        checks.append(Check("divergent runs are detected and recorded (not a crash); the other runs finish",
                            {"divergent": int(len(div_runs)), "overflow": int(nonfinite.sum()),
                             "stalled": int(runs["stalled"].sum()), "runs": int(len(runs))},
                            ">= 1 divergent run recorded, every other run finite", "exact",
                            len(div_runs) >= 1 and bool(np.isfinite(runs.loc[~runs["diverged"], "niw_ratio"]).all()),
                            "overflow = non-finite or |w| > 1e8 (step recorded as diverged_step); "
                            "stalled = final train accuracy above chance less than stall_fraction of the "
                            "no-NIN run's"))
        # catapult: the loss first rises, then recovers
        cat = nin[nin["phase_code"] == 2]
        rec = cat[(cat["post_spike_min"] < 1.0) & (cat["final_train_loss"] < cat["initial_train_loss"])]
        checks.append(Check("in the catapult runs the loss first rises and then recovers",
                            {"catapult_runs": int(len(cat)), "recovered": int(len(rec)),
                             "median_spike": float(cat["spike"].median()) if len(cat) else None,
                             "median_spike_step": float(cat["spike_step"].median()) if len(cat) else None,
                             "median_post_spike_min": float(cat["post_spike_min"].median()) if len(cat) else None},
                            f"noisy batch loss > {config['spike_factor']}x its first-step value, later back below "
                            "it, final clean train loss < initial", "all catapult runs, at least one",
                            len(cat) >= 1 and len(rec) == len(cat),
                            "losses relative to the first step's noisy loss" if len(cat)
                            else "no run reached the catapult phase at these levels"))
        # eq. (2) NIW decay rate: where its second-order expansion holds (smallest sigma) and in the decay phase
        def ratio(sel: pd.DataFrame) -> np.ndarray:
            sel = sel[np.isfinite(sel["predicted_log_decay"]) & (sel["predicted_log_decay"] > 0)]
            return (sel["measured_log_decay"] / sel["predicted_log_decay"]).to_numpy(float)

        small = ratio(nin[nin["level"] == nin["level"].min()])
        decay = ratio(nin[nin["phase_code"] == 1])
        r_small = float(np.median(small)) if small.size else float("nan")
        r_decay = float(np.median(decay)) if decay.size else float("nan")
        metrics["niw_decay_measured_over_eq2"] = {"smallest_sigma": r_small, "decay_phase": r_decay,
                                                  "paper_form_smallest_sigma": 2 * r_small}
        checks.append(Check("NIW decay vs the eq. (2) prediction from the local Hessian at small sigma_eps "
                            "(measured -ln|W_NI(T)/W_NI(0)| over the integrated eta sigma^2 W^T<H>W/|W|^2)",
                            {"corrected": r_small, "paper form (half the rate)": 2 * r_small, "runs": int(small.size)},
                            1.0, "within a factor 1.5", bool(2 / 3 <= r_small <= 1.5),
                            f"median over seeds at the smallest level; in the decay phase (sigma|W_NI| >> "
                            f"pre-activations, outside the 2nd-order expansion, paper footnote 3) the ratio is "
                            f"{r_decay:.3g} over {decay.size} runs"))
        # small-sigma accuracy against the same network without a NIN
        low = nin[nin["level"] == nin["level"].min()].set_index("replica")["final_test_acc"]
        base = runs[runs["level"] == -1].set_index("replica")["final_test_acc"]
        diff = (low - base.reindex(low.index)).to_numpy(float)
        mean = float(np.mean(diff))
        se = float(np.std(diff, ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("nan")
        checks.append(Check("test accuracy with a NIN at the smallest sigma_eps matches the network without a NIN",
                            {"mean difference": mean, "se": se, "seeds": int(diff.size)}, 0.0,
                            config["acc_margin"], bool(abs(mean) <= config["acc_margin"]),
                            "paired over seeds (same init, data order); sigma_eps = "
                            f"{float(nin[nin['level'] == nin['level'].min()]['sigma'].iloc[0]):.4g}"))
        return checks, frac


def _tau_excess(t: np.ndarray, y: np.ndarray) -> float:
    """First e-fold time of the loss excess over L_∞ = median of the last 10 % of records (reference §7)."""
    if not np.isfinite(y).all():
        return float("nan")
    return float(efold_time(t, y - np.median(y[-max(1, len(y) // 10):])))


# --------------------------------------------------------------------------------------- figures
def _shade_phases(ax: Any, sigma: np.ndarray, names: list[str]) -> None:
    """Shade the σ axis by the majority phase of each level (edges at geometric midpoints)."""
    s = np.asarray(sigma, dtype=float)
    mids = np.sqrt(s[1:] * s[:-1])
    lo = np.r_[s[0] / 1.5, mids]
    hi = np.r_[mids, s[-1] * 1.5]
    for a, b, name in zip(lo, hi, names):
        ax.axvspan(a, b, color=PHASE_COLOURS[name], alpha=0.5, lw=0)


def _curves_figure(config: dict[str, Any], res: pd.DataFrame, runs: pd.DataFrame, frac: pd.DataFrame,
                   title: str, out: Path) -> Path:
    """Fig. 2 bottom / Fig. 3: one panel per level (first seed): train (purple) / test (green) loss
    solid, accuracy dashed; NIW norm (blue) and next-layer norm (red) relative to their initial values."""
    levels = sorted(int(v) for v in runs.loc[runs["level"] >= 0, "level"].unique())
    fig, axes = new_figure(len(levels), 2, width=3.4, height=2.7)
    axes = np.asarray(axes).reshape(2, len(levels))
    rep0 = int(res["replica"].min())
    major = frac[list(PHASES)].to_numpy().argmax(1)
    for j, lev in enumerate(levels):
        g = res[(res["replica"] == rep0) & (res["level"] == lev) & (res["nin_mode"] == "epoch")].sort_values("epoch")
        ph = runs[(runs["replica"] == rep0) & (runs["level"] == lev) & (runs["nin_mode"] == "epoch")]["phase"].iloc[0]
        t = g["epoch"].to_numpy(float)
        ax, bx = axes[0, j], axes[1, j]
        ax.plot(t, g["train_loss"], color="purple", label="train loss")
        ax.plot(t, g["test_loss"], color="green", label="test loss")
        ax.set_yscale("log")
        acc = ax.twinx()
        acc.plot(t, g["train_acc"], color="purple", ls="--")
        acc.plot(t, g["test_acc"], color="green", ls="--")
        acc.set_ylim(0, 1)
        ax.set_title(f"c = {config['levels'][lev]:g}, σε = {g['sigma'].iloc[0]:.3g}\nthis run: {ph}",
                     color="black", fontsize=8)
        ax.set_facecolor(PHASE_COLOURS[ph] + "40")
        bx.plot(t, g["niw_norm"] / g["niw_norm"].iloc[0], color="blue", label="‖W_NI‖/‖W_NI(0)‖")
        bx.plot(t, g["next_norm"] / g["next_norm"].iloc[0], color="red", label="‖W^(1)‖/‖W^(1)(0)‖")
        bx.set_yscale("log")
        bx.set_xlabel("epoch")
        if j == 0:
            ax.legend(loc="lower left", fontsize=7)
            bx.legend(loc="lower left", fontsize=7)
    fig.suptitle(f"{title}; majority phase per level: " + ", ".join(PHASES[m] for m in major), fontsize=9)
    return savefig(fig, out / "curves.png")


def _phase_bar(frac: pd.DataFrame, out: Path, name: str = "phases.png") -> Path:
    """Stacked phase fractions per σε (the figures' top bar, measured over seeds)."""
    fig, ax = new_figure(width=5.0, height=2.2)
    x = np.arange(len(frac))
    bottom = np.zeros(len(frac))
    for p in PHASES:
        ax.bar(x, frac[p], bottom=bottom, color=PHASE_COLOURS[p], label=p)
        bottom += frac[p].to_numpy()
    ax.set_xticks(x, [f"{s:.3g}" for s in frac["sigma"]], rotation=45, fontsize=7)
    ax.set_xlabel("σε")
    ax.set_ylabel("fraction of seeds")
    ax.legend(fontsize=7, ncols=4, loc="upper center", bbox_to_anchor=(0.5, 1.35))
    return savefig(fig, out / name)


# ----------------------------------------------------------------------------------- experiments
class Fig2Bottom(_NINSweep):
    """Fig. 2 bottom: 1 hidden layer × 1024 ReLU, MSE, batch 1000, η = 0.01, Table 1 MSE levels."""

    id = "nin-fig2-bottom"
    title = "NIN Fig. 2 bottom: 1x1024 ReLU MLP, MSE, the four phases at the Table 1 MSE levels"
    presets = {
        # reduced: 14x14 pooled digits (d_in 196), width 64, ~750 steps; levels chosen on the Table 1 scale
        "quick": _preset(seed=2022, pool=2, hidden=[64], loss="mse", lr=0.01, batch_size=1000, epochs=150,
                         record_every=5, levels=[1e-4, 8.0, 9.0, 10.0, 12.0], n_seeds=3),
        "full": _preset(seed=2022, dataset="fashion-mnist", hidden=[1024], loss="mse", lr=0.01, batch_size=1000,
                        epochs=200, record_every=2, levels=list(TABLE1["mse"]), n_seeds=4, sigmas_per_chunk=4),
    }

    def analyse(self, config: dict[str, Any], tables: dict[str, pd.DataFrame],
                out: Path) -> tuple[dict[str, Any], list[Check]]:
        runs = self.summarise(config, tables)
        metrics: dict[str, Any] = {"horizon_steps": int(tables["results"]["step"].max()),
                                   "sigma_levels": self.sigmas(config).tolist()}
        checks, frac = self._phase_checks(config, runs, metrics)
        _curves_figure(config, tables["results"], runs, frac, self.title.split(":")[0], out)
        _phase_bar(frac, out)
        return metrics, checks


class Fig3(Fig2Bottom):
    """Fig. 3: the Fig. 2 bottom network with cross-entropy and the Table 1 CE levels."""

    id = "nin-fig3"
    title = "NIN Fig. 3: 1x1024 ReLU MLP, cross-entropy, the four phases at the Table 1 CE levels"
    presets = {
        "quick": _preset(seed=2022, pool=2, hidden=[64], loss="ce", lr=0.01, batch_size=1000, epochs=150,
                         record_every=5, levels=[1e-4, 1.0, 3.0, 10.0], n_seeds=3),
        "full": _preset(seed=2022, dataset="fashion-mnist", hidden=[1024], loss="ce", lr=0.01, batch_size=1000,
                        epochs=200, record_every=2, levels=list(TABLE1["ce"]), n_seeds=4, sigmas_per_chunk=4),
    }


class Fig1(_NINSweep):
    """Fig. 1: 3 hidden layers × 1024 ReLU, cross-entropy, batch 128, η = 0.05; NIW / train / test decay
    for a re-randomised and a fixed NIN at one σε (centre) and decay times against σε (right)."""

    id = "nin-fig1"
    title = "NIN Fig. 1: 3x1024 ReLU MLP, CE; NIW/loss decay (re-randomised vs fixed NIN) and decay times vs sigma"
    modes = NIN_MODES
    presets = {
        "quick": _preset(seed=2022, pool=2, hidden=[64, 64, 64], loss="ce", lr=0.05, batch_size=128, epochs=40,
                         record_every=2, levels=[1e-4, 1e-2, 0.1, 0.3, 1.0, 3.0, 10.0], centre_level=3,
                         n_seeds=2),
        "full": _preset(seed=2022, dataset="fashion-mnist", hidden=[1024, 1024, 1024], loss="ce", lr=0.05,
                        batch_size=128, epochs=100, record_every=5,
                        levels=[1e-5, 1e-4, 1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0, 1.8, 3.0], centre_level=4, n_seeds=3,
                        sigmas_per_chunk=2),
    }

    def validate(self, config: dict[str, Any]) -> None:
        super().validate(config)
        check_int("centre_level", config.get("centre_level"), lo=0, hi=len(config["levels"]) - 1)

    def analyse(self, config: dict[str, Any], tables: dict[str, pd.DataFrame],
                out: Path) -> tuple[dict[str, Any], list[Check]]:
        runs = self.summarise(config, tables)
        res = tables["results"]
        metrics: dict[str, Any] = {"horizon_steps": int(res["step"].max()),
                                   "sigma_levels": self.sigmas(config).tolist()}
        checks, frac = self._phase_checks(config, runs, metrics)
        lev = config["centre_level"]
        centre = runs[runs["level"] == lev]
        tau = {m: centre.loc[centre["nin_mode"] == m, "tau_niw"].to_numpy(float) for m in NIN_MODES}
        med = {m: float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan") for m, v in tau.items()}
        phases_c = centre.groupby("nin_mode")["phase"].agg(lambda s: s.value_counts().idxmax()).to_dict()
        ratio = med["fixed"] / med["epoch"]
        metrics["centre"] = {"sigma": float(centre["sigma"].iloc[0]), "tau_niw_epochs": med, "phase": phases_c}
        checks.append(Check("NIWs decay in the decay phase for both re-randomised and fixed NINs, with similar tau "
                            "(Fig. 1 centre)", {"tau_niw epoch-mode": med["epoch"], "tau_niw fixed": med["fixed"],
                                                "ratio fixed/epoch": ratio, "phases": phases_c},
                            "both decay (finite tau), ratio 1", "ratio in [0.5, 2]",
                            bool(np.isfinite(ratio) and 0.5 <= ratio <= 2.0
                                 and all(p == "decay" for p in phases_c.values())),
                            f"sigma_eps = {metrics['centre']['sigma']:.4g} (level {lev}); tau = first e-fold of "
                            "|W_NI| in epochs, median over seeds"))
        self._centre_figure(config, res, runs, out)
        self._right_figure(runs, frac, out)
        _phase_bar(frac, out)
        taus = runs[(runs["level"] >= 0)].groupby(["nin_mode", "sigma"])[["tau_niw", "tau_train", "tau_test"]].median()
        metrics["decay_times_epochs"] = {f"{m}@{s:.4g}": v
                                         for (m, s), v in taus.round(4).to_dict(orient="index").items()}
        return metrics, checks

    def _centre_figure(self, config: dict[str, Any], res: pd.DataFrame, runs: pd.DataFrame, out: Path) -> Path:
        lev = config["centre_level"]
        rep0 = int(res["replica"].min())
        fig, ax = new_figure(width=5.0, height=3.6)
        styles = {"epoch": ("NIN re-randomised each epoch", 1.0), "fixed": ("fixed NIN", 0.45)}
        for mode, (label, alpha) in styles.items():
            g = res[(res["replica"] == rep0) & (res["level"] == lev) & (res["nin_mode"] == mode)].sort_values("epoch")
            t = g["epoch"].to_numpy(float)
            for col, colour, name in (("niw_norm", "blue", "NIW"), ("train_loss", "purple", "train loss"),
                                      ("test_loss", "green", "test loss")):
                y = g[col].to_numpy(float) / g[col].iloc[0]
                ax.plot(t, y, "o", ms=2.5, color=colour, alpha=alpha, label=f"{name} ({label})")
                fit = fit_exponential(t, y, offset=True, window=(0.9, 0.1))
                if np.isfinite(fit.tau[0]) and 0 < fit.tau[0] <= t[-1]:
                    tt = np.linspace(fit.t_start[0], fit.t_stop[0], 100)
                    ax.plot(tt, fit.amplitude[0] * np.exp(-tt / fit.tau[0]) + fit.offset[0], color=colour, alpha=alpha)
                    ax.plot([fit.tau[0]], [fit.amplitude[0] * np.exp(-1) + fit.offset[0]], "*", ms=10,
                            color=colour, alpha=alpha)
        ax.set_yscale("log")
        ax.set_xlim(0, res["epoch"].max())
        ax.set_xlabel("epoch")
        ax.set_ylabel("relative to epoch 0")
        ax.set_title(f"σε = {res.loc[res['level'] == lev, 'sigma'].iloc[0]:.3g}: points = data, "
                     "lines = exp fits, stars = τ", fontsize=8)
        ax.legend(fontsize=6, ncols=2)
        return savefig(fig, out / "centre.png")

    def _right_figure(self, runs: pd.DataFrame, frac: pd.DataFrame, out: Path) -> Path:
        fig, ax = new_figure(width=5.0, height=3.6)
        major = [PHASES[m] for m in frac[list(PHASES)].to_numpy().argmax(1)]
        _shade_phases(ax, frac["sigma"].to_numpy(), major)
        for mode, alpha in (("epoch", 1.0), ("fixed", 0.45)):
            med = runs[(runs["level"] >= 0) & (runs["nin_mode"] == mode)].groupby("sigma")[
                ["tau_niw", "tau_train", "tau_test"]].median()
            for col, colour in (("tau_niw", "blue"), ("tau_train", "purple"), ("tau_test", "green")):
                ax.plot(med.index, med[col], "o-", color=colour, alpha=alpha, label=f"{col} ({mode})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("σε")
        ax.set_ylabel("first e-fold time [epochs]")
        ax.legend(fontsize=6, ncols=2)
        return savefig(fig, out / "decay_times.png")


class Table1(Experiment):
    """Table 1: the σε² levels c · d_in/(N_w η) (MSE) and c · d_in/η (CE) at the given sizes."""

    id = "nin-table1"
    title = "NIN Table 1: noise levels from d_input, N_w and the learning rate"
    presets = {"quick": {"seed": 0, "d_input": 784, "n_w": 1024, "lr": 0.01},
               "full": {"seed": 0, "d_input": 784, "n_w": 1024, "lr": 0.01}}

    def validate(self, config: dict[str, Any]) -> None:
        check_int("d_input", config["d_input"], lo=1)
        check_int("n_w", config["n_w"], lo=1)
        check_real("lr", config["lr"], lo=0.0, lo_open=True)

    def run_chunk(self, config: dict[str, Any], chunk: Chunk) -> pd.DataFrame:
        return table1(config["d_input"], config["n_w"], config["lr"])

    def analyse(self, config: dict[str, Any], tables: dict[str, pd.DataFrame],
                out: Path) -> tuple[dict[str, Any], list[Check]]:
        tab = tables["results"]
        metrics = {f"{r.loss}_{r.phase}_sigma": r.sigma for r in tab.itertuples()}
        checks = []
        paper_sizes = (config["d_input"], config["n_w"], config["lr"]) == (784, 1024, 0.01)
        for loss, ref in TABLE1_REFERENCE.items():
            got = tab.loc[tab["loss"] == loss, "sigma2"].to_numpy(float)
            rel = np.abs(got / np.asarray(ref) - 1)
            checks.append(Check(f"Table 1 {loss.upper()} row: sigma_eps^2 at d_in=784, N_w=1024, eta=0.01",
                                got.round(4).tolist(), list(ref), "0.5% (reference rounded to 3-4 digits)",
                                bool(paper_sizes and (rel < 5e-3).all()),
                                "" if paper_sizes else "sizes differ from the paper's; values are not comparable"))
        mse = tab[tab["loss"] == "mse"].set_index("phase")["sigma2"]
        metrics["mse_divergent_over_catapult_sigma2"] = float(mse["divergent"] / mse["catapult"])
        fig, ax = new_figure(width=5.0, height=2.8)
        for j, loss in enumerate(("mse", "ce")):
            sub = tab[tab["loss"] == loss]
            ax.scatter(sub["sigma"], [j] * len(sub), c=[PHASE_COLOURS[p] for p in sub["phase"]], s=80,
                       edgecolors="black", zorder=3)
            for r in sub.itertuples():
                ax.annotate(f"{r.sigma:.3g}", (r.sigma, j), textcoords="offset points", xytext=(0, 8),
                            fontsize=7, ha="center")
        ax.set_xscale("log")
        ax.set_yticks([0, 1], ["MSE", "CE"])
        ax.set_ylim(-0.7, 1.7)
        ax.set_xlabel("σε (Table 1 example levels; colours: decoupled, decay, catapult, divergent)")
        savefig(fig, out / "table1.png")
        return metrics, checks
