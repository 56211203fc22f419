"""NoiseMonitor overhead inside a training loop, on the GPT-style decoder of bench_transformer
(4 pre-LayerNorm blocks, width 256, 4 heads, T = 128, vocabulary 512, N = 64 sequences of a learnable
Markov chain, float32, one torch thread; SGD).

1. One default measurement (tr Σ, |G|², B_simple with its interval, temperature, top-10 of C) against one
   training step (forward, backward, optimizer step) of the same batch: median times, interleaved in one
   process. Aim ≤ 2.5×, so that ``every = 50`` costs ≤ 5 % (reported as median measurement /
   (50 × median step)).
2. Sharpness while training (SGD, batches of 8; the Hessian on a probe batch of 8 sequences; a
   measurement every 50 steps after 200 burn-in steps): Hessian-vector products per measurement after
   the first, warm-started Lanczos at 1e-3 estimated relative accuracy. Aim ≤ 10.
"""

from __future__ import annotations

import statistics
import time

import torch
from bench_transformer import _config, _model, markov_tokens, token_ce

from noiseprobe import NoiseMonitor


def _median_times(fns: dict, rounds: int) -> dict[str, float]:
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    cfg, n = _config(quick)
    model = _model(cfg)
    ids, y = markov_tokens(cfg, n)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every round sees the same weights
    mon = NoiseMonitor(model, token_ce, every=1)

    def train_step() -> None:
        opt.zero_grad()
        token_ce(model(ids), y).mean().backward()
        opt.step()

    def measure() -> None:
        mon.measure((ids, y), opt)

    t = _median_times({"step": train_step, "measure": measure}, rounds=3 if quick else 5)
    ratio = t["measure"] / t["step"]
    rows = [
        {
            "name": "default measurement (tr Σ, |G|², B_simple ± CI, temperature, top-10 of C)",
            "measured": t["measure"],
            "baseline": "one training step of the same batch",
            "baseline_value": t["step"],
            "ratio": ratio,
            "unit": "s",
            "target": "≤ 2.5×",
            "passed": ratio <= 2.5,
            "note": f"every=50 costs {100 * t['measure'] / (50 * t['step']):.1f} % (aim ≤ 5 %)",
        }
    ]

    # sharpness while training: warm-started Lanczos
    model = _model(cfg)
    data, targets = markov_tokens(cfg, 512, seed=1)
    probe = (data[:8], targets[:8])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    burn, every, calls = (20, 5, 4) if quick else (200, 50, 5)
    mon = NoiseMonitor(model, token_ce, every=every, metrics=["sharpness"])
    gen = torch.Generator().manual_seed(2)
    hvps = []
    for step in range(burn + every * calls):
        idx = torch.randint(0, 512, (8,), generator=gen)
        opt.zero_grad()
        token_ce(model(data[idx]), targets[idx]).mean().backward()
        if step >= burn and (step - burn) % every == 0:
            hvps.append(mon.measure(probe, opt)["sharpness_hvps"])
        opt.step()
    after = max(hvps[1:])
    rows.append(
        {
            "name": "sharpness: Hessian-vector products per measurement after the first (warm start)",
            "measured": after,
            "baseline": "first (cold) measurement",
            "baseline_value": hvps[0],
            "ratio": after / hvps[0],
            "unit": "HVPs",
            "target": "≤ 10",
            "passed": after <= 10,
            "note": "per call: " + ", ".join(f"{h:g}" for h in hvps),
        }
    )
    return rows
