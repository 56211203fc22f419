"""Study: does eq. (2) predict the NIW decay of nin-fig1 in the limit of small η and σε? (issue 10 point 3)

nin-fig1's quick preset (3×64 ReLU MLP, CE, batch 128, η = 0.05, 14×14 pooled embedded digits, NIW init
N(0, 1/d_in)) measured −ln(‖W_NI(T)‖/‖W_NI(0)‖) ≈ 1.5 × the corrected eq. (2) prediction
Σ_t η σε² curv_niw(t) at its smallest level. Here the same network is trained by the same SGD (per-sample
ε = σε ξ, fresh ξ per step: what "epoch" mode gives, each sample being seen once per epoch) over a fixed
gradient-flow time τ = η·T, for shrinking η and σε, several seeds each, and the measured decay is divided by

* ``autograd``: Σ_t η σε² Ŵᵀ⟨H⟩Ŵ, the local Hessian of eq. (2)/(3) (``MLPEnsemble.niw_curvature``);
* ``smoothed``: Σ_t of eq. (D1) of :mod:`noiseprobe.nin.drift`, the exact first-order-in-η drift, which
  includes the ReLU kinks that the local Hessian misses.

Predictions integrate the rate over the recorded steps (trapezoid, one record per τ/40). Prints a
markdown table: mean ± standard error over seeds of the per-seed ratio measured/predicted, and the
ratio of the two predictors (the "kink factor"), integrated and its rate at the start and the end. Runtime ~15 min on one core:
``PYTHONPATH=src python benchmarks/study_nin_eq2.py`` (``--quick`` for a 1-minute smoke run).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from noiseprobe.nin.data import load_mlp_data
from noiseprobe.nin.drift import measure_niw_decay
from noiseprobe.nin.ensemble import init_ensemble


def run(
    lr: float,
    sigmas: list[float],
    seeds: int,
    tau: float,
    *,
    seed: int = 2022,
    hidden: tuple[int, ...] = (64, 64, 64),
    probe_samples: int = 1000,
    nodes: int = 24,
) -> dict[str, np.ndarray]:
    """Train len(sigmas)·seeds replicas (float64) for T = τ/η steps; per replica the measured log decay,
    the two integrated predictions and the kink factor (D1)/⟨H⟩ at the start and the end (arrays
    (len(sigmas), seeds))."""
    xtr, ytr, _, _ = load_mlp_data(pool=2)
    d_in = xtr.shape[1]
    sig = np.repeat(sigmas, seeds)
    reps = np.tile(np.arange(seeds), len(sigmas))
    ens = init_ensemble(
        [d_in, *hidden, 10], sig.tolist(), reps.tolist(), seed, niw_init_std=d_in**-0.5, dtype=torch.float64
    )
    m = measure_niw_decay(
        ens,
        xtr,
        ytr,
        loss="ce",
        lr=lr,
        batch_size=128,
        steps=round(tau / lr),
        probe_samples=probe_samples,
        nodes=nodes,
        seed=seed + 1,
    )
    shape = (len(sigmas), seeds)
    measured, local, smoothed = (v.reshape(shape) for v in m.log_decay())
    kink = m.rate_smoothed / m.rate_local
    return {
        "measured": measured,
        "autograd": local,
        "smoothed": smoothed,
        "kink_start": kink[0].reshape(shape),
        "kink_end": kink[-1].reshape(shape),
    }


def _mean_se(v: np.ndarray) -> str:
    return f"{v.mean():.3f} ± {v.std(ddof=1) / math.sqrt(v.size):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 1-minute smoke run (2 seeds, 2 points)")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--tau", type=float, default=46.0, help="gradient-flow time eta*T (nin-fig1 quick: 46)")
    ap.add_argument("--lr", type=float, nargs="*", help="learning rates (default 0.05 0.0125)")
    ap.add_argument("--sigmas", type=float, nargs="*", help="sigma_eps values (default 0.626 0.313 0.157)")
    ap.add_argument("--probe", type=int, default=1000, help="samples on which the rates are evaluated")
    ap.add_argument("--nodes", type=int, default=24, help="Gauss-Hermite nodes of eq. (D1)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    grid = {lr: args.sigmas or [0.626, 0.313, 0.157] for lr in (args.lr or [0.05, 0.0125])}
    seeds, tau = args.seeds, args.tau
    if args.quick:
        grid, seeds, tau = {0.05: [0.626]}, 2, 4.6
    print(
        f"tau = eta*T = {tau:g}, {seeds} seeds per row, rates on {args.probe} samples with {args.nodes} nodes; ratio = measured / predicted log decay, "
        "mean ± se over seeds\n"
    )
    print(
        "| η | σε | measured −ln(‖W_NI(T)‖/‖W_NI(0)‖) | measured / eq. (2) ⟨H⟩ | measured / (D1) smoothed "
        "| (D1) / eq. (2) integrated | at t = 0 | at T |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for lr, sigmas in grid.items():
        t0 = time.perf_counter()
        out = run(lr, sigmas, seeds, tau, probe_samples=args.probe, nodes=args.nodes)
        for i, s in enumerate(sigmas):
            m, a, sm = out["measured"][i], out["autograd"][i], out["smoothed"][i]
            print(
                f"| {lr:g} | {s:g} | {_mean_se(m)} | {_mean_se(m / a)} | {_mean_se(m / sm)} | "
                f"{_mean_se(sm / a)} | {_mean_se(out['kink_start'][i])} | {_mean_se(out['kink_end'][i])} |",
                flush=True,
            )
        print(f"<!-- eta = {lr:g}: {time.perf_counter() - t0:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
