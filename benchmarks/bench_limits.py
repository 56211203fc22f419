"""Singular limits (paper 003): speed of the batched noisy-GD engine, and the cost of the regulariser.

1. Chain-steps per second of ``noisy_gd`` (all chains advanced by one batched op per step; both the
   ``vmap(grad)`` and the gradient-of-the-sum paths) against a per-chain Python loop doing the same work
   (``torch.func.grad`` of the same L̂ = L(w+η) on the Fig. 1–2 circle loss, same noise), timed in one
   process with one torch thread.
2. Cost of one Reg(w) and one ∇Reg(w) evaluation (Theorem A's regulariser, Reg = ½ tr(C̃ ∇²_η L̂(w,0)))
   for a small MLP with dropout on its hidden units, relative to one loss + gradient evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch.func import grad

from noiseprobe.limits.simulate import noisy_gd


def _circle_loss(w: torch.Tensor) -> torch.Tensor:
    """L = ⅛ (1.5 + w₁)(|w|² − 1)² (Figs. 1–2 reproduction loss); broadcasts over leading axes."""
    return 0.125 * (1.5 + w[..., 0]) * ((w ** 2).sum(-1) - 1.0) ** 2


def _loss_hat(w: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """Example 1.2: L̂(w, η) = L(w + η)."""
    return _circle_loss(w + eta)


def _best_of(fn: Callable[[], object], repeats: int) -> float:
    """Smallest wall time of ``repeats`` calls (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _per_chain_loop(chains: int, steps: int, lr: float, sigma: float) -> np.ndarray:
    """Baseline: a Python loop over steps and chains, one ``grad`` call per chain and step."""
    g = grad(_loss_hat)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(chains):
        w = torch.tensor([0.0, 1.5], dtype=torch.float64)
        etas = torch.from_numpy(sigma * rng.standard_normal((steps, 2)))
        for k in range(steps):
            w = w - lr * g(w, etas[k])
        out.append(w)
    return torch.stack(out).numpy()


def _engine_rows(quick: bool) -> list[dict]:
    lr, sigma = 0.1, 0.1
    base_chains, base_steps = (4, 50) if quick else (8, 200)
    chains, steps = (1000, 200) if quick else (2000, 1000)
    t_base = _best_of(lambda: _per_chain_loop(base_chains, base_steps, lr, sigma), 1 if quick else 2)
    base_rate = base_chains * base_steps / t_base
    rows = []
    for vectorised, label in ((False, "vmap(grad) over chains"), (True, "grad of the summed loss")):
        t = _best_of(lambda: noisy_gd(_loss_hat, [0.0, 1.5], lr=lr, sigma=sigma, eta_dim=2, steps=steps,
                                      chains=chains, record_every=steps, vectorised=vectorised),
                     1 if quick else 2)
        rate = chains * steps / t
        rows.append({"name": f"noisy_gd chain-steps/s, {label} ({chains} chains × {steps} steps, d=2)",
                     "baseline": f"per-chain Python loop of torch.func.grad ({base_chains} chains × {base_steps} steps)",
                     "measured": rate, "baseline_value": base_rate, "ratio": rate / base_rate,
                     "unit": "chain-steps/s", "target": "ratio >= 100", "passed": rate / base_rate >= 100,
                     "note": "includes noise drawing from per-chain streams and divergence checks"})
    return rows


def run(quick: bool = False) -> list[dict]:
    """All rows of this area (``quick`` shrinks the work for smoke tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _engine_rows(quick)
    finally:
        torch.set_num_threads(threads)
