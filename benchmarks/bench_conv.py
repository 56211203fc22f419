"""NoiseMonitor cost on convolutional nets: the ResNet-18 layout of ``noiseprobe.models.resnet18``
(11.2 M parameters, 32×32 inputs, 10 classes, N = 32 random images, cross-entropy, AdamW, float32, one
torch thread), with BatchNorm in eval mode, with GroupNorm, and with BatchNorm in train mode (the
micro-batch estimator, m = 4, chosen automatically).

Per variant: one default measurement (``mon.measure``: tr Σ, |G|², B_simple, temperature, top-10 of C)
against one unmonitored training step (forward, backward, AdamW step) of the same batch — median times,
interleaved in one process — and the peak memory each adds: peak RSS of a fresh subprocess per
computation above its RSS after building model, optimizer state and data (as bench_transformer).
Aims (issue 18.6): per-sample (eval BatchNorm, GroupNorm) ≤ 3× a step and ≤ 2× its added memory;
micro-batch (train BatchNorm, m = 4) ≤ 1.5× a step.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from bench_monitor import _median_times
from bench_transformer import _vm, step_memory_row
from noiseprobe import NoiseMonitor
from noiseprobe.models import resnet18

#: variant: (norm, train mode, monitor keyword arguments, aim on the time ratio)
VARIANTS: dict[str, tuple[str, bool, dict, float]] = {
    "bn-eval": ("batch", False, {}, 3.0),
    "groupnorm": ("group", True, {}, 3.0),
    "bn-train-m4": ("batch", True, {"estimator": "micro-batch", "micro_batches": 4}, 1.5),
}


def per_sample_ce(out: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(out, y, reduction="none")


def _setup(variant: str, quick: bool) -> dict[str, Callable[[], None]]:
    norm, train, kwargs, _ = VARIANTS[variant]
    torch.manual_seed(0)
    width, n = (8, 8) if quick else (64, 32)
    model = resnet18(width=width, norm=norm).train(train)
    x, y = torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: every round sees the same weights
    mon = NoiseMonitor(model, per_sample_ce, every=1, **kwargs)

    def step() -> None:
        opt.zero_grad()
        per_sample_ce(model(x), y).mean().backward()
        opt.step()

    def measure() -> None:
        row = mon.measure((x, y), opt)
        if row.get("status", "ok") not in ("ok", None, ""):
            raise RuntimeError(f"measurement status {row.get('status')!r}")

    step()  # optimizer state exists before any memory mark
    return {"step": step, "measure": measure}


def _peak_main(variant: str, name: str, quick: bool) -> None:
    torch.set_num_threads(1)
    fn = _setup(variant, quick)[name]
    before = _vm("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    fn()
    peak = _vm("VmHWM")
    print(json.dumps({"before_mb": before, "peak_mb": peak, "own_mb": peak - before}))


def peak_memory(variant: str, name: str, quick: bool) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peak", variant, name] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=1800)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False, variants: tuple[str, ...] = tuple(VARIANTS)) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for variant in variants:
        _, _, kwargs, aim = VARIANTS[variant]
        fns = _setup(variant, quick)
        t = _median_times(fns, rounds=2 if quick else 5)
        ratio = t["measure"] / t["step"]
        size = f"ResNet-18 layout, {variant}, 32×32, N={8 if quick else 32}"
        est = kwargs.get("estimator", "auto → per-sample")
        rows.append(
            {
                "name": f"default measurement ({est}): time ({size})",
                "measured": t["measure"],
                "baseline": "one AdamW training step of the same batch",
                "baseline_value": t["step"],
                "ratio": ratio,
                "unit": "s",
                "target": f"<= {aim:g}x",
                "aim_met": ratio <= aim,
                "note": "median of interleaved rounds, one process",
            }
        )
        if variant == "bn-train-m4":
            continue  # the aim for the micro-batch estimator is on time only
        mem = {name: peak_memory(variant, name, quick) for name in ("step", "measure")}
        rows.append(step_memory_row(f"default measurement ({est}): peak memory ({size})", mem))
    return rows


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--peak":
        _peak_main(sys.argv[2], sys.argv[3], "--quick" in sys.argv)
    else:
        for r in run("--quick" in sys.argv, tuple(a for a in sys.argv[1:] if a in VARIANTS) or tuple(VARIANTS)):
            print(json.dumps(r))
