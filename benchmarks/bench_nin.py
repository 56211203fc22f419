"""NIN networks (paper 001): cost of a NIN in a training step, step throughput, and the batched σε ensemble.

All timings in one process with one torch thread, float32, on the embedded 5,000 MNIST digits
(784 inputs, 3,000 training samples).

1. One SGD step (forward, backward, update; cross-entropy) of the 784-1024-10 ReLU MLP at batch 1000 with
   one NIN on the hidden pre-activations (``attach_nins``, "epoch" mode: ε looked up per sample) against
   the same step without it. Target ≤ 1.05×. Steps of the two kinds are interleaved and the ratio is the
   median over adjacent pairs, so machine load (shared CPUs) affects both alike.
2. The same plain step's throughput (6·B·(#weights) flop per step) against one large square float32 matmul
   (2048³ · 2 flop) on the same machine. Aim ≥ 0.5.
3. A σε sweep of K = 8 MLPs 784-128-10 (batch 128, 4 epochs, CE, NIN "epoch" mode) trained as one batched
   ensemble (``train_ensemble``) against the K runs one after another with the per-model trainer
   (``noiseprobe.nin.probe.train``, same records: epoch 0 and last, no Hessian probes). Aim ≥ 2×. Two
   ensemble cases: the sweep at one seed (the experiments' chunks: one data order, first layer as one wide
   matmul) and K different seeds (per-model batches, ``torch.bmm``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from noiseprobe.data.embedded import load_default
from noiseprobe.nin.ensemble import train_ensemble
from noiseprobe.nin.injector import NINSpec, attach_nins
from noiseprobe.nin.probe import train


def _mlp(d_in: int, width: int, classes: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, classes))


def _step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, params: list[torch.Tensor],
             before: Callable[[], None] | None = None) -> Callable[[], None]:
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


def _nin_overhead(quick: bool) -> list[dict]:
    xtr, ytr, _, _ = load_default()
    batch, width = 1000, 1024
    x, y = xtr[:batch], ytr[:batch]
    plain = _mlp(784, width, 10, 0)
    noisy = _mlp(784, width, 10, 0)
    handle = attach_nins(noisy, NINSpec("0", sigma=1.0, mode="epoch"), n_train=xtr.shape[0],
                         generator=torch.Generator().manual_seed(1))
    idx = torch.arange(batch)
    noisy_step = _step_fn(noisy, x, y, 1e-4, list(noisy.parameters()) + handle.niws,  # the NIW is trained too
                          before=lambda: handle.set_sample_indices(idx))
    plain_step = _step_fn(plain, x, y, 1e-4, list(plain.parameters()))
    repeats = 15 if quick else 60
    for fn in (plain_step, noisy_step):
        fn()
    t_plain, t_nin = [], []
    for _ in range(repeats):
        for fn, acc in ((plain_step, t_plain), (noisy_step, t_nin)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    m_plain, m_nin = statistics.median(t_plain), statistics.median(t_nin)
    ratio = statistics.median(n / p for n, p in zip(t_nin, t_plain))  # paired: adjacent steps share the load
    flop = 6.0 * batch * (784 * width + width * 10)
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    a @ b
    t_mm = []
    for _ in range(max(3, repeats // 5)):
        t0 = time.perf_counter()
        a @ b
        t_mm.append(time.perf_counter() - t0)
    mm_rate = 2.0 * 2048**3 / statistics.median(t_mm)
    step_rate = flop / m_plain
    return [
        {"name": "training step 784-1024-10, batch 1000, with one NIN", "baseline": "same step without the NIN",
         "measured": m_nin * 1e3, "baseline_value": m_plain * 1e3, "ratio": ratio, "unit": "ms/step",
         "target": "<= 1.05", "passed": ratio <= 1.05,
         "note": f"median of {repeats} adjacent-pair ratios; NIW trained; epoch-mode table lookup"},
        {"name": "plain step throughput 784-1024-10, batch 1000", "baseline": "2048x2048 float32 matmul",
         "measured": step_rate / 1e9, "baseline_value": mm_rate / 1e9, "ratio": step_rate / mm_rate,
         "unit": "GFLOP/s", "target": ">= 0.5", "passed": step_rate / mm_rate >= 0.5,
         "note": "6*B*weights flop per SGD step (forward + two backward matmuls)"},
    ]


def _ensemble_speedup(quick: bool) -> list[dict]:
    data = load_default()
    xtr, ytr, xte, yte = data
    k, width, batch, epochs = 8, 128, 128, 1 if quick else 4
    sigmas = [0.05 * 2**i for i in range(k)]
    kw = dict(loss="ce", lr=0.05, batch_size=batch, epochs=epochs)

    def batched(replicas: list[int]) -> Callable[[], None]:
        return lambda: train_ensemble(xtr, ytr, xte, yte, hidden=[width], sigmas=sigmas, replicas=replicas,
                                      seed=0, record_epochs=[], probe_samples=256, **kw)

    def sequential() -> None:
        for i, s in enumerate(sigmas):
            model = _mlp(784, width, 10, i)
            handle = attach_nins(model, NINSpec("0", sigma=s, mode="epoch"), n_train=xtr.shape[0],
                                 generator=torch.Generator().manual_seed(i))
            train(model, handle, data, record_every=epochs, hessian_probes=0, probe_samples=256, seed=i, **kw)

    times = {}
    cases = (("one seed", batched([0] * k)), ("K seeds", batched(list(range(k)))), ("sequential", sequential))
    for name, fn in cases:
        fn()
        best = float("inf")
        for _ in range(1 if quick else 3):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        times[name] = best
    steps = k * epochs * (xtr.shape[0] // batch)
    rows = []
    for name, how in (("one seed", "shared data order (common random numbers): first layer as one wide matmul"),
                      ("K seeds", "a different data order per model: torch.bmm on gathered batches")):
        ratio = times["sequential"] / times[name]
        rows.append({"name": f"sigma sweep, K={k} MLPs 784-{width}-10, batch {batch}, batched ensemble, {name}",
                     "baseline": f"K={k} sequential per-model runs (nin.probe.train)",
                     "measured": steps / times[name], "baseline_value": steps / times["sequential"],
                     "ratio": ratio, "unit": "model-steps/s", "target": ">= 2", "passed": ratio >= 2.0,
                     "note": f"{how}; {steps} SGD steps in all, records at epoch 0 and {epochs}; best of repeats"})
    return rows


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    return _nin_overhead(quick) + _ensemble_speedup(quick)


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
