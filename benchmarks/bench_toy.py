"""NIN toy model (paper 001, eq. 4): speed and memory of the replica-batched simulator.

The work is the nin-fig2-top sweep: exact minibatch SGD at B = 1 on a log grid of 64 σε in [1e-2, 1e3]
× 32 seeds (niw_large init, η = 0.01), 20 000 steps (2 000 with --quick). Speed is counted in executed
replica-steps per second (a replica that overflows stops, in every implementation), so the ratios do not
depend on how many runs diverge.

* baseline: a straightforward per-replica, per-step pure-Python loop (plain floats, ``random.gauss``)
  doing the same work as the simulator (dynamics, overflow check, the online phase and decay
  statistics); also reported against a leaner loop doing the dynamics only. Timed on 32 replicas spread
  over the grid.
* Each rate is the best of 3 rounds; within a round the implementations run one after the other, so a
  slow spell of a shared machine affects both sides of a ratio alike.
* ``nin.toy.simulate`` (numba kernel: 32 replicas per thread as SIMD lanes, fused step + RNG +
  statistics, parallel over groups of replicas) with all threads and with one thread; the same kernel at
  B = 32 (Bartlett draws), the batch size of nin-fig2-top; a plain NumPy vectorised loop over steps (all
  replicas per op, RNG per step, no statistics) for comparison.
* the floor (``benchmarks/floor.py``): the 2 normals and 51 flop of a replica-step at this machine's
  measured rates (fastest chunk-independent generator, multiply-add rate), all threads, in CPU time
  (robust to the load of a shared machine) against the kernel's CPU time per executed replica-step.
* a JAX peer (``benchmarks/jax_peers.py``: jit + vmap over replicas + lax.scan over steps, float64, one
  key per replica, the kernel's statistics, each PRNG implementation, the same thread count, compile time
  apart) on the same sweep at 2 000 steps (500 with --quick), against the kernel on that sweep.
* memory: bytes kept per sweep (per-replica statistics) against keeping every step of every replica.
"""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path

import numba
import numpy as np

from noiseprobe.nin import toy

sys.path.insert(0, str(Path(__file__).resolve().parent))  # floor.py, jax_peers.py

LR, M = 0.01, 1.0


def _grid() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    sigma = np.repeat(np.logspace(-2, 3, 64), 32)
    seeds = np.tile(np.arange(32), 64)
    w0, w1, wn = toy.init_weights("niw_large", 0, np.arange(32))
    return sigma, {"w0": w0[seeds], "w1": w1[seeds], "w_ni": wn[seeds]}


def _frac(prev: float, now: float, level: float) -> float:
    """Fraction of the step at which ``level`` is crossed, interpolated in log (as in the kernel)."""
    lp, ln = math.log(max(prev, 1e-300)), math.log(max(now, 1e-300))
    return min(max((lp - math.log(level)) / (lp - ln), 0.0), 1.0) if lp > ln else 1.0


def _python_loop(sigma: np.ndarray, w: dict[str, np.ndarray], steps: int, stats: bool) -> int:
    """Per-replica, per-step pure Python exact SGD (B = 1); with ``stats`` also the simulator's online
    statistics (maxima, Σ w1², Σ (w0² + w1²), first e-folds of |w_NI| and of the loss with their
    eq. (9) exponents). Returns the executed replica-steps."""
    rng = random.Random(0)
    done = 0
    for r in range(sigma.size):
        se = float(sigma[r])
        w0, w1, wn = float(w["w0"][r]), float(w["w1"][r]), float(w["w_ni"][r])
        n0, loss0 = abs(wn), 0.5 * (w1 * w0 - M) ** 2
        thr_n, thr_l, y_prev, l_prev = n0 / math.e, loss0 / math.e, n0, loss0
        sw1 = sw01 = mx1 = mxn = mxl = 0.0
        found: list[tuple[float, float]] = []
        for _ in range(steps):
            if stats:
                loss, yn = 0.5 * (w1 * w0 - M) ** 2, abs(wn)
                mx1, mxn, mxl = max(mx1, w1 * w1), max(mxn, wn * wn), max(mxl, loss)
                if yn <= thr_n:
                    found.append((done + _frac(y_prev, yn, thr_n), LR * se * se * sw1))
                    thr_n = thr_n / math.e if thr_n > n0 / math.e**1.5 else -1.0  # two e-folds, as the kernel
                if loss <= thr_l:
                    found.append((done + _frac(l_prev, loss, thr_l), 2 * LR * sw01))
                    thr_l = thr_l / math.e if thr_l > loss0 / math.e**1.5 else -1.0
                y_prev, l_prev = yn, loss
                sw1 += w1 * w1
                sw01 += w0 * w0 + w1 * w1
            x, e = rng.gauss(0.0, 1.0), rng.gauss(0.0, se)
            d = w1 * w0 - M
            g0 = w1 * (d * x * x + w1 * wn * x * e)
            g1 = d * w0 * x * x + (2 * w1 * w0 - M) * wn * x * e + w1 * wn * wn * e * e
            gn = w1 * (d * x * e + w1 * wn * e * e)
            w0, w1, wn = w0 - LR * g0, w1 - LR * g1, wn - LR * gn
            done += 1
            if not (abs(w0) <= 1e8 and abs(w1) <= 1e8 and abs(wn) <= 1e8):
                break
    return done


def _numpy_loop(sigma: np.ndarray, w: dict[str, np.ndarray], steps: int) -> int:
    """All replicas per NumPy op, one loop over steps, RNG per step, overflowed replicas frozen."""
    rng = np.random.default_rng(0)
    w0, w1, wn = (w[k].copy() for k in ("w0", "w1", "w_ni"))
    alive = np.ones(sigma.size, dtype=bool)
    done = 0
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(steps):
            x = rng.standard_normal(sigma.size)
            e = rng.standard_normal(sigma.size) * sigma
            d = w1 * w0 - M
            n0 = w0 - LR * w1 * (d * x * x + w1 * wn * x * e)
            n1 = w1 - LR * (d * w0 * x * x + (2 * w1 * w0 - M) * wn * x * e + w1 * wn * wn * e * e)
            nn = wn - LR * w1 * (d * x * e + w1 * wn * e * e)
            done += int(alive.sum())
            alive &= (np.abs(n0) <= 1e8) & (np.abs(n1) <= 1e8) & (np.abs(nn) <= 1e8)
            w0, w1, wn = np.where(alive, n0, w0), np.where(alive, n1, w1), np.where(alive, nn, wn)
    return done


def _executed(run: toy.ToyRun) -> int:
    return int(np.where(run.overflow, run.overflow_step, run.steps).sum())


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(quick: bool = False) -> list[dict]:
    steps = 2000 if quick else 20_000
    sigma, w = _grid()
    toy.simulate(sigma[:4], **{k: v[:4] for k, v in w.items()}, steps=10)  # compile / load cache
    sub = np.linspace(0, sigma.size - 1, 32).astype(int)
    py_steps = 1000 if quick else 4000
    threads = numba.get_num_threads()
    configs = ((f"{threads} threads", threads), ("1 thread", 1))

    def numba_rate(nt: int, batch_size: int = 1) -> float:
        numba.set_num_threads(nt)
        try:
            t, r = _timed(lambda: toy.simulate(sigma, **w, steps=steps, batch_size=batch_size, seed=0))
        finally:
            numba.set_num_threads(threads)
        return _executed(r) / t

    def python_rate(stats: bool) -> float:
        t, n = _timed(lambda: _python_loop(sigma[sub], {k: v[sub] for k, v in w.items()}, py_steps, stats))
        return n / t

    # best of 3 rounds, the implementations interleaved within each round, so that a slow spell of a
    # shared machine affects both sides of every ratio alike
    base, rate = {True: 0.0, False: 0.0}, {nt: 0.0 for _, nt in configs}
    for _ in range(3):
        for stats in (True, False):
            base[stats] = max(base[stats], python_rate(stats))  # replica-steps / s
        for _, nt in configs:
            rate[nt] = max(rate[nt], numba_rate(nt))
    rows = []
    for label, nt in configs:
        for stats, what in ((True, "same work: dynamics + the same online statistics"), (False, "dynamics only")):
            main = nt == threads and stats
            rows.append(
                {
                    "name": f"toy sweep 64x32x{steps} exact B=1, numba kernel ({label})",
                    "baseline": f"per-replica pure-Python loop, {what}",
                    "measured": rate[nt],
                    "baseline_value": base[stats],
                    "ratio": rate[nt] / base[stats],
                    "unit": "replica-steps/s",
                    "target": ">= 200x" if main else "info",
                    "aim_met": bool(rate[nt] / base[stats] >= 200) if main else None,
                    "note": f"{1e9 / rate[nt]:.1f} ns per replica-step; baseline {1e9 / base[stats]:.0f} ns",
                }
            )
    b32 = max(numba_rate(threads, 32) for _ in range(3))
    rows.append(
        {
            "name": f"toy sweep 64x32x{steps} exact B=32 (the nin-fig2-top batch size), numba kernel ({threads} threads)",
            "baseline": "the same kernel at B=1",
            "measured": b32,
            "baseline_value": rate[threads],
            "ratio": b32 / rate[threads],
            "unit": "replica-steps/s",
            "target": "info",
            "aim_met": None,
            "note": f"{1e9 / b32:.1f} ns per replica-step: Bartlett draws (two χ², one normal) per step",
        }
    )
    rows += _floor_and_jax_rows(sigma, w, threads, quick)
    np_steps = steps // 4
    t, n_np = _timed(lambda: _numpy_loop(sigma, w, np_steps))
    rows.append(
        {
            "name": f"plain NumPy vectorised loop over steps (64x32x{np_steps}, no statistics)",
            "baseline": "per-replica pure-Python loop, dynamics only",
            "measured": n_np / t,
            "baseline_value": base[False],
            "ratio": n_np / t / base[False],
            "unit": "replica-steps/s",
            "target": "info",
            "aim_met": None,
            "note": "the alternative measured before choosing numba",
        }
    )
    r = toy.simulate(sigma, **w, steps=steps, seed=0)
    kept = r.stats.nbytes + r.overflow_step.nbytes
    full = sigma.size * (steps + 1) * 4 * 8
    rows.append(
        {
            "name": f"memory kept by a 64x32x{steps} sweep (per-replica statistics)",
            "baseline": "every step of every replica (w0, w1, w_NI, loss; float64)",
            "measured": kept / 2**20,
            "baseline_value": full / 2**20,
            "ratio": kept / full,
            "unit": "MiB",
            "target": "bounded in steps",
            "aim_met": bool(kept < 2**20),
            "note": "independent of the number of steps",
        }
    )
    return rows


# flop per replica-step of the B = 1 kernel: moments S_xx, S_xε, S_εε from (z_x, z_ε) 9, the step
# (toy.sgd_step) 30, the statistics (Σ w1², Σ (w0² + w1²), clean loss, w1², w_NI²) 12
_FLOP, _NORMALS = 51, 2


def _floor_and_jax_rows(sigma: np.ndarray, w: dict[str, np.ndarray], threads: int, quick: bool) -> list[dict]:
    import floor
    import jax_peers

    steps_f = 2000 if quick else 20_000
    n_exec = _executed(toy.simulate(sigma, **w, steps=steps_f, seed=0))
    cpu = floor.cpu_time(lambda: toy.simulate(sigma, **w, steps=steps_f, seed=0), 3) / n_exec
    rows = [
        floor.floor_row(
            "toy sweep exact B=1 over its floor (numba kernel, all threads)", cpu, _NORMALS, 0, _FLOP, floor.rates()
        )
    ]
    steps = 500 if quick else 2000
    t_nb = min(_timed(lambda: toy.simulate(sigma, **w, steps=steps, seed=0))[0] for _ in range(3))
    best = None
    for impl in jax_peers.ALL_IMPLS:
        t_compile, t_jax = jax_peers.toy_sweep(sigma, w["w0"], w["w1"], w["w_ni"], steps, LR, M, 0, impl)
        safe = impl in jax_peers.SAFE_IMPLS
        if safe and (best is None or t_jax < best[1]):
            best = (impl, t_jax, t_compile)
        rows.append(
            {
                "name": f"toy sweep 64x32x{steps} exact B=1 vs JAX peer ({impl})",
                "baseline": f"JAX jit(vmap(scan)), {impl} keys per replica, float64",
                "measured": t_nb,
                "baseline_value": t_jax,
                "ratio": t_jax / t_nb,
                "unit": "s (speed-up)",
                "target": "info",
                "aim_met": None,
                "note": f"JAX compile {t_compile:.1f} s (not in its time)"
                + ("" if safe else "; unsafe_rbg: no independence guarantee for fold_in keys"),
            }
        )
    impl, t_jax, t_compile = best
    rows.append(
        {
            "name": f"toy sweep 64x32x{steps} exact B=1 vs the fastest sound JAX peer ({impl})",
            "baseline": f"JAX jit(vmap(scan)), {impl}, float64",
            "measured": t_nb,
            "baseline_value": t_jax,
            "ratio": t_jax / t_nb,
            "unit": "s (speed-up)",
            "target": ">= 2×",
            "aim_met": bool(t_jax / t_nb >= 2),
            "note": f"{threads} threads each; numba {1e9 * t_nb / (sigma.size * steps):.1f} ns, JAX "
            f"{1e9 * t_jax / (sigma.size * steps):.1f} ns per replica-step; JAX compile {t_compile:.1f} s apart",
        }
    )
    return rows


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
