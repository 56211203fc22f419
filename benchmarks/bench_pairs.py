"""Where the token-pair and explicit forms of a Linear block's Gram matrix cross (``OuterFactor.gram``,
docs/per_sample_layers.md "Growth with N, T, width d and vocabulary V"): for GPT-2 small's block shapes
(m × K = outputs × inputs + bias column) at N = 8 and T = 32 … 256, the time of each form (median of 3,
interleaved, one thread, random factors, float32) against the cost model's FLOP counts, N²T²(m + K) and
N·T·m·K + N²·m·K. Informational rows: ratio = pair time / explicit time (< 1: pairs faster)."""

from __future__ import annotations

import statistics
import time

import torch

from noiseprobe.probes.factors import Layout, OuterFactor, use_pairs

#: (m, K): attention qkv (768 → 2304), MLP in (768 → 3072), MLP out (3072 → 768), attention out (768 → 768)
SHAPES = [(2304, 769), (3072, 769), (768, 3073), (768, 769)]


def _gram_times(n: int, t: int, m: int, k: int, rounds: int) -> dict[bool, float]:
    g = torch.Generator().manual_seed(0)
    f = OuterFactor(torch.randn(n, t, m, generator=g), torch.randn(n, t, k, generator=g), Layout(m, k - 1, True, True))
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for pairs in (False, True):
            f._pairs = lambda p=pairs: p  # type: ignore[method-assign]  # force one form
            t0 = time.perf_counter()
            f.gram()
            times[pairs].append(time.perf_counter() - t0)
    return {p: statistics.median(v) for p, v in times.items()}


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    n = 8
    shapes, ts, rounds = ([(64, 33)], (8, 32), 1) if quick else (SHAPES, (32, 64, 128, 256), 3)
    rows = []
    for m, k in shapes:
        for t in ts:
            tm = _gram_times(n, t, m, k, rounds)
            flops = n * n * t * t * (m + k) / (n * t * m * k + n * n * m * k)
            rows.append(
                {
                    "name": f"Gram of a Linear block {k - 1}→{m} (+bias), N={n}, T={t}: token pairs vs explicit rows",
                    "measured": tm[True],
                    "baseline": "explicit rows (chunks, then their Gram)",
                    "baseline_value": tm[False],
                    "ratio": tm[True] / tm[False],
                    "unit": "s",
                    "target": "info",
                    "aim_met": None,
                    "note": f"FLOP ratio pairs/explicit {flops:.2f}; the cost model picks "
                    f"{'pairs' if use_pairs(n, t, m, k) else 'explicit'}",
                }
            )
    return rows
