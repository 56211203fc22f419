"""This machine's physical floor for a simulator step: random numbers at the rate of the fastest generator
whose streams do not depend on chunking, and arithmetic at the measured multiply-add rate, per core (a
kernel is compared in CPU time summed over its threads, which a shared machine's load barely affects).

Candidates for the generator (all give every replica its own stream, so a replica's numbers do not depend
on how replicas are chunked): the counter-based SplitMix64 + ziggurat of ``noiseprobe.core.streams``
(53-bit normals; and two 24-bit normals per output, the toy kernel's B = 1 form), vectorised over 32
lanes in numba; and NumPy's per-replica ``Generator.standard_normal`` (PCG64 and Philox).
All in CPU seconds per number on one core (see :func:`cpu_time`). The arithmetic rate is a vectorised
loop of independent float64 multiply-adds on data in L1 (Horner chains of 16 over 256 values), one core.
"""

from __future__ import annotations

import time

import numba
import numpy as np

from noiseprobe.core.streams import GOLDEN, LAYER, ZR, ZX, bits53, mix, unit

_L = 32
_LOW32, _S8, _S32 = np.uint64(0xFFFFFFFF), np.uint64(8), np.uint64(32)


@numba.njit(cache=True, inline="always")
def _half(v: np.uint64) -> float:
    """The 24-bit ziggurat fast path of the toy kernel (rare branches counted as the fast one)."""
    i = np.int64(v & LAYER)
    x = (np.int64(v >> _S8) + 0.5) * (2.0 / 16777216.0) - 1.0
    return x * ZX[i] if abs(x) < ZR[i] else np.nan


_N53, _N24, _UNI = range(3)


@numba.njit(cache=True, parallel=True)
def _draw(kind: int, keys: np.ndarray, n: int) -> float:
    """n numbers of each of the streams ``keys`` (64 steps × 32 lanes at a time, as the toy kernel draws):
    53-bit normals, pairs of 24-bit normals, or uniforms."""
    acc = 0.0
    per = 2 if kind == _N24 else 1
    for g in numba.prange(keys.shape[0] // _L):
        out = np.empty((64, 2, _L))
        for b in range(n // (64 * per)):
            for k in range(64):
                ctr = np.uint64(b * 64 + k + 1) * GOLDEN
                for j in range(_L):
                    z = mix(keys[g * _L + j] + ctr)
                    if kind == _N53:
                        i, x = bits53(z)
                        out[k, 0, j] = x * ZX[i] if abs(x) < ZR[i] else np.nan
                    elif kind == _N24:
                        out[k, 0, j] = _half(z & _LOW32)
                        out[k, 1, j] = _half(z >> _S32)
                    else:
                        out[k, 0, j] = unit(z)
            acc += out[3, 0, 5]
    return acc


_HORNER = 16


@numba.njit(cache=True, parallel=True, fastmath={"contract"})
def _fma(groups: int, n: int) -> float:
    """Per group, n sweeps over 256 values in L1, each value through 16 dependent multiply-adds (Horner):
    independent across values, so the loop vectorises and runs at the multiply-add throughput."""
    acc = 0.0
    for g in numba.prange(groups):
        x = np.empty(256)
        for j in range(256):
            x[j] = 1e-3 * (j + g)
        for _ in range(n):
            for j in range(256):
                v = x[j]
                for _k in range(_HORNER):
                    v = v * 0.5 + 0.25
                x[j] = v
        acc += x[0]
    return acc


def best_time(fn, repeats: int = 3, clock=time.perf_counter) -> float:
    """The best time of ``repeats`` calls of ``fn`` (wall time by default)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def cpu_time(fn, repeats: int = 5) -> float:
    """The best CPU time (all threads of the process) of ``repeats`` calls: what the floor rows compare,
    since on a shared machine it counts the work done, not the time spent waiting for a core."""
    return best_time(fn, repeats, time.process_time)


def rates() -> dict[str, float]:
    """CPU seconds per random number (``normal``, ``uniform``; the fastest candidate, with all candidates'
    times under ``normal:<name>``) and per float64 flop (``flop``) of one core of this machine, measured on
    one thread (a kernel's CPU time over all its threads is compared with these)."""
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return _rates()
    finally:
        numba.set_num_threads(threads)


def _rates() -> dict[str, float]:
    keys = np.arange(1, 32 * _L + 1, dtype=np.uint64) * np.uint64(0x632BE59BD9B4E019)
    n = 1 << 14  # short runs, best of 7: the quietest moments of a shared machine
    total = keys.size * n
    for kind in (_N53, _N24, _UNI):
        _draw(kind, keys, 128)
    _fma(2, 10)
    out = {
        "normal:SplitMix64 ziggurat 53-bit (numba, lanes)": best_time(
            lambda: _draw(_N53, keys, n), 7, time.process_time
        )
        / total,
        "normal:SplitMix64 ziggurat 2x24-bit (numba, lanes)": best_time(
            lambda: _draw(_N24, keys, n), 7, time.process_time
        )
        / total,
    }
    for name in ("PCG64", "Philox"):
        g = np.random.Generator(getattr(np.random, name)(0))
        buf = np.empty(1 << 20)
        out[f"normal:NumPy {name} standard_normal"] = (
            best_time(lambda g=g: g.standard_normal(out=buf), 7, time.process_time) / buf.size
        )
    out["uniform"] = best_time(lambda: _draw(_UNI, keys, n), 7, time.process_time) / total
    out["normal"] = min(v for k, v in out.items() if k.startswith("normal:"))
    out["normal_generator"] = min((v, k) for k, v in out.items() if k.startswith("normal:"))[1].split(":", 1)[1]
    iters = 4_000
    out["flop"] = best_time(lambda: _fma(4, iters), 7, time.process_time) / (4 * iters * 256 * 2 * _HORNER)
    return out


def floor_row(
    name: str, measured_s: float, normals: float, uniforms: float, flops: float, r: dict, aim: float = 3.0
) -> dict:
    """A benchmark row: measured CPU seconds per replica-step over the floor normals·t_n + uniforms·t_u +
    flops·t_f (CPU seconds, from :func:`rates`)."""
    floor = normals * r["normal"] + uniforms * r["uniform"] + flops * r["flop"]
    ratio = measured_s / floor
    return {
        "name": name,
        "baseline": "floor: random numbers at the fastest chunk-independent generator + "
        "arithmetic at the measured multiply-add rate",
        "measured": measured_s * 1e9,
        "baseline_value": floor * 1e9,
        "ratio": ratio,
        "unit": "CPU ns/replica-step",
        "target": f"<= {aim:g}x",
        "aim_met": bool(ratio <= aim),
        "note": (
            f"{normals:g} normals × {r['normal'] * 1e9:.2f} ns ({r['normal_generator']}) + {uniforms:g} "
            f"uniforms × {r['uniform'] * 1e9:.2f} ns + {flops:g} flop × {r['flop'] * 1e12:.0f} ps "
            f"({1e-9 / r['flop']:.1f} GFLOP/s per core)"
        ),
    }
