"""What the singular-limits experiments ``sl-fig1`` … ``sl-fig4`` share (paper 003, docs/theory/singular_limits.md §8).

Loss: ``L(w) = ⅛ (1.5 + w₁)(|w|² − 1)²`` (:func:`~noiseprobe.limits.losses.circle_loss`), Γ = unit circle,
``ΔL|_Γ = 1.5 + cos θ``; along-Γ coordinate θ = atan2(w₂, w₁), unwrapped along each chain's path
(:mod:`noiseprobe.limits.circle`). The paper's own L, initial points and windows for Figs. 1, 2, 4 are not in
the captions (docs/theory/singular_limits.md §8, §11): these are docs/theory/singular_limits.md's reproduction choices. Noisy GD (Def. 3.1)
``w_{k+1} = w_k − α∇_w L̂(w_k, η_k)`` runs batched over chains
(:func:`noiseprobe.limits.noisy_gd.simulate_noise`); every chain's noise comes from (seed, global chain
index), and the same chain indices are reused across variants (common random numbers).

Here: the config fields every figure has, the chunking, the NGD run that produces a chunk's tidy frame,
the up-front memory estimate of a chunk, and the plane plots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from noiseprobe.core.config import ExperimentConfig, param
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.experiment import Chunk, RunCost
from noiseprobe.limits.circle import unwrapped_angle
from noiseprobe.limits.losses import circle_loss
from noiseprobe.limits.noises import Noise
from noiseprobe.limits.noisy_gd import MAX_BLOCK_ELEMENTS, simulate_noise

W0_TOP = [0.0, 1.5]  # "starting at the top" (docs/theory/singular_limits.md §8)
W0_FIG3_TOP = [1.3 * math.cos(0.3), 1.3 * math.sin(0.3)]
#: most NGD iterations one chain may run (the slowest full preset runs 9.6e4); bounds the run time
MAX_ITERATIONS = 2_000_000
#: the step sizes a config may ask for: chains are stable for α·ΔL|_Γ < 2 (α < 0.8 on this loss); larger α
#: diverges, which the run reports (checks "not measurable"), so the bound only keeps the runs short
LR_MAX = 10.0

#: memory model of one chunk (bytes above a worker's state after imports): torch/NumPy first-use working set,
#: then per recorded chain-step (the NGD record arrays, the tidy frame with its θ and clock columns, and
#: pandas' copies while building it) and per noise number drawn at once (NumPy draws, their stack and the
#: torch view); fitted to measured peaks (docs/limits_experiments.md, "Memory")
CHUNK_BASE_BYTES = 20 * 2**20
BYTES_PER_RECORD = 200
BYTES_PER_NOISE = 8
#: time model of the NGD loop (one torch thread, measured on the shared development machine): seconds per
#: iteration of a chunk, and per chain-iteration on top
SECONDS_PER_STEP = 4e-4
SECONDS_PER_CHAIN_STEP = 6e-7


@dataclass(frozen=True, kw_only=True)
class ChainsConfig(ExperimentConfig):
    """Fields of every sl-fig config (besides the seed)."""

    chains: int = param(lo=2, hi=10**6, help="NGD chains per variant")
    per_chunk: int = param(lo=1, hi=10**6, help="chains per chunk (one worker's batch)")
    records: int = param(lo=10, hi=10_000, help="recorded points per chain (evenly spaced, plus check times)")
    flow_dt: float = param(lo=1e-4, hi=0.5, help="RK4 step of the Theorem A flow")

    size_fields = ("per_chunk", "records")


def check_start(field: str, w: Sequence[float]) -> None:
    """A start near Γ where b = 1.5 + w₁ > 0 (the part of the attractive neighbourhood NGD is run from)."""
    if not (len(w) == 2 and 0.6 <= math.hypot(*w) <= 1.6 and w[0] >= -1.0):
        raise ConfigError(
            field, w, "a point [w1, w2] with 0.6 <= |w| <= 1.6 and w1 >= -1 (near Γ, where b = 1.5 + w1 > 0)"
        )


def check_times(field: str, times: Sequence[float], t_end: float) -> None:
    if not all(0.0 < t <= t_end for t in times):
        raise ConfigError(field, times, f"a non-empty list of times in (0, {t_end:g}] (the run's end)")


def check_iterations(fields: str, t_end: float, clock: float) -> None:
    """Refuse a run whose chains would need more than :data:`MAX_ITERATIONS` steps to reach t_end."""
    if t_end / clock > MAX_ITERATIONS:
        raise ConfigError(
            fields,
            f"{t_end / clock:.3g} iterations",
            f"at most {MAX_ITERATIONS:.0e} iterations to reach t_end (raise the learning rate or the noise)",
        )


def steps_to(t: float, clock: float) -> int:
    """Iterations to reach rescaled time t on a clock of ``clock`` per iteration (ασ² or α²σ²)."""
    return round(t / clock)


def chain_chunks(config: ChainsConfig, variants: Sequence[str]) -> list[Chunk]:
    """One chunk per (variant, block of ``per_chunk`` global chain indices)."""
    n, k = config.chains, config.per_chunk
    return [
        Chunk(f"{v}-c{a:05d}", {"variant": v, "start": a, "stop": min(a + k, n)})
        for v in variants
        for a in range(0, n, k)
    ]


def chains_of(chunk: Chunk) -> range:
    return range(chunk.spec["start"], chunk.spec["stop"])


def simulate(
    noise: Noise,
    w0: Sequence[float],
    *,
    lr: float,
    sigma2: float,
    steps: int,
    seed: int,
    chains: Sequence[int],
    records: int,
    record_at: Sequence[int] = (),
    **labels: Any,
) -> pd.DataFrame:
    """Run NGD and return the tidy frame (chain × recorded step) with the clocks ``t_A = ασ²k``,
    ``t_B = α²σ²k`` and the unwrapped angle θ of every chain (``sigma2`` is the variance σ²)."""
    res = simulate_noise(
        noise,
        w0,
        lr=lr,
        sigma=math.sqrt(sigma2),
        steps=steps,
        seed=seed,
        chains=chains,
        record_every=max(1, steps // records),
        record_at=[k for k in record_at if k <= steps],
    )
    frame = res.to_frame(**labels)
    frame["theta"] = unwrapped_angle(res.positions).ravel()
    frame["t_A"] = lr * sigma2 * frame["step"]
    frame["t_B"] = lr**2 * sigma2 * frame["step"]
    return frame


def ngd_seconds(work: Sequence[tuple[int, int]]) -> float:
    """Simulation time of NGD chunks given as (chains, steps) pairs, on one worker (:data:`SECONDS_PER_STEP`,
    :data:`SECONDS_PER_CHAIN_STEP`; the analysis is not included)."""
    return sum(steps * (SECONDS_PER_STEP + SECONDS_PER_CHAIN_STEP * chains) for chains, steps in work)


def chunk_sizes(config: ChainsConfig) -> list[int]:
    """Chains per chunk of one variant (:func:`chain_chunks`)."""
    return [min(config.per_chunk, config.chains - a) for a in range(0, config.chains, config.per_chunk)]


def chunk_estimate(
    chains: int,
    steps: int,
    records: int,
    extra_records: int,
    eta_dim: int,
    drivers: tuple[str, ...],
    seconds: float | None = None,
) -> RunCost:
    """Peak memory of a worker running one NGD chunk of ``chains`` chains for ``steps`` iterations, recording
    every ``max(1, steps // records)``-th step plus ``extra_records`` more (bytes above the worker's state after
    imports), from :data:`CHUNK_BASE_BYTES`, :data:`BYTES_PER_RECORD` and :data:`BYTES_PER_NOISE`; ``seconds``
    is passed through (:func:`ngd_seconds`)."""
    every = max(1, steps // records)
    recorded = chains * (steps // every + 2 + extra_records)
    noise = min(min(512, steps) * chains * eta_dim, MAX_BLOCK_ELEMENTS)
    return RunCost(
        peak_bytes=int(CHUNK_BASE_BYTES + BYTES_PER_RECORD * recorded + BYTES_PER_NOISE * noise),
        seconds=seconds,
        drivers=drivers,
    )


def draw_plane(ax: Any, title: str) -> None:
    """Level curves of the circle loss and Γ (red)."""
    x = np.linspace(-1.9, 1.9, 241)
    X, Y = np.meshgrid(x, x)
    Z = circle_loss(torch.from_numpy(np.stack([X, Y], -1))).numpy()
    ax.contour(X, Y, np.log10(np.abs(Z) + 1e-4), levels=12, colors="0.75", linewidths=0.6)  # L < 0 for w₁ < −1.5
    th = np.linspace(0, 2 * math.pi, 400)
    ax.plot(np.cos(th), np.sin(th), color="red", lw=1.5, label="Γ")
    ax.set(aspect="equal", xlim=(-1.9, 1.9), ylim=(-1.9, 1.9), xlabel="w₁", ylabel="w₂", title=title)


def draw_paths(ax: Any, df: pd.DataFrame, n: int, **kw: Any) -> None:
    """The first n chains' paths in the plane."""
    for c in sorted(df["chain"].unique())[:n]:
        one = df[df["chain"] == c]
        ax.plot(one["w0"], one["w1"], lw=0.6, alpha=0.7, **kw)


def alive(df: pd.DataFrame) -> pd.Series:
    """Rows of chains that have not diverged."""
    return ~df["diverged"]


def n_diverged(df: pd.DataFrame) -> int:
    """Chains of ``df`` that diverged."""
    return int(df.groupby("chain")["diverged"].first().sum())
