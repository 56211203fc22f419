"""NIN networks (paper 001): cost of a NIN in a training step, step throughput, and the batched σε ensemble.

All timings in one process with one torch thread, float32, on the embedded 5,000 MNIST digits
(784 inputs, 3,000 training samples). Times are the thread's CPU time (``time.thread_time``): the code is
single-threaded, and on a shared machine wall time would also count other users' work.

1. One SGD step (forward, backward, update; cross-entropy) of the 784-1024-10 ReLU MLP at batch 1000 with
   one NIN on the hidden pre-activations (``attach_nins``, "epoch" mode: ε looked up per sample, injected
   by one fused addmm) against the same step without it. Steps of the two kinds are interleaved, the
   statistic is the median of the adjacent-pair ratios, and the aim (≤ 1.05×) applies to its 95 %
   bootstrap upper bound (2,000 resamples of the pairs).
2. The same plain step's matmul throughput (its matmul FLOPs counted by the torch profiler) against one
   large square float32 matmul (2048³ · 2 flop) on the same machine. Aim ≥ 0.5.
3. A σε sweep of K = 8 MLPs 784-128-10 (batch 128, 4 epochs, CE, NIN "epoch" mode) trained as one batched
   ensemble (``train_ensemble``) against the K runs one after another with the per-model trainer
   (``noiseprobe.nin.probe.train``, same records: epoch 0 and last, no Hessian probes). Two ensemble
   cases: the sweep at one seed (the experiments' chunks: one data order, first layer as one wide matmul)
   and K different seeds (per-model batches, ``torch.bmm``). Aim: ≥ min(2× the sequential runs, 0.7 of
   the machine's matmul rate), i.e. met when the speed-up is ≥ 2 or the ensemble's matmul FLOP rate
   (all matmul FLOPs of the run, training and records, counted by the torch profiler, over its time) is
   ≥ 0.7 of the 2048³ matmul rate. The floor rows state that rate and the ensemble's distance to it: the
   time its matmul FLOPs take at the large-matmul rate (no run can be faster than that on this machine
   with these FLOPs), and each run's time over it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from noiseprobe.data.embedded import load_default
from noiseprobe.nin.ensemble import train_ensemble
from noiseprobe.nin.injector import NINSpec, attach_nins
from noiseprobe.nin.probe import train


def _mlp(d_in: int, width: int, classes: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, classes))


def _step_fn(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    params: list[torch.Tensor],
    before: Callable[[], None] | None = None,
) -> Callable[[], None]:
    """One plain-SGD step on ``params`` (cross-entropy); ``before`` runs first (e.g. the NIN's batch indices)."""

    def step() -> None:
        if before is not None:
            before()
        loss = nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)

    return step


def _cpu(fn: Callable[[], object]) -> float:
    t0 = time.thread_time()
    fn()
    return time.thread_time() - t0


def _best_cpu(fn: Callable[[], object], repeats: int) -> float:
    """Smallest CPU time of ``repeats`` calls after one warm-up call."""
    fn()
    return min(_cpu(fn) for _ in range(repeats))


def _matmul_flops(fn: Callable[[], object]) -> float:
    """Floating-point operations of every matmul-like op (mm, addmm, bmm, baddbmm) ``fn`` runs (torch profiler)."""
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        fn()
    return float(sum(e.flops for e in prof.key_averages() if e.flops))


def _matmul_rate(repeats: int) -> float:
    """FLOP/s of one 2048×2048 float32 matmul on this thread (best of ``repeats``)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2.0 * 2048**3 / _best_cpu(lambda: a @ b, repeats)


def _aim(of: str, op: str, value: float) -> dict:
    return {"of": of, "op": op, "value": value}


def _nin_overhead(quick: bool, mm_rate: float) -> list[dict]:
    xtr, ytr, _, _ = load_default()
    batch, width = 1000, 1024
    x, y = xtr[:batch], ytr[:batch]
    plain = _mlp(784, width, 10, 0)
    noisy = _mlp(784, width, 10, 0)
    handle = attach_nins(
        noisy, NINSpec("0", sigma=1.0, mode="epoch"), n_train=xtr.shape[0], generator=torch.Generator().manual_seed(1)
    )
    idx = torch.arange(batch)
    noisy_step = _step_fn(
        noisy,
        x,
        y,
        1e-4,
        list(noisy.parameters()) + handle.niws,  # the NIW is trained too
        before=lambda: handle.set_sample_indices(idx),
    )
    plain_step = _step_fn(plain, x, y, 1e-4, list(plain.parameters()))
    repeats = 20 if quick else 80
    for fn in (plain_step, noisy_step):
        fn()
    t_plain, t_nin = [], []
    for _ in range(repeats):
        t_plain.append(_cpu(plain_step))
        t_nin.append(_cpu(noisy_step))
    ratios = np.asarray(t_nin) / np.asarray(t_plain)  # paired: adjacent steps share the load
    ratio = float(np.median(ratios))
    boot = np.median(ratios[np.random.default_rng(0).integers(0, repeats, (2000, repeats))], axis=1)
    upper = float(np.quantile(boot, 0.95))
    m_plain, m_nin = statistics.median(t_plain), statistics.median(t_nin)
    flops = _matmul_flops(plain_step)
    step_rate = flops / m_plain
    return [
        {
            "name": "training step 784-1024-10, batch 1000, with one NIN",
            "baseline": "same step without the NIN",
            "measured": m_nin * 1e3,
            "baseline_value": m_plain * 1e3,
            "ratio": ratio,
            "unit": "ms/step",
            "target": "95% bootstrap upper bound of the ratio <= 1.05",
            "aim": _aim("ratio_upper", "<=", 1.05),
            "ratio_upper": upper,
            "passed": upper <= 1.05,
            "note": f"median of {repeats} interleaved pair ratios; 95% bootstrap upper bound {upper:.3f}; NIW trained; "
            "epoch-mode table lookup",
        },
        {
            "name": "plain step matmul throughput 784-1024-10, batch 1000",
            "baseline": "2048x2048 float32 matmul",
            "measured": step_rate / 1e9,
            "baseline_value": mm_rate / 1e9,
            "ratio": step_rate / mm_rate,
            "unit": "GFLOP/s",
            "target": "ratio >= 0.5",
            "aim": _aim("ratio", ">=", 0.5),
            "passed": step_rate / mm_rate >= 0.5,
            "note": f"{flops / 1e9:.2f} GFLOP of matmuls per SGD step (profiler count) over the step's CPU time",
        },
    ]


def _ensemble_speedup(quick: bool, mm_rate: float) -> list[dict]:
    data = load_default()
    xtr, ytr, xte, yte = data
    k, width, batch, epochs = 8, 128, 128, 1 if quick else 4
    sigmas = [0.05 * 2**i for i in range(k)]
    kw = dict(loss="ce", lr=0.05, batch_size=batch, epochs=epochs)

    def batched(replicas: list[int]) -> Callable[[], None]:
        return lambda: train_ensemble(
            xtr,
            ytr,
            xte,
            yte,
            hidden=[width],
            sigmas=sigmas,
            replicas=replicas,
            seed=0,
            record_epochs=[],
            probe_samples=256,
            **kw,
        )

    def sequential() -> None:
        for i, s in enumerate(sigmas):
            model = _mlp(784, width, 10, i)
            handle = attach_nins(
                model,
                NINSpec("0", sigma=s, mode="epoch"),
                n_train=xtr.shape[0],
                generator=torch.Generator().manual_seed(i),
            )
            train(model, handle, data, record_every=epochs, hessian_probes=0, probe_samples=256, seed=i, **kw)

    cases = {"one seed": batched([0] * k), "K seeds": batched(list(range(k))), "sequential": sequential}
    times = {name: _best_cpu(fn, 1 if quick else 3) for name, fn in cases.items()}
    flops = {name: _matmul_flops(fn) for name, fn in cases.items()}
    steps = k * epochs * (xtr.shape[0] // batch)
    rows = []
    for name, how in (
        ("one seed", "shared data order (common random numbers): first layer as one wide matmul"),
        ("K seeds", "a different data order per model: torch.bmm on gathered batches"),
    ):
        ratio = times["sequential"] / times[name]
        efficiency = flops[name] / times[name] / mm_rate
        met = ratio >= 2.0 or efficiency >= 0.7
        rows.append(
            {
                "name": f"sigma sweep, K={k} MLPs 784-{width}-10, batch {batch}, batched ensemble, {name}",
                "baseline": f"K={k} sequential per-model runs (nin.probe.train)",
                "measured": steps / times[name],
                "baseline_value": steps / times["sequential"],
                "ratio": ratio,
                "unit": "model-steps/s",
                "target": "ratio >= 2 or matmul FLOP rate >= 0.7 of the 2048³ matmul rate",
                "aim": {"any": [_aim("ratio", ">=", 2.0), _aim("matmul_efficiency", ">=", 0.7)]},
                "matmul_efficiency": efficiency,
                "passed": met,
                "note": f"{how}; {steps} SGD steps in all, records at epoch 0 and {epochs}; best of repeats; "
                f"matmul FLOP rate {efficiency:.2f} of the 2048³ matmul rate",
            }
        )
    for name in ("one seed", "K seeds", "sequential"):
        floor = flops[name] / mm_rate
        rows.append(
            {
                "name": f"floor: the {name} run's matmul FLOPs at the 2048³ matmul rate",
                "baseline": "the run's CPU time",
                "measured": floor,
                "baseline_value": times[name],
                "ratio": times[name] / floor,
                "unit": "s",
                "target": "info (distance to the floor)",
                "aim": None,
                "passed": None,
                "note": f"{flops[name] / 1e9:.1f} GFLOP of matmuls (profiler count) at "
                f"{mm_rate / 1e9:.0f} GFLOP/s; ratio = time over floor",
            }
        )
    return rows


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    mm_rate = _matmul_rate(3 if quick else 7)
    return _nin_overhead(quick, mm_rate) + _ensemble_speedup(quick, mm_rate)


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
