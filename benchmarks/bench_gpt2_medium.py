"""NoiseMonitor cost on GPT-2 medium (355 M, N = 8, T = 256): bench_gpt2's measurement at the medium size,
its own area so that it is run (and re-run) alone — about 10 GB peak: check ``free -g`` first. Aims
(issue 18.7): one default measurement ≤ 2× an AdamW step, added peak memory ≤ 2× the step's."""

from __future__ import annotations

from bench_gpt2 import run as run_sizes


def run(quick: bool = False) -> list[dict]:
    return run_sizes(quick, sizes=("medium",))
