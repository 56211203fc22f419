"""Counter-based random streams for numba kernels: SplitMix64, a 256-layer ziggurat, Marsaglia–Tsang χ².

A stream is a 64-bit state ``s``; its k-th output (k = 1, 2, …) is ``mix(s + k·GOLDEN)`` (SplitMix64,
Steele, Lea & Flood 2014), so output k is known without drawing outputs 1..k−1: a kernel can draw any
step's numbers directly, and vectorise the drawing over steps or replicas. Every replica owns its own
keys (states), so its numbers depend neither on how replicas are chunked nor on the thread count.
Two streams of random 64-bit keys overlap within n outputs with probability ≈ 2n/2⁶⁴ (R² n/2⁶⁴ for R
replicas: 5·10⁻⁸ for 10⁴ replicas × 10⁸ outputs).

Normals: the ziggurat of Marsaglia & Tsang (2000) in Doornik's (2005) form, one 53-bit output per
normal; ~1.5 % of draws leave their layer's rectangle (:func:`bits53` gives the layer and abscissa, the
rectangle test is ``|u| < ZR[i]``) and are completed by :func:`normal_slow` from a second (*slow*)
stream drawn in order, so a kernel can take the branch-free fast path for a whole block of steps and
replicas first and complete the rare ones afterwards (``nin.toy``, ``minibatch.sgd_kernel``).
"""

from __future__ import annotations

import numba
import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


@numba.njit(cache=True, inline="always")
def mix(s: np.uint64) -> np.uint64:
    """SplitMix64 output function of the state ``s``."""
    z = s
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@numba.njit(cache=True, inline="always")
def unit(z: np.uint64) -> float:
    """U(0, 1) on the open interval from the top 53 bits of ``z``."""
    return (np.int64(z >> _S11) + 0.5) * (1.0 / 9007199254740992.0)


@numba.njit(cache=True, inline="always")
def uniform(s: np.uint64) -> tuple[np.uint64, float]:
    """Advance the state; return (state, u) with u uniform on the open interval (0, 1)."""
    s = s + GOLDEN
    return s, unit(mix(s))


def _ziggurat_tables(
    n: int = 256, r: float = 3.6541528853610088, v: float = 4.92867323399e-3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layer edges x[0..n], ratios x[i+1]/x[i] and densities exp(-x[i]²/2) of the 256-layer normal
    ziggurat (Marsaglia & Tsang 2000, in Doornik's 2005 'ZIGNOR' form; ``v`` is the common layer area)."""
    x = np.zeros(n + 1)
    f = np.exp(-0.5 * r * r)
    x[0], x[1] = v / f, r
    for i in range(2, n):
        x[i] = np.sqrt(-2.0 * np.log(v / x[i - 1] + f))
        f = np.exp(-0.5 * x[i] * x[i])
    return x, x[1:] / x[:-1], np.exp(-0.5 * x * x)


ZX, ZR, ZF = _ziggurat_tables()
ZIG_R = ZX[1]  # where the tail begins
LAYER = np.uint64(0xFF)  # 256 layers: the index is the low 8 bits


@numba.njit(cache=True, inline="always")
def bits53(z: np.uint64) -> tuple[np.int64, float]:
    """A ziggurat draw from 64 random bits: layer i from the low 8, u in (-1, 1) from the top 53."""
    return np.int64(z & LAYER), (np.int64(z >> _S11) + 0.5) * (2.0 / 9007199254740992.0) - 1.0


@numba.njit(cache=True, inline="always")
def layer(s: np.uint64) -> tuple[np.uint64, np.int64, float]:
    """Advance the state; return (state, i, u) of one 53-bit ziggurat draw."""
    s = s + GOLDEN
    i, u = bits53(mix(s))
    return s, i, u


@numba.njit(cache=True)
def normal_slow(s: np.uint64, i: np.int64, u: float) -> tuple[np.uint64, float]:
    """The ziggurat's rare branches for a draw (i, u) outside its layer's rectangle: the tail beyond r
    (Marsaglia 1964) for i = 0, else the wedge test; on rejection, fresh draws until acceptance."""
    while True:
        if i == 0:
            while True:
                s, a = uniform(s)
                s, c = uniform(s)
                x = np.log(a) / ZIG_R
                if -2.0 * np.log(c) >= x * x:
                    return s, (x - ZIG_R) if u < 0 else (ZIG_R - x)
        x = u * ZX[i]
        s, a = uniform(s)
        if ZF[i + 1] + a * (ZF[i] - ZF[i + 1]) < np.exp(-0.5 * x * x):
            return s, x
        s, i, u = layer(s)
        if abs(u) < ZR[i]:
            return s, u * ZX[i]


@numba.njit(cache=True, inline="always")
def ziggurat(s: np.uint64, i: np.int64, u: float) -> tuple[np.uint64, float]:
    """N(0, 1) from the draw (i, u): accepted in the layer's rectangle 98.5 % of the time; the rest
    goes to :func:`normal_slow` (kept out of line so this path inlines)."""
    if abs(u) < ZR[i]:
        return s, u * ZX[i]
    return normal_slow(s, i, u)


@numba.njit(cache=True, inline="always")
def normal(s: np.uint64) -> tuple[np.uint64, float]:
    """One N(0, 1) by the ziggurat from one SplitMix64 output."""
    s, i, u = layer(s)
    return ziggurat(s, i, u)


@numba.njit(cache=True)
def chi2_from(s: np.uint64, d: float, c: float, z: float, u: float) -> tuple[np.uint64, float]:
    """χ²_k = 2·Gamma(k/2) for k >= 2 by Marsaglia–Tsang (d = k/2 − 1/3, c = 1/√(9d)), starting from the
    proposal (z, u) ~ N(0, 1) × U(0, 1); after a rejection, fresh proposals from the stream at ``s``."""
    while True:
        v = 1.0 + c * z
        if v > 0.0:
            v = v * v * v
            if u < 1.0 - 0.0331 * (z * z) * (z * z) or np.log(u) < 0.5 * z * z + d - d * v + d * np.log(v):
                return s, 2.0 * d * v
        s, z = normal(s)
        s, u = uniform(s)


@numba.njit(cache=True, inline="always")
def gamma_shape(k: float) -> tuple[float, float]:
    """Marsaglia–Tsang constants (d, c) of χ²_k = 2·Gamma(k/2)."""
    d = 0.5 * k - 1.0 / 3.0
    return d, 1.0 / np.sqrt(9.0 * d)


@numba.njit(cache=True)
def _hash_keys(base: np.uint64, first: np.int64, n: int, per: int) -> np.ndarray:
    out = np.empty((n, per), dtype=np.uint64)
    for r in range(n):
        for j in range(per):
            out[r, j] = mix(mix(base + np.uint64((first + r) * per + j + 1) * GOLDEN))
    return out


def stream_keys(seed: int, first: int, n: int, per: int) -> np.ndarray:
    """Keys (n, per) of the ``per`` streams of replicas ``first … first + n − 1``: key j of replica r is
    mix(mix(b + (r·per + j + 1)·GOLDEN)) with b from ``SeedSequence(seed)`` (no spawn key, so apart from
    every ``seed_sequence(seed, replica, stream)``); the same replica gets the same keys in any chunk, and
    deriving them costs nanoseconds per replica (a SeedSequence per replica costs ~8 µs)."""
    base = np.random.SeedSequence(int(seed)).generate_state(1, np.uint64)[0]
    return _hash_keys(np.uint64(base), np.int64(first), n, per)
