"""NoiseMonitor cost at scale: transformers' GPT-2 built from its config (tied head, random weights,
float32, CPU, one torch thread, AdamW), a default measurement (``mon.measure``) against one unmonitored
training step (forward, backward, AdamW step) of the same batch of random token ids (per-sample loss: the
sequence's token-mean cross-entropy), median times interleaved in one process, and the peak memory each
adds above the RSS after building model, optimizer state and data (a fresh subprocess per computation,
as bench_transformer).

GPT-2 small (124 M, N = 8, T = 128) here; GPT-2 medium (355 M, N = 8, T = 256) is the area ``gpt2_medium``
(``python benchmarks/run.py gpt2_medium``; about 14 GB peak RSS: check ``free -g`` and run it alone).
Aims (issue 18.7): ≤ 2× a step, added peak memory ≤ 2× the step's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from bench_monitor import _median_times
from bench_transformer import _vm, step_memory_row
from noiseprobe import NoiseMonitor
from noiseprobe.probes.sample_losses import TokenMeanCrossEntropy

#: size: (n_embd, n_layer, n_head, N, T)
SIZES = {"quick": (64, 2, 4, 4, 32), "small": (768, 12, 12, 8, 128), "medium": (1024, 24, 16, 8, 256)}
token_ce = TokenMeanCrossEntropy()


def _setup(size: str) -> dict[str, Callable[[], None]]:
    from transformers import GPT2Config, GPT2LMHeadModel

    width, layers, heads, n, t = SIZES[size]
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        n_positions=1024,
        attn_pdrop=0.0,
        embd_pdrop=0.0,
        resid_pdrop=0.0,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(cfg).train()
    ids = torch.randint(0, cfg.vocab_size, (n, t + 1), generator=torch.Generator().manual_seed(1))
    x, y = ids[:, :-1], ids[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: every round sees the same weights

    def forward(m: torch.nn.Module, inputs: Tensor) -> Tensor:
        return m(inputs).logits

    mon = NoiseMonitor(model, token_ce, every=1, forward=forward)

    def step() -> None:
        opt.zero_grad()
        token_ce(forward(model, x), y).mean().backward()
        opt.step()

    def measure() -> None:
        row = mon.measure((x, y), opt)
        if row.get("status", "ok") not in ("ok", None, ""):
            raise RuntimeError(f"measurement status {row.get('status')!r}")

    step()
    return {"step": step, "measure": measure}


def _peak_main(size: str, name: str) -> None:
    torch.set_num_threads(1)
    fn = _setup(size)[name]
    before = _vm("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    fn()
    peak = _vm("VmHWM")
    print(json.dumps({"before_mb": before, "peak_mb": peak, "own_mb": peak - before}))


def peak_memory(size: str, name: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peak", size, name]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=3600)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False, sizes: tuple[str, ...] = ("small",)) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for size in ("quick",) if quick else sizes:
        width, layers, _, n, t = SIZES[size]
        label = f"GPT-2 {size} ({layers}x{width}, vocab 50257, tied head), N={n}, T={t}, AdamW"
        try:
            t_ = _median_times(_setup(size), rounds=2 if size != "small" else 3)
        except RuntimeError as err:  # the monitor refused the measurement (its status): reported, not hidden
            rows.append(
                {
                    "name": f"default measurement ({label})",
                    "measured": None,
                    "baseline": "one AdamW training step of the same batch",
                    "baseline_value": None,
                    "ratio": None,
                    "unit": "s",
                    "target": "<= 2x",
                    "aim_met": False,
                    "note": f"refused: {err}",
                }
            )
            continue
        mem = {name: peak_memory(size, name) for name in ("step", "measure")}
        ratio = t_["measure"] / t_["step"]
        rows += [
            {
                "name": f"default measurement: time ({label})",
                "measured": t_["measure"],
                "baseline": "one AdamW training step of the same batch",
                "baseline_value": t_["step"],
                "ratio": ratio,
                "unit": "s",
                "target": "<= 2x",
                "aim_met": ratio <= 2,
                "note": "median of interleaved rounds, one process",
            },
            step_memory_row(f"default measurement: peak memory ({label})", mem),
        ]
    return rows


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--peak":
        _peak_main(sys.argv[2], sys.argv[3])
    else:
        for r in run("--quick" in sys.argv, tuple(a for a in sys.argv[1:] if a in SIZES) or ("small",)):
            print(json.dumps(r))
