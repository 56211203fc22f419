"""``gns-layers``: do the normalisation layers' per-example gradients predict the total noise scale?

Claim (Gray, Tiwari, Bergsma & Hestness, NeurIPS 2024, arXiv 2411.00999, abstract and §4): "the total GNS
of contemporary transformer models is predicted well by the GNS of only the normalization layers" — the
B_simple = tr Σ/|G|² (McCandlish et al. eq. 2.8) computed from the LayerNorm parameters' per-example
gradients alone tracks the B_simple of all parameters through training, so that it can stand in for it
(they steer a batch-size schedule with it). The paper gives no tolerance; the bands here are fixed in the
config before the first run.

Setting: :class:`noiseprobe.models.GPT` (pre-LayerNorm, tied embedding/head) from random initialisation,
character-level next-token prediction on the English text that ships with Python itself
(``pydoc_data.topics``, nothing downloaded), Adam at a fixed learning rate on uniformly drawn windows of
``context`` characters, ``batch_size`` windows per step. Every ``measure_every`` steps the monitor's
``layers`` metric (:class:`~noiseprobe.monitor.metrics.layers.Layers`) measures, on the step's batch,
tr Σ and |G|² of all parameters and of the ``norms`` group (every LayerNorm). One measurement's
B_simple is noisy, so, as McCandlish et al. do in practice, B is pooled over consecutive blocks of
``window`` measurements: B = Σ tr Σ̂ / Σ |Ĝ|² (:func:`~noiseprobe.monitor.gns.pooled_b_simple`).

Checks (block k: B_norms,k and B_total,k): ``norms-track-total`` Pearson correlation of log B_norms,k
and log B_total,k over the run ≥ ``min_correlation``; ``norms-ratio-in-band`` the fraction of blocks
whose ratio B_norms,k/B_total,k lies in ``ratio_band`` ≥ ``band_fraction``. A run whose loss diverges
measures nothing after that step; with fewer than 3 blocks the checks are not measurable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from noiseprobe.core import divergence
from noiseprobe.core.checks import Check
from noiseprobe.core.config import ExperimentConfig, param
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.experiment import Chunk, Experiment, RunCost
from noiseprobe.core.plotting import new_figure, savefig
from noiseprobe.core.seeding import torch_generator
from noiseprobe.models import GPT, GPTConfig
from noiseprobe.probes.losses import TokenMeanCrossEntropy

#: bytes above a warm worker: torch's working set, plus per (sample × position × width) the activations of
#: one forward and backward and the per-sample factors (rough; the generic estimate test checks it)
BASE_BYTES = 200 * 2**20
BYTES_PER_ACTIVATION = 400
#: seconds per (sample × position × weight) of one step (one torch thread), and a measurement in steps
SECONDS_PER_TOKEN_WEIGHT = 2.0e-9
MEASURE_STEPS = 4


def corpus(limit: int) -> tuple[torch.Tensor, int]:
    """The first ``limit`` characters of Python's help pages as ids 0..V−1 (sorted characters), and V."""
    import pydoc_data.topics

    text = "\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))[:limit]
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    return torch.tensor([index[c] for c in text]), len(chars)


@dataclass(frozen=True, kw_only=True)
class GNSLayersConfig(ExperimentConfig):
    text_chars: int = param(lo=10_000, hi=10**7, help="characters of the Python help text used")
    width: int = param(lo=8, hi=1024, help="model width")
    heads: int = param(lo=1, hi=32, help="attention heads (divide width)")
    layers: int = param(lo=1, hi=24, help="transformer blocks")
    context: int = param(lo=4, hi=1024, help="characters per training window")
    batch_size: int = param(lo=4, hi=4096, help="windows per step (the measured batch)")
    lr: float = param(lo=0.0, lo_open=True, help="Adam learning rate")
    steps: int = param(lo=10, hi=10**6, help="optimizer steps")
    measure_every: int = param(lo=1, help="steps between measurements")
    window: int = param(lo=1, hi=1000, help="measurements pooled per block")
    min_correlation: float = param(lo=-1.0, hi=1.0, help="least correlation of log B_norms and log B_total")
    ratio_band: list[float] = param(lo=0.0, lo_open=True, min_len=2, max_len=2, help="band of B_norms/B_total")
    band_fraction: float = param(lo=0.0, hi=1.0, help="least fraction of blocks with the ratio in band")

    size_fields = ("text_chars", "width", "layers", "context", "batch_size", "steps")

    def check(self) -> None:
        if self.width % self.heads:
            raise ConfigError("heads", self.heads, f"a divisor of width = {self.width}")
        if self.context >= self.text_chars:
            raise ConfigError("context", self.context, f"below text_chars = {self.text_chars}")
        if self.measure_every > self.steps:
            raise ConfigError("measure_every", self.measure_every, f"at most steps = {self.steps}")
        lo, hi = self.ratio_band
        if not lo < hi:
            raise ConfigError("ratio_band", self.ratio_band, "[lo, hi] with lo < hi")


class GNSLayers(Experiment):
    """Normalisation-layer B_simple against total B_simple through the training of a small GPT."""

    id = "gns-layers"
    title = (
        "Gray et al. 2024: normalisation-layer gradient noise scale predicts the total (small GPT, Python help text)"
    )
    Config = GNSLayersConfig
    tables = ("measurements",)
    _bands = {"min_correlation": 0.8, "ratio_band": [0.5, 2.0], "band_fraction": 0.8}
    presets = {
        "quick": {
            "seed": 0,
            **_bands,
            "text_chars": 200_000,
            "width": 48,
            "heads": 4,
            "layers": 2,
            "context": 32,
            "batch_size": 32,
            "lr": 3e-3,
            "steps": 400,
            "measure_every": 5,
            "window": 8,
        },
        "full": {
            "seed": 0,
            **_bands,
            "text_chars": 2_000_000,
            "width": 128,
            "heads": 4,
            "layers": 4,
            "context": 64,
            "batch_size": 64,
            "lr": 1e-3,
            "steps": 5000,
            "measure_every": 10,
            "window": 10,
        },
    }
    diverging = {"lr": 1e6, "steps": 20, "measure_every": 2, "window": 2}

    def estimate(self, config: GNSLayersConfig) -> RunCost:
        w, t, n = config.width, config.context, config.batch_size
        weights = 12 * config.layers * w * w + 128 * w
        tokens = n * t
        work = config.steps + MEASURE_STEPS * (config.steps // config.measure_every + 1)
        return RunCost(
            BASE_BYTES + BYTES_PER_ACTIVATION * tokens * w * config.layers,
            SECONDS_PER_TOKEN_WEIGHT * tokens * weights * work,
            ("width", "layers", "context", "batch_size"),
        )

    def measure(self, config: GNSLayersConfig, chunk: Chunk) -> dict[str, pd.DataFrame]:
        """Train once; the loss at every step and the monitor's measurements (module docstring)."""
        from noiseprobe.monitor import NoiseMonitor

        ids, vocab = corpus(config.text_chars)
        gen = torch_generator(config.seed, 0, 1)
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=torch_generator(config.seed, 0, 0))))
            model = GPT(GPTConfig(vocab=vocab, width=config.width, heads=config.heads, layers=config.layers, T=config.context))  # fmt: skip
        loss_fn = TokenMeanCrossEntropy()
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        mon = NoiseMonitor(model, loss_fn, every=config.measure_every, metrics=["tr_sigma", "g_sq", "layers"])
        limit = float(divergence.bound(math.log(vocab)))
        losses, rows = [], []
        for step in range(config.steps):
            start = torch.randint(0, len(ids) - config.context - 1, (config.batch_size,), generator=gen)
            window = start[:, None] + torch.arange(config.context + 1)
            x, y = ids[window[:, :-1]], ids[window[:, 1:]]
            loss = loss_fn(model(x), y).mean()
            value = float(loss)
            losses.append({"step": step, "loss": value})
            if not math.isfinite(value) or abs(value) > limit:
                break
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            row = mon.step((x, y), opt)  # measures before the update, at the step's own batch
            opt.step()
            if row:
                rows.append(
                    {
                        "step": step,
                        "tr_sigma": row.get("tr_sigma", math.nan),
                        "g_sq": row.get("g_sq", math.nan),
                        "tr_sigma_norms": row.get("tr_sigma/group:norms", math.nan),
                        "g_sq_norms": row.get("g_sq/group:norms", math.nan),
                        "status": row["status"],
                    }
                )
        meas = pd.DataFrame(rows, columns=["step", "tr_sigma", "g_sq", "tr_sigma_norms", "g_sq_norms", "status"])
        return {"results": pd.DataFrame(losses), "measurements": meas}

    def derive(self, config: GNSLayersConfig, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """``blocks``: B_total and B_norms pooled over blocks of ``window`` measurements (:func:`blocks`)."""
        return {"blocks": blocks(config.window, tables["measurements"])}

    def metrics(self, config: GNSLayersConfig, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        b = tables["blocks"].dropna()
        return {
            "blocks": len(b),
            "median_ratio": float(b["ratio"].median()) if len(b) else math.nan,
            "correlation": _log_correlation(b),
        }

    def checks(self, config: GNSLayersConfig, tables: dict[str, pd.DataFrame]) -> list[Check]:
        b = tables["blocks"].dropna()
        lo, hi = config.ratio_band
        track = f"log B_simple of the normalisation layers tracks log B_simple of all parameters (Pearson r ≥ {config.min_correlation:g} over blocks of {config.window} measurements)"  # noqa: E501
        band = f"B_norms/B_total in [{lo:g}, {hi:g}] for ≥ {config.band_fraction:.0%} of the blocks"
        if len(b) < 3:
            why = f"{len(b)} blocks with positive |G|² in both (at least 3 needed)"
            last = tables["results"]["loss"].iloc[-1] if len(tables["results"]) else math.nan
            if len(tables["results"]) < config.steps or not math.isfinite(last):
                why += f"; the loss diverged at step {len(tables['results']) - 1}"
            return [Check.not_measurable("norms-track-total", track, why), Check.not_measurable("norms-ratio-in-band", band, why)]  # fmt: skip
        inside = float(((b["ratio"] >= lo) & (b["ratio"] <= hi)).mean())
        detail = f"{len(b)} blocks; median ratio {b['ratio'].median():.3g}, range [{b['ratio'].min():.3g}, {b['ratio'].max():.3g}]"  # noqa: E501
        return [
            Check.greater("norms-track-total", track, _log_correlation(b), config.min_correlation, detail=detail),
            Check.greater("norms-ratio-in-band", band, inside, config.band_fraction, detail=detail),
        ]

    def plot(self, config: GNSLayersConfig, tables: dict[str, pd.DataFrame], out: Path) -> None:
        b = tables["blocks"]
        fig, axes = new_figure(3, 1, width=4.2, height=3.0)
        ax = np.asarray(axes).ravel()
        r = tables["results"]
        ax[0].plot(r["step"], r["loss"], lw=0.8)
        ax[0].set(xlabel="step", ylabel="training loss (nats/char)")
        ax[1].plot(b["step"], b["b_total"], "o-", label="all parameters")
        ax[1].plot(b["step"], b["b_norms"], "s-", label="LayerNorms only")
        ax[1].set(xlabel="step", ylabel="B_simple (pooled)", yscale="log")
        ax[1].legend(fontsize=7)
        ax[2].plot(b["step"], b["ratio"], "o-")
        ax[2].axhspan(*config.ratio_band, color="grey", alpha=0.2)
        ax[2].set(xlabel="step", ylabel="B_norms / B_total", yscale="log")
        savefig(fig, out / "gns_layers.png")


def blocks(window: int, measurements: pd.DataFrame) -> pd.DataFrame:
    """Pooled B_total and B_norms per block of ``window`` consecutive clean measurements."""
    m = measurements
    m = m[(m["status"] == "ok") & np.isfinite(m[["tr_sigma", "g_sq", "tr_sigma_norms", "g_sq_norms"]]).all(1)]
    m = m.sort_values("step").reset_index(drop=True)
    k = len(m) // window
    out: pd.DataFrame
    if k == 0:
        out = pd.DataFrame(columns=["step", "b_total", "b_norms", "ratio"])
        return out
    g = m.iloc[: k * window].groupby(np.arange(k * window) // window)
    s = g[["tr_sigma", "g_sq", "tr_sigma_norms", "g_sq_norms"]].sum()
    b_total = s["tr_sigma"] / s["g_sq"].where(s["g_sq"] > 0)
    b_norms = s["tr_sigma_norms"] / s["g_sq_norms"].where(s["g_sq_norms"] > 0)
    out = pd.DataFrame({"step": g["step"].mean(), "b_total": b_total, "b_norms": b_norms, "ratio": b_norms / b_total})
    return out


def _log_correlation(b: pd.DataFrame) -> float:
    ok = b[(b["b_total"] > 0) & (b["b_norms"] > 0)]
    if len(ok) < 3:
        return math.nan
    return float(np.corrcoef(np.log(ok["b_total"]), np.log(ok["b_norms"]))[0, 1])
