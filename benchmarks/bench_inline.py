"""The monitor's no-extra-pass mode, ``NoiseMonitor(..., inline=True)``, inside a training loop on the
GPT-style decoder of bench_transformer (4 pre-LayerNorm blocks, width 256, 4 heads, T = 128, vocabulary
512, tied head; N = 64 sequences of a learnable Markov chain; float32, one torch thread; AdamW).

A monitored loop (the loop's forward, backward, ``mon.step(batch, opt, loss=loss)``, optimizer step) against
the same loop unmonitored, on copies of one model, ``log_dir`` set (CSV and Parquet written at every row),
a measurement at every step: rounds of a few steps of each loop interleaved in one process, process CPU
time per step (the machine is shared), medians over rounds.

1. Norms-only GNS: ``params=`` the 9 LayerNorms, the default metrics (tr Σ, |G|², B_simple ± CI,
   temperature, top-10 of C) of those parameters — the quantity Gray et al. 2024 (arXiv 2411.00999) track
   at scale. Aim ≤ 1.10×.
2. All layers: the default measurement of every parameter. Aim ≤ 1.5×.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn

from bench_transformer import _config, _model, markov_tokens, token_ce
from noiseprobe import NoiseMonitor


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    cfg, n = _config(quick)
    base = _model(cfg)
    ids, y = markov_tokens(cfg, n)
    steps, rounds = (2, 3) if quick else (3, 7)
    norms = [name for name, m in base.named_modules() if isinstance(m, nn.LayerNorm)]
    tmp = tempfile.TemporaryDirectory()

    def loop(monitor: Callable[[nn.Module], NoiseMonitor] | None) -> tuple[Callable[[], None], NoiseMonitor | None]:
        model = copy.deepcopy(base)
        opt = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: every round sees the same weights
        mon = monitor(model) if monitor is not None else None

        def body() -> None:
            for _ in range(steps):
                opt.zero_grad()
                loss = token_ce(model(ids), y).mean()
                loss.backward()
                if mon is not None:
                    mon.step((ids, y), opt, loss=loss)
                opt.step()

        return body, mon

    def inline(name: str, **kw: object) -> Callable[[nn.Module], NoiseMonitor]:
        return lambda m: NoiseMonitor(m, token_ce, every=1, inline=True, log_dir=f"{tmp.name}/{name}", **kw)  # type: ignore[arg-type]

    loops = {
        "unmonitored": loop(None),
        "norms": loop(inline("norms", params=norms)),
        "all": loop(inline("all")),
    }
    times: dict[str, list[float]] = {k: [] for k in loops}
    for body, _ in loops.values():  # warm-up
        body()
    for _ in range(rounds):
        for name, (body, _) in loops.items():
            t0 = time.process_time()
            body()
            times[name].append((time.process_time() - t0) / steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    statuses = {k: sorted(set(mon.history["status"])) for k, (_, mon) in loops.items() if mon is not None}
    for mon in (m for _, m in loops.values() if m is not None):
        mon.close()
    tmp.cleanup()
    size = f"GPT {cfg.layers}x{cfg.width}, T={cfg.T}, vocab {cfg.vocab}, N={n}"
    spread = {k: f"{min(v):.3g}–{max(v):.3g} s" for k, v in times.items()}
    rows = []
    for key, label, aim in (
        ("norms", "inline GNS of the LayerNorm parameters (params=norms, default metrics), every step", 1.10),
        ("all", "inline default measurement of all parameters, every step", 1.5),
    ):
        ratio = med[key] / med["unmonitored"]
        rows.append(
            {
                "name": f"{label} ({size}, log_dir set)",
                "measured": med[key],
                "baseline": "the same loop unmonitored",
                "baseline_value": med["unmonitored"],
                "ratio": ratio,
                "unit": "CPU s per step",
                "target": f"≤ {aim:.2f}×",
                "aim_met": ratio <= aim,
                "note": (
                    f"median of {rounds} interleaved rounds of {steps} steps; per-step range monitored "
                    f"{spread[key]}, unmonitored {spread['unmonitored']}; statuses {statuses[key]}"
                ),
            }
        )
    return rows
