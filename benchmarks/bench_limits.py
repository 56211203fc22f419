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

from noiseprobe.limits import noises
from noiseprobe.limits.regulariser import grad_regulariser, regulariser
from noiseprobe.limits.simulate import noisy_gd


def _circle_loss(w: torch.Tensor) -> torch.Tensor:
    """L = ⅛ (1.5 + w₁)(|w|² − 1)² (Figs. 1–2 reproduction loss); broadcasts over leading axes."""
    return 0.125 * (1.5 + w[..., 0]) * ((w ** 2).sum(-1) - 1.0) ** 2


def _loss_hat(w: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """Example 1.2: L̂(w, η) = L(w + η)."""
    return _circle_loss(w + eta)


def _best_of(fn: Callable[[], object], budget: float) -> float:
    """Smallest wall time of repeated calls (after two warm-up calls), repeating for about ``budget``
    seconds (3 to 50 calls): the minimum is the least disturbed by other load on a shared machine."""
    fn()
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    best = first
    for _ in range(max(2, min(49, int(budget / max(first, 1e-9))))):
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
    budget = 1.0 if quick else 5.0
    t_base = _best_of(lambda: _per_chain_loop(base_chains, base_steps, lr, sigma), budget)
    base_rate = base_chains * base_steps / t_base
    rows = []
    for vectorised, label in ((False, "vmap(grad) over chains"), (True, "grad of the summed loss")):
        t = _best_of(lambda: noisy_gd(_loss_hat, [0.0, 1.5], lr=lr, sigma=sigma, eta_dim=2, steps=steps,
                                      chains=chains, record_every=steps, vectorised=vectorised),
                     budget)
        rate = chains * steps / t
        rows.append({"name": f"noisy_gd chain-steps/s, {label} ({chains} chains × {steps} steps, d=2)",
                     "baseline": f"per-chain Python loop of torch.func.grad ({base_chains} chains × {base_steps} steps)",
                     "measured": rate, "baseline_value": base_rate, "ratio": rate / base_rate,
                     "unit": "chain-steps/s", "target": "ratio >= 100", "passed": rate / base_rate >= 100,
                     "note": "includes noise drawing from per-chain streams and divergence checks"})
    return rows


def _mlp(inputs: int, width: int, samples: int) -> tuple[Callable, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A one-hidden-layer tanh MLP f(x) = Σ_j a_j tanh(b_j·x): per-unit outputs, data and a parameter vector
    w = (a (J), b (J·D)) with teacher targets (square loss, ½ convention in the noise builders)."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(samples, inputs, generator=gen, dtype=torch.float64)

    def units(w: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        a, b = w[..., :width], w[..., width:].reshape(*w.shape[:-1], width, inputs)
        return a[..., None, :] * torch.tanh(X @ b.transpose(-1, -2))

    w = torch.randn(width * (inputs + 1), generator=gen, dtype=torch.float64) / inputs ** 0.5
    y = units(torch.randn_like(w), X).sum(-1)
    return units, X, y, w


def _reg_rows(quick: bool) -> list[dict]:
    inputs, width, samples = 5, 32, 64
    units, X, y, w = _mlp(inputs, width, samples)
    d = w.numel()
    cases = {
        f"dropout on {width} hidden units (m = {width})": noises.dropout(units, X, y, d=d, n_units=width, sigma=0.1),
        f"Gaussian DropConnect on all weights (m = d = {d})":
            noises.dropconnect(lambda v: 0.5 * ((units(v, X).sum(-1) - y) ** 2).mean(-1), d, sigma=0.1),
    }
    budget = 0.5 if quick else 3.0
    rows = []
    for label, noise in cases.items():
        t_base = _best_of(lambda n=noise: grad(n.loss)(w), budget)
        for what, fn in (("Reg(w)", regulariser), ("∇Reg(w)", grad_regulariser)):
            t = _best_of(lambda n=noise, f=fn: f(n, w), budget)
            rows.append({"name": f"{what} = ½tr(C̃∇²_ηL̂(w,0)), MLP {inputs}-{width}-1 (d = {d}), {label}",
                         "baseline": f"one loss + gradient evaluation ({samples} samples)",
                         "measured": t * 1e3, "baseline_value": t_base * 1e3, "ratio": t / t_base, "unit": "ms",
                         "target": "informational (an η-Hessian needs m Hessian-vector products)",
                         "passed": None, "note": f"ratio / m = {t / t_base / noise.eta_dim:.2f}"})
    return rows


def run(quick: bool = False) -> list[dict]:
    """All rows of this area (``quick`` shrinks the work for smoke tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _engine_rows(quick) + _reg_rows(quick)
    finally:
        torch.set_num_threads(threads)
