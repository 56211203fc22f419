"""The linear toy model of the NIN paper (paper 001, Sec. 3, eqs. 4–6): simulators.

Model ``f = w1 (w0 x + w_NI ε)``, target ``y = M x``, loss with the ½ convention (eq. 4)::

    L = (1/2B) Σ_{i∈batch} (w1 (w0 x_i + w_NI ε_i) − M x_i)²,   x ~ N(0, σx²), ε ~ N(0, σε²),

samples drawn fresh every step (infinite data: with replacement). The batch enters only through the
moments S_xx = ⟨x²⟩_B, S_xε = ⟨xε⟩_B, S_εε = ⟨ε²⟩_B. With D = w1 w0 − M the exact SGD step (all right-hand
sides at the old values; docs/theory/noise_injection_nodes.md §4, verified against autograd in the tests) is::

    w0'  = w0  − η w1 (D S_xx + w1 w_NI S_xε)                       (derived; the paper omits it)
    w1'  = w1  − η (D w0 S_xx + (2 w1 w0 − M) w_NI S_xε + w1 w_NI² S_εε)
    wNI' = wNI − η w1 (D S_xε + w1 w_NI S_εε)

Two samplers of the moments share that one step:

* ``method="exact"``: exact minibatch SGD. B = 1 draws (x, ε); B > 1 draws B·(S_xx, S_xε, S_εε) from
  Wishart(B, diag(σx², σε²)) by the 2×2 Bartlett decomposition (O(1) per step for any B).
* ``method="reduced"``: the paper's reduced map, eqs. (5)–(6): S_xx → σx², S_εε → σε², S_xε → −Φ σx σε/√B
  with Φ ~ N(0, 1). Then the w1 and w_NI steps are *literally* eq. (5) with A, Ã, B = η w_NI², B̃ = η w1²,
  C = η D w0 σx² of eq. (6), and w0 follows the derived equation w0' = w0 − η σx² w1 D + η (Φ σx σε/√B) w1² w_NI.

Every replica is advanced by a fused numba kernel that records the phase and decay statistics online
instead of full trajectories. A thread advances 32 replicas in lockstep as SIMD lanes (a loop over steps
outside, over lanes inside), drawing the moments of the next 64 steps at once; rare work (the
ziggurat's wedge and tail, an e-fold crossing, overflow) is done per lane outside the vector loops.
Randomness (``noiseprobe.core.streams``): each replica owns two SplitMix64 streams keyed by ``seed_sequence(seed, replica)``: the fast
stream gives exactly one output per step (normals by the ziggurat method; at B = 1, x and ε from the two
32-bit halves of it, in Marsaglia & Tsang's 32-bit form), the slow stream whatever the ziggurat's rare
branches and the χ² draws (Marsaglia–Tsang) need. So the numbers depend neither on the chunking nor on
the thread count nor on which other replicas share a thread. The kernel is compiled with
``fastmath={"contract"}`` only (fused multiply-adds; no assumptions about NaN or inf, which the
divergence test relies on). Divergence (:mod:`noiseprobe.core.divergence`): a replica whose w0, w1 or w_NI
becomes non-finite or exceeds 10⁸ × its scale in magnitude, the scale being the largest of its starting
|w0|, |w1|, |w_NI| and √|M| (the size of the balanced minimiser w0 = w1 = √M), is frozen at its last
finite state and its overflow step recorded; the others continue. This is the "overflow" half of the
divergent phase (paper 001 §5.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np
import pandas as pd

from noiseprobe.core import divergence
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.seeding import ReplicaStreams, seed_sequence
from noiseprobe.core.streams import GOLDEN, LAYER, ZR, ZX, bits53, chi2_from, gamma_shape, mix, ziggurat
from noiseprobe.core.validation import check_choice, check_int
from noiseprobe.nin.phases import classify_summary

METHODS: tuple[str, ...] = ("exact", "reduced")
INITS: dict[str, tuple[float, float, float]] = {
    # std of (w0, w1, w_NI) at t = 0: the two readings of the garbled App. B sentence (docs/theory/noise_injection_nodes.md §5.1)
    "niw_large": (0.1, 0.1, 1.0),
    "data_large": (1.0, 1.0, 0.1),
}

# ---------------------------------------------------------------------------------------------------
# random numbers inside numba: the SplitMix64 streams and ziggurat of noiseprobe.core.streams, plus the
# 32-bit forms used at B = 1 (two normals per output)
_GOLDEN2, _GOLDEN3 = (np.uint64(k * 0x9E3779B97F4A7C15 % 2**64) for k in (2, 3))  # numba makes int * uint64 a float
_S8, _LOW32, _S32 = np.uint64(8), np.uint64(0xFFFFFFFF), np.uint64(32)


@numba.njit(cache=True, inline="always")
def _bits32(v: np.uint64) -> tuple[np.int64, float]:
    """A ziggurat draw from 32 random bits (as in Marsaglia & Tsang's 32-bit form): layer i from the low
    8, u from the other 24."""
    return np.int64(v & LAYER), (np.int64(v >> _S8) + 0.5) * (2.0 / 16777216.0) - 1.0


# ---------------------------------------------------------------------------------------------------
# Per-replica quantities live in the rows of one float array x[row, lane] (see the kernel below); the
# samplers read theirs from it.
_W0, _W1, _WN, _S1, _S01 = range(5)  # weights, Σ w1², Σ (w0² + w1²) over the steps before: rows
_NEXT = 5  # ... of one parity; the other parity is 5 rows further
_MAX_W1SQ, _MAX_WNSQ, _MAX_LOSS = 10, 11, 12
_LR, _M, _HX, _A_N, _A_L, _N0, _LOSS0, _THR_N, _THR_L, _LIVE = range(13, 23)
_SX, _SE, _B, _INV_B, _SD_SXE, _D1, _C1, _D2, _C2 = range(23, 32)  # sampler parameters (_set_sampler)
_LIM = 32  # the divergence bound on |w0|, |w1|, |w_NI|
_ROWS = 33


@numba.njit(cache=True)
def _set_sampler(x: np.ndarray, j: int, sx: float, se: float, b: int) -> None:
    """Sampler parameters of lane j: σx, σε, B, 1/B, σx σε/√B (the sd of S_xε), and the Marsaglia–Tsang
    constants of χ²_B and χ²_{B−1} (used when B > 1, resp. B > 2). (Lanes without a replica keep zeros:
    the kernels never divide.)"""
    x[_SX, j], x[_SE, j], x[_B, j], x[_INV_B, j], x[_SD_SXE, j] = sx, se, b, 1.0 / b, sx * se / np.sqrt(b)
    x[_D1, j], x[_C1, j] = gamma_shape(max(b, 2))
    x[_D2, j], x[_C2, j] = gamma_shape(max(b - 1, 2))


# ---------------------------------------------------------------------------------------------------
# Samplers of one step's batch moments (S_xx, S_xε, S_εε), one per kind of replica. Every replica owns
# two SplitMix64 streams: the FAST stream gives a fixed number of outputs per step (_WIDTH), so step k's
# outputs are known without drawing steps 0..k-1 first; the SLOW stream gives everything else. Each
# sampler is a pair: ``fast(s, x, j) -> (complete, S_xx, S_xε, S_εε)`` is the common, branch-free case
# (vectorised over lanes j in the kernel), from the outputs of the fast stream after state s; when
# ``complete`` is False, ``slow(a, s, x, j) -> (a, S_xx, S_xε, S_εε)`` redoes the draw from the same
# outputs, taking any further randomness from the slow stream at state ``a``.


@numba.njit(cache=True, inline="always")
def _normal32(v: np.uint64) -> tuple[bool, float]:
    """The ziggurat's fast path on 32 random bits: (in the layer's rectangle, value)."""
    i, u = _bits32(v)
    return abs(u) < ZR[i], u * ZX[i]


@numba.njit(cache=True, inline="always")
def _normal32_full(s: np.uint64, v: np.uint64) -> tuple[np.uint64, float]:
    """N(0, 1) from 32 random bits, the rare branches drawing from the stream at ``s``."""
    i, u = _bits32(v)
    return ziggurat(s, i, u)


@numba.njit(cache=True, inline="always")
def _uniform32(v: np.uint64) -> float:
    """U(0, 1) from 32 random bits (the high half of v)."""
    return (np.float64(v >> _S32) + 0.5) * (1.0 / 4294967296.0)  # type: ignore[no-any-return]  # numba-jitted: kept as NumPy scalar arithmetic


@numba.njit(cache=True, inline="always")
def _single_moments(zx: float, ze: float, sx: float, se: float) -> tuple[float, float, float]:
    """(S_xx, S_xε, S_εε) of one sample x = σx zx, ε = σε ze."""
    return sx * sx * zx * zx, sx * se * zx * ze, se * se * ze * ze


@numba.njit(cache=True, inline="always")
def _fast_single(s: np.uint64, x: np.ndarray, j: int) -> tuple[bool, float, float, float]:
    """Exact SGD at B = 1: (x, ε) from the two 32-bit halves of one output."""
    z = mix(s + GOLDEN)
    okx, zx = _normal32(z & _LOW32)
    oke, ze = _normal32(z >> _S32)
    sxx, sxe, see = _single_moments(zx, ze, x[_SX, j], x[_SE, j])
    return okx & oke, sxx, sxe, see


@numba.njit(cache=True)
def _slow_single(a: np.uint64, s: np.uint64, x: np.ndarray, j: int) -> tuple[np.uint64, float, float, float]:
    z = mix(s + GOLDEN)
    a, zx = _normal32_full(a, z & _LOW32)
    a, ze = _normal32_full(a, z >> _S32)
    sxx, sxe, see = _single_moments(zx, ze, x[_SX, j], x[_SE, j])
    return a, sxx, sxe, see


@numba.njit(cache=True, inline="always")
def _fast_reduced(s: np.uint64, x: np.ndarray, j: int) -> tuple[bool, float, float, float]:
    """The reduced map, eqs. (5)-(6): S_xx = σx², S_εε = σε², S_xε = −Φ σx σε/√B, Φ ~ N(0, 1) (53 bits)."""
    i, u = bits53(mix(s + GOLDEN))
    return abs(u) < ZR[i], x[_SX, j] * x[_SX, j], -(u * ZX[i]) * x[_SD_SXE, j], x[_SE, j] * x[_SE, j]


@numba.njit(cache=True)
def _slow_reduced(a: np.uint64, s: np.uint64, x: np.ndarray, j: int) -> tuple[np.uint64, float, float, float]:
    i, u = bits53(mix(s + GOLDEN))
    a, phi = ziggurat(a, i, u)
    return a, x[_SX, j] * x[_SX, j], -phi * x[_SD_SXE, j], x[_SE, j] * x[_SE, j]


@numba.njit(cache=True, inline="always")
def _bartlett(c1sq: float, c2sq: float, n: float, x: np.ndarray, j: int) -> tuple[float, float, float]:
    """B·S = L A Aᵀ Lᵀ, L = diag(σx, σε), A = [[c1, 0], [n, c2]], c1² ~ χ²_B, c2² ~ χ²_{B-1}, n ~ N(0, 1)."""
    sx, se, f = x[_SX, j], x[_SE, j], x[_INV_B, j]
    return sx * sx * c1sq * f, sx * se * np.sqrt(c1sq) * n * f, se * se * (n * n + c2sq) * f


@numba.njit(cache=True, inline="always")
def _fast_wishart(s: np.uint64, x: np.ndarray, j: int) -> tuple[bool, float, float, float]:
    """Exact SGD at B > 1 by Bartlett, from three outputs: (normal, uniform) pairs for the first
    Marsaglia–Tsang proposals of c1² and c2² (complete if the squeeze accepts both; c2² = z² at B = 2),
    and the normal n."""
    za, zb, zc = mix(s + GOLDEN), mix(s + _GOLDEN2), mix(s + _GOLDEN3)
    ok1, g1 = _normal32(za & _LOW32)
    ok2, g2 = _normal32(zb & _LOW32)
    ok3, n = _normal32(zc & _LOW32)
    u1, u2 = _uniform32(za), _uniform32(zb)
    d1, c1, d2, c2 = x[_D1, j], x[_C1, j], x[_D2, j], x[_C2, j]
    v1, v2 = 1.0 + c1 * g1, 1.0 + c2 * g2
    acc1 = (v1 > 0.0) & (u1 < 1.0 - 0.0331 * (g1 * g1) * (g1 * g1))  # the squeeze of chi2_from
    acc2 = (v2 > 0.0) & (u2 < 1.0 - 0.0331 * (g2 * g2) * (g2 * g2))
    v1, v2 = v1 * v1 * v1, v2 * v2 * v2
    chi1 = x[_B, j] == 2.0
    sxx, sxe, see = _bartlett(2.0 * d1 * v1, g2 * g2 if chi1 else 2.0 * d2 * v2, n, x, j)
    return ok1 & ok2 & ok3 & acc1 & (acc2 | chi1), sxx, sxe, see


@numba.njit(cache=True)
def _slow_wishart(a: np.uint64, s: np.uint64, x: np.ndarray, j: int) -> tuple[np.uint64, float, float, float]:
    za, zb, zc = mix(s + GOLDEN), mix(s + _GOLDEN2), mix(s + _GOLDEN3)
    a, g1 = _normal32_full(a, za & _LOW32)
    a, c1sq = chi2_from(a, x[_D1, j], x[_C1, j], g1, _uniform32(za))
    a, g2 = _normal32_full(a, zb & _LOW32)
    if x[_B, j] == 2.0:
        c2sq = g2 * g2
    else:
        a, c2sq = chi2_from(a, x[_D2, j], x[_C2, j], g2, _uniform32(zb))
    a, n = _normal32_full(a, zc & _LOW32)
    sxx, sxe, see = _bartlett(c1sq, c2sq, n, x, j)
    return a, sxx, sxe, see


SAMPLERS: tuple[str, ...] = ("single", "wishart", "reduced")  # exact B = 1, exact B > 1, eqs. (5)-(6)
_SINGLE, _WISHART, _REDUCED = range(len(SAMPLERS))
_WIDTH = (1, 3, 1)  # fast-stream outputs per step


@numba.njit(cache=True, inline="always")
def _fast(kind: int, s: np.uint64, x: np.ndarray, j: int) -> tuple[bool, float, float, float]:
    """The fast path of sampler ``SAMPLERS[kind]``."""
    if kind == _SINGLE:
        return _fast_single(s, x, j)
    if kind == _WISHART:
        return _fast_wishart(s, x, j)
    return _fast_reduced(s, x, j)


@numba.njit(cache=True)
def _slow(kind: int, a: np.uint64, s: np.uint64, x: np.ndarray, j: int) -> tuple[np.uint64, float, float, float]:
    """The completion of sampler ``SAMPLERS[kind]`` from the slow stream."""
    if kind == _SINGLE:
        return _slow_single(a, s, x, j)
    if kind == _WISHART:
        return _slow_wishart(a, s, x, j)
    return _slow_reduced(a, s, x, j)


@numba.njit(cache=True)
def _draws(kind: int, s: np.uint64, a: np.uint64, n: int, sx: float, se: float, b: int) -> np.ndarray:
    x = np.zeros((_ROWS, 1))
    _set_sampler(x, 0, sx, se, b)
    step = np.uint64(_WIDTH[kind]) * GOLDEN
    out = np.empty((n, 3))
    for k in range(n):
        complete, out[k, 0], out[k, 1], out[k, 2] = _fast(kind, s, x, 0)
        if not complete:
            a, out[k, 0], out[k, 1], out[k, 2] = _slow(kind, a, s, x, 0)
        s += step
    return out


def draw_moments(
    keys: np.ndarray, n: int, method: str, batch_size: int, sigma_x: float, sigma_eps: float
) -> np.ndarray:
    """``n`` successive (S_xx, S_xε, S_εε) draws of one replica with stream keys ``keys`` (fast, slow), as
    the kernel draws them: shape (n, 3). For tests."""
    kind = _REDUCED if method == "reduced" else (_SINGLE if batch_size == 1 else _WISHART)
    return _draws(kind, np.uint64(keys[0]), np.uint64(keys[1]), n, sigma_x, sigma_eps, batch_size)


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def sgd_step(
    w0: float, w1: float, wn: float, sxx: float, sxe: float, see: float, lr: float, m: float
) -> tuple[float, float, float]:
    """One exact SGD step on the ½-MSE of eq. (4) given the batch moments (module docstring)."""
    d = w1 * w0 - m
    g0 = w1 * (d * sxx + w1 * wn * sxe)
    g1 = d * w0 * sxx + (2.0 * w1 * w0 - m) * wn * sxe + w1 * wn * wn * see
    gn = w1 * (d * sxe + w1 * wn * see)
    return w0 - lr * g0, w1 - lr * g1, wn - lr * gn


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def _loss(w0: float, w1: float, m: float, hx: float) -> float:
    """The clean loss L(ε = 0) = ½ σx² (w1 w0 − M)², with hx = ½ σx²."""
    d = w1 * w0 - m
    return hx * d * d


# columns of the float statistics returned by the kernel
STAT_COLUMNS: tuple[str, ...] = (
    "w0_T",
    "w1_T",
    "w_ni_T",  # final (or last finite) weights
    "max_u",
    "max_v",  # max_t η σε² w1², max_t η σε² w_NI² (stability of the mean map)
    "sum_w1sq",  # Σ_{t<T} w1(t)²  (horizon law)
    "niw_efold1",
    "niw_efold2",  # first step with |w_NI|/|w_NI,0| <= e^-1, e^-2 (log-interpolated)
    "niw_exp1",
    "niw_exp2",  # eq. (9) exponent η σε² Σ_{s<t} w1(s)² at those steps
    "loss_efold1",
    "loss_efold2",  # same for the clean loss L(ε=0) = ½ σx² D²
    "loss_exp1",
    "loss_exp2",  # eq. (9) exponent 2 η σx² Σ_{s<t} (w0² + w1²) at those steps
    "loss_0",
    "loss_T",
    "max_loss",
    "max_abs_w_ni",
)
_NF = len(STAT_COLUMNS)
_C_NIW_T, _C_NIW_E = STAT_COLUMNS.index("niw_efold1"), STAT_COLUMNS.index("niw_exp1")
_C_LOSS_T, _C_LOSS_E = STAT_COLUMNS.index("loss_efold1"), STAT_COLUMNS.index("loss_exp1")


@numba.njit(cache=True, inline="always")
def _crossing(t: int, y_prev: float, y_now: float, level: float, e_prev: float, e_now: float) -> tuple[float, float]:
    """Crossing of ``level`` between steps t-1 and t, interpolated in log y; the eq. (9) exponent is
    interpolated with the same fraction."""
    lp, ln, lv = np.log(y_prev), np.log(max(y_now, 1e-300)), np.log(level)
    f = (lp - lv) / (lp - ln) if lp > ln else 1.0
    f = min(max(f, 0.0), 1.0)
    return t - 1 + f, e_prev + f * (e_now - e_prev)


@numba.njit(cache=True)
def _record_efolds(
    st: np.ndarray,
    col_t: int,
    col_e: int,
    t: int,
    y_prev: float,
    y: float,
    y0: float,
    thr: float,
    k: int,
    e_prev: float,
    e_now: float,
) -> tuple[float, int]:
    """Write each e-fold level (k = 1, 2 of y0) crossed between steps t-1 and t into st[col_t + k - 1]
    (step) and st[col_e + k - 1] (eq. 9 exponent); return the next level (-1 after the last) and count."""
    while y <= thr:
        st[col_t + k], st[col_e + k] = _crossing(t, y_prev, y, thr, e_prev, e_now)
        k += 1
        thr = y0 * np.exp(-2.0) if k == 1 else -1.0
    return thr, k


# ---------------------------------------------------------------------------------------------------
# The kernel. A thread advances LANES replicas in lockstep, one array column per replica ("lane"), so
# that a step is a few SIMD instructions per quantity. Per block of at most BLOCK steps it first draws
# the moments of all of them (the fast path vectorised over lanes, then the rare completions), then
# takes the steps; a step at which some lane overflows or crosses an e-fold level stops the vector
# loop, and that lane is dealt with on its own. The weights and running sums are double-buffered, so
# the previous step is at hand for the crossing's interpolation. A lane's numbers depend only on its
# own streams and parameters: not on its group, the chunking or the thread count.
#
# All per-lane floats live in one array allocated by the group (its rows are defined above the
# samplers): with a fixed shape and constant rows, LLVM sees that the stores of a step cannot alias its loads and vectorises the loops,
# which it does not do for a dozen separate arrays (too many run-time overlap checks).

LANES = 32  # replicas advanced in lockstep (a multiple of the widest SIMD vector, 8 float64)
BLOCK = 64  # steps whose moments are drawn at once


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def _fill(kind: int, n: int, x: np.ndarray, s: np.ndarray, a: np.ndarray, mom: np.ndarray, pending: np.ndarray) -> None:
    """The moments mom[:3, k, j] of the next n <= BLOCK steps of every lane j: fast paths for all (k, j),
    then the completions (mom[3, k, j] = 1) in step order per live lane. ``s``, ``a``: fast and slow
    stream states, advanced."""
    width = np.uint64(_WIDTH[kind]) * GOLDEN
    for k in range(n):
        ahead = np.uint64(k) * width
        todo = 0
        for j in range(LANES):
            complete, mom[0, k, j], mom[1, k, j], mom[2, k, j] = _fast(kind, s[j] + ahead, x, j)
            mom[3, k, j] = 0.0 if complete else 1.0
            todo |= np.int64(not complete)
        pending[k] = todo
    for k in range(n):
        if pending[k]:
            for j in range(LANES):
                if mom[3, k, j] != 0.0 and x[_LIVE, j] != 0.0:
                    a[j], mom[0, k, j], mom[1, k, j], mom[2, k, j] = _slow(
                        kind, a[j], s[j] + np.uint64(k) * width, x, j
                    )
    for j in range(LANES):
        s[j] += np.uint64(n) * width


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def _step(k: int, x: np.ndarray, mom: np.ndarray, flag: np.ndarray, old: int, new: int) -> int:
    """Step k of the block for every lane, from rows ``old`` to rows ``new``; updates the maxima and sets
    flag[j] (bit 1: the step overflowed, the lane keeps its state; bit 2: an e-fold level was crossed).
    Returns the OR of the flags."""
    raised = 0
    for j in range(LANES):
        a0, a1, an, on = x[old + _W0, j], x[old + _W1, j], x[old + _WN, j], x[_LIVE, j] != 0.0
        m = x[_M, j]
        v0, v1, vn = sgd_step(a0, a1, an, mom[0, k, j], mom[1, k, j], mom[2, k, j], x[_LR, j], m)
        lim = x[_LIM, j]
        ok = (abs(v0) <= lim) & (abs(v1) <= lim) & (abs(vn) <= lim)  # False on NaN
        take = ok & on
        x[new + _W0, j] = v0 if take else a0
        x[new + _W1, j] = v1 if take else a1
        x[new + _WN, j] = vn if take else an
        x[new + _S1, j] = x[old + _S1, j] + (a1 * a1 if on else 0.0)
        x[new + _S01, j] = x[old + _S01, j] + (a0 * a0 + a1 * a1 if on else 0.0)
        loss = _loss(v0, v1, m, x[_HX, j])
        w1sq, wnsq = v1 * v1, vn * vn
        x[_MAX_W1SQ, j] = w1sq if take and w1sq > x[_MAX_W1SQ, j] else x[_MAX_W1SQ, j]
        x[_MAX_WNSQ, j] = wnsq if take and wnsq > x[_MAX_WNSQ, j] else x[_MAX_WNSQ, j]
        x[_MAX_LOSS, j] = loss if take and loss > x[_MAX_LOSS, j] else x[_MAX_LOSS, j]
        crossed = take & ((abs(vn) <= x[_THR_N, j]) | (loss <= x[_THR_L, j]))
        f = np.int64(on & ~ok) | (np.int64(crossed) << 1)
        flag[j] = f
        raised |= f
    return raised


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def _advance(k0: int, n: int, p: int, x: np.ndarray, mom: np.ndarray, flag: np.ndarray) -> int:
    """Steps k0..n-1 of the block from parity p; returns after the first step that raised a flag, or at
    the block's end: the number of steps taken."""
    for k in range(k0, n):
        if p == 0:
            raised = _step(k, x, mom, flag, 0, _NEXT)
        else:
            raised = _step(k, x, mom, flag, _NEXT, 0)
        p = 1 - p
        if raised:
            return k + 1 - k0
    return n - k0


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def _init_lane(
    j: int,
    r: int,
    w0i: np.ndarray,
    w1i: np.ndarray,
    wni: np.ndarray,
    sigma: np.ndarray,
    lr: np.ndarray,
    sigma_x: np.ndarray,
    m: np.ndarray,
    batch: np.ndarray,
    keys: np.ndarray,
    limit: np.ndarray,
    x: np.ndarray,
    s: np.ndarray,
    a: np.ndarray,
) -> None:
    """Lane j of a group starts replica r: its state, parameters, stream keys and e-fold thresholds."""
    x[_W0, j], x[_W1, j], x[_WN, j] = w0i[r], w1i[r], wni[r]
    x[_LR, j], x[_M, j], x[_LIM, j] = lr[r], m[r], limit[r]
    _set_sampler(x, j, sigma_x[r], sigma[r], batch[r])
    x[_HX, j] = 0.5 * sigma_x[r] * sigma_x[r]
    x[_A_N, j], x[_A_L, j] = lr[r] * sigma[r] * sigma[r], 2.0 * lr[r] * sigma_x[r] * sigma_x[r]
    s[j], a[j] = keys[r, 0], keys[r, 1]
    n0, loss0 = abs(wni[r]), _loss(w0i[r], w1i[r], m[r], x[_HX, j])
    x[_N0, j], x[_LOSS0, j] = n0, loss0
    x[_THR_N, j] = n0 * np.exp(-1.0) if n0 > 0 else -1.0
    x[_THR_L, j] = loss0 * np.exp(-1.0) if loss0 > 0 else -1.0
    x[_MAX_W1SQ, j], x[_MAX_WNSQ, j], x[_MAX_LOSS, j] = w1i[r] * w1i[r], wni[r] * wni[r], loss0
    x[_LIVE, j] = 1.0


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def _record_traj(rows: np.ndarray, rec_row: np.ndarray, x: np.ndarray, cur: int, traj: np.ndarray, ptr: int) -> None:
    """The recorded live replicas of a group at recorded step number ``ptr``: (w0, w1, w_NI, loss)."""
    for j in range(rows.shape[0]):
        row = rec_row[rows[j]]
        if row >= 0 and x[_LIVE, j] != 0.0:
            w0, w1 = x[cur + _W0, j], x[cur + _W1, j]
            traj[row, ptr, 0], traj[row, ptr, 1], traj[row, ptr, 2] = w0, w1, x[cur + _WN, j]
            traj[row, ptr, 3] = _loss(w0, w1, x[_M, j], x[_HX, j])


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def _on_flags(
    rows: np.ndarray,
    x: np.ndarray,
    flag: np.ndarray,
    stats: np.ndarray,
    overflow_step: np.ndarray,
    kn: np.ndarray,
    kl: np.ndarray,
    t: int,
    cur: int,
    prev: int,
) -> int:
    """After step t, the flags the lanes raised: overflow (the lane stops) and crossed e-fold levels of
    |w_NI| and the loss (recorded); clears the flags and returns the number of lanes that stopped."""
    died = 0
    for j in range(rows.shape[0]):
        f = flag[j]
        if f & 1:  # overflow at step t: frozen at step t - 1
            overflow_step[rows[j]] = t
            x[_LIVE, j] = 0.0
            died += 1
        if f & 2:  # e-fold levels crossed between steps t - 1 and t
            st = stats[rows[j]]
            y, y_prev = abs(x[cur + _WN, j]), abs(x[prev + _WN, j])
            if y <= x[_THR_N, j]:
                x[_THR_N, j], kn[j] = _record_efolds(
                    st,
                    _C_NIW_T,
                    _C_NIW_E,
                    t,
                    y_prev,
                    y,
                    x[_N0, j],
                    x[_THR_N, j],
                    kn[j],
                    x[_A_N, j] * x[prev + _S1, j],
                    x[_A_N, j] * x[cur + _S1, j],
                )
            y = _loss(x[cur + _W0, j], x[cur + _W1, j], x[_M, j], x[_HX, j])
            y_prev = _loss(x[prev + _W0, j], x[prev + _W1, j], x[_M, j], x[_HX, j])
            if y <= x[_THR_L, j]:
                x[_THR_L, j], kl[j] = _record_efolds(
                    st,
                    _C_LOSS_T,
                    _C_LOSS_E,
                    t,
                    y_prev,
                    y,
                    x[_LOSS0, j],
                    x[_THR_L, j],
                    kl[j],
                    x[_A_L, j] * x[prev + _S01, j],
                    x[_A_L, j] * x[cur + _S01, j],
                )
        flag[j] = 0
    return died


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def _final_stats(rows: np.ndarray, x: np.ndarray, cur: int, stats: np.ndarray) -> None:
    """The per-replica statistics of a group at its end (state ``cur``)."""
    for j in range(rows.shape[0]):
        st = stats[rows[j]]
        w0, w1, wn = x[cur + _W0, j], x[cur + _W1, j], x[cur + _WN, j]
        st[0], st[1], st[2], st[5] = w0, w1, wn, x[cur + _S1, j]
        st[3], st[4] = x[_A_N, j] * x[_MAX_W1SQ, j], x[_A_N, j] * x[_MAX_WNSQ, j]
        st[14], st[15], st[16] = x[_LOSS0, j], _loss(w0, w1, x[_M, j], x[_HX, j]), x[_MAX_LOSS, j]
        st[17] = np.sqrt(x[_MAX_WNSQ, j])


@numba.njit(cache=True, fastmath={"contract"})
def _group(
    kind: int,
    rows: np.ndarray,
    w0i: np.ndarray,
    w1i: np.ndarray,
    wni: np.ndarray,
    sigma: np.ndarray,
    lr: np.ndarray,
    sigma_x: np.ndarray,
    m: np.ndarray,
    batch: np.ndarray,
    keys: np.ndarray,
    steps: int,
    limit: np.ndarray,
    rec_row: np.ndarray,
    rec_steps: np.ndarray,
    traj: np.ndarray,
    stats: np.ndarray,
    overflow_step: np.ndarray,
) -> None:
    """Run the replicas ``rows`` (at most LANES) for ``steps`` steps; write their stats, overflow steps
    and recorded trajectories. Unused lanes are dead from the start."""
    n_live = rows.shape[0]
    x = np.zeros((_ROWS, LANES))
    x[_THR_N : _THR_L + 1] = -1.0
    kn, kl = np.zeros(LANES, dtype=np.int64), np.zeros(LANES, dtype=np.int64)
    s, a = np.zeros(LANES, dtype=np.uint64), np.zeros(LANES, dtype=np.uint64)
    flag = np.zeros(LANES, dtype=np.int64)
    mom = np.zeros((4, BLOCK, LANES))
    pending = np.zeros(BLOCK, dtype=np.int64)
    recorded = False
    for j in range(n_live):
        _init_lane(j, rows[j], w0i, w1i, wni, sigma, lr, sigma_x, m, batch, keys, limit, x, s, a)
        stats[rows[j], _C_NIW_T : _C_LOSS_E + 2] = np.nan
        overflow_step[rows[j]] = -1
        recorded |= rec_row[rows[j]] >= 0
    n_rec = rec_steps.shape[0] if recorded else 0
    t = p = ptr = 0
    while True:
        cur = p * _NEXT
        if ptr < n_rec and rec_steps[ptr] == t:
            _record_traj(rows, rec_row, x, cur, traj, ptr)
            ptr += 1
        if t == steps or n_live == 0:
            break
        n = min(BLOCK, steps - t, (rec_steps[ptr] - t) if ptr < n_rec else BLOCK)
        _fill(kind, n, x, s, a, mom, pending)
        k = 0
        while k < n and n_live > 0:
            done = _advance(k, n, p, x, mom, flag)
            k, t, p = k + done, t + done, p ^ (done & 1)
            cur, prev = p * _NEXT, (1 - p) * _NEXT
            n_live -= _on_flags(rows, x, flag, stats, overflow_step, kn, kl, t, cur, prev)
    _final_stats(rows, x, p * _NEXT, stats)


@numba.njit(parallel=True, cache=True)
def _kernel(
    kind: int,
    idx: np.ndarray,
    w0i: np.ndarray,
    w1i: np.ndarray,
    wni: np.ndarray,
    sigma: np.ndarray,
    lr: np.ndarray,
    sigma_x: np.ndarray,
    m: np.ndarray,
    batch: np.ndarray,
    keys: np.ndarray,
    steps: int,
    limit: np.ndarray,
    rec_row: np.ndarray,
    rec_steps: np.ndarray,
    traj: np.ndarray,
    stats: np.ndarray,
    overflow_step: np.ndarray,
) -> None:
    """All replicas ``idx`` of sampler ``SAMPLERS[kind]``, in groups of LANES consecutive ones, parallel
    over groups."""
    for g in numba.prange((idx.shape[0] + LANES - 1) // LANES):
        _group(
            kind,
            idx[g * LANES : (g + 1) * LANES],
            w0i,
            w1i,
            wni,
            sigma,
            lr,
            sigma_x,
            m,
            batch,
            keys,
            steps,
            limit,
            rec_row,
            rec_steps,
            traj,
            stats,
            overflow_step,
        )


# ---------------------------------------------------------------------------------------------------
@dataclass
class ToyRun:
    """Per-replica statistics of one toy-model sweep (all arrays have leading length R).

    ``stats`` holds the columns :data:`STAT_COLUMNS`; ``overflow_step`` is the update at which the
    replica left the divergence bound (-1 if never). ``traj`` (n_recorded, len(record_steps), 4) holds
    (w0, w1, w_NI, clean loss) at ``record_steps`` for the replicas ``recorded`` (NaN after overflow).
    """

    sigma_eps: np.ndarray
    lr: np.ndarray
    batch_size: np.ndarray
    sigma_x: np.ndarray
    M: np.ndarray
    w0_0: np.ndarray
    w1_0: np.ndarray
    w_ni_0: np.ndarray
    replicas: np.ndarray
    steps: int
    method: str
    stats: np.ndarray
    overflow_step: np.ndarray
    recorded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    record_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    traj: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 4)))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.stats[:, STAT_COLUMNS.index(name)]

    @property
    def overflow(self) -> np.ndarray:
        return self.overflow_step >= 0

    def stalled(self, tol: float = 0.1) -> np.ndarray:
        """Task not learned at the horizon: |w1 w0 − M| > tol |M| (docs/theory/noise_injection_nodes.md §5.2), overflow excluded."""
        return np.asarray(~self.overflow & (np.abs(self["w1_T"] * self["w0_T"] - self.M) > tol * np.abs(self.M)))

    def phases(self, *, edge: float = 2.0, tol: float = 0.1) -> np.ndarray:
        """Phase codes (R,) by the rule of docs/theory/noise_injection_nodes.md §5.2 (see :func:`noiseprobe.nin.phases.classify_summary`):
        divergent = overflow or stalled; catapult = max_t η σε² max(w1², w_NI²) > edge; decay =
        |w_NI(T)| <= |w_NI(0)|/e; else decoupled."""
        return classify_summary(
            overflow=self.overflow,
            stalled=self.stalled(tol),
            max_stability=np.maximum(self["max_u"], self["max_v"]),
            niw_ratio=np.abs(self["w_ni_T"]) / np.abs(self.w_ni_0),
            edge=edge,
        )

    def frame(self) -> pd.DataFrame:
        """One row per replica: parameters, initial weights, statistics, overflow step."""
        df: pd.DataFrame = pd.DataFrame(
            {
                "replica": self.replicas,
                "method": self.method,
                "sigma_eps": self.sigma_eps,
                "lr": self.lr,
                "batch_size": self.batch_size,
                "sigma_x": self.sigma_x,
                "M": self.M,
                "steps": self.steps,
                "w0_0": self.w0_0,
                "w1_0": self.w1_0,
                "w_ni_0": self.w_ni_0,
            }
        )
        for j, name in enumerate(STAT_COLUMNS):
            df[name] = self.stats[:, j]
        df["overflow_step"] = self.overflow_step
        return df

    def trajectories(self) -> pd.DataFrame:
        """Long table of the recorded trajectories: replica, step, w0, w1, w_ni, loss."""
        n, k = len(self.recorded), len(self.record_steps)
        table: pd.DataFrame = pd.DataFrame(
            {
                "replica": np.repeat(self.replicas[self.recorded], k),
                "sigma_eps": np.repeat(self.sigma_eps[self.recorded], k),
                "step": np.tile(self.record_steps, n),
                "w0": self.traj[..., 0].ravel(),
                "w1": self.traj[..., 1].ravel(),
                "w_ni": self.traj[..., 2].ravel(),
                "loss": self.traj[..., 3].ravel(),
            }
        )
        return table


def replica_keys(seed: int, replicas: np.ndarray) -> np.ndarray:
    """Per-replica uint64 keys (fast stream, slow stream) from ``seed_sequence(seed, replica)``: (R, 2)."""
    return np.array(
        [seed_sequence(seed, int(r)).generate_state(2, np.uint64) for r in replicas], dtype=np.uint64
    ).reshape(-1, 2)


def init_weights(init: str, seed: int, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Initial (w0, w1, w_NI) for each seed index, Gaussian with the stds of ``INITS[init]``.

    Drawn from stream 1 of ``seed_sequence(seed, seed_index)``, so a seed index has the same
    initialisation at every σε of a sweep (common random numbers across the grid).
    """
    check_choice("init", init, INITS)
    z = ReplicaStreams(seed, np.asarray(seeds).tolist(), stream=1).normal((3,))
    std = np.asarray(INITS[init])
    return z[:, 0] * std[0], z[:, 1] * std[1], z[:, 2] * std[2]


def _per_replica(name: str, value: float | np.ndarray, n: int, dtype: type = np.float64) -> np.ndarray:
    arr: np.ndarray = np.asarray(value, dtype=dtype)
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] not in (1, n)):
        raise ConfigError(name, f"shape {arr.shape}", f"a scalar or an array of length {n}")
    return np.array(np.broadcast_to(arr, (n,)), dtype=dtype)  # a writable copy: one kernel signature


def divergence_limit(w0: np.ndarray, w1: np.ndarray, w_ni: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Per replica, the bound on |w0|, |w1|, |w_NI| beyond which it has diverged (module docstring):
    :data:`~noiseprobe.core.divergence.FACTOR` × max(|w0(0)|, |w1(0)|, |w_NI(0)|, √|M|)."""
    scale = np.maximum.reduce([np.abs(w0), np.abs(w1), np.abs(w_ni), np.sqrt(np.abs(M))])
    return divergence.bound(scale)


def _starts(
    w0: float | np.ndarray, w1: float | np.ndarray, w_ni: float | np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-replica starts (w0, w1, w_NI) of :func:`simulate`, finite."""
    a0, a1, an = (_per_replica(k, v, n) for k, v in (("w0", w0), ("w1", w1), ("w_ni", w_ni)))
    for name, arr in (("w0", a0), ("w1", a1), ("w_ni", an)):
        if not np.all(np.isfinite(arr)):
            raise ConfigError(name, arr[~np.isfinite(arr)][0], "finite values")
    return a0, a1, an


def _recording(
    record: np.ndarray | None, record_steps: np.ndarray | None, n: int, steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The recorded replicas and steps of :func:`simulate`, each replica's row among the recorded ones (−1:
    not recorded) and the NaN-filled trajectory array (recorded replicas, recorded steps, 4)."""
    rec = np.zeros(0, dtype=np.int64) if record is None else np.asarray(record, dtype=np.int64).ravel()
    rsteps = np.zeros(0, dtype=np.int64) if record_steps is None else np.asarray(record_steps, dtype=np.int64)
    if rec.size and (rec.min() < 0 or rec.max() >= n or len(np.unique(rec)) != rec.size):
        raise ConfigError("record", record, f"distinct indices in 0..{n - 1}")
    if rsteps.size and (rsteps.min() < 0 or rsteps.max() > steps or np.any(np.diff(rsteps) <= 0)):
        raise ConfigError("record_steps", "…", f"strictly increasing integers in 0..{steps}")
    rec_row = np.full(n, -1, dtype=np.int64)
    rec_row[rec] = np.arange(rec.size)
    traj = np.full((rec.size, rsteps.size, 4), np.nan)
    return rec, rsteps, rec_row, traj


def simulate(
    sigma_eps: float | np.ndarray,
    *,
    w0: float | np.ndarray,
    w1: float | np.ndarray,
    w_ni: float | np.ndarray,
    steps: int,
    lr: float | np.ndarray = 0.01,
    batch_size: int | np.ndarray = 1,
    sigma_x: float | np.ndarray = 1.0,
    M: float | np.ndarray = 1.0,
    method: str = "exact",
    seed: int = 0,
    replicas: np.ndarray | None = None,
    record: np.ndarray | None = None,
    record_steps: np.ndarray | None = None,
) -> ToyRun:
    """Run ``steps`` SGD steps of the toy model for R replicas at once (float64).

    Every parameter is a scalar or an array of length R (the replica axis: σε values × seeds × any other
    swept parameter). ``replicas`` are the GLOBAL replica indices that key the noise streams (default
    0..R-1); ``record`` (indices into 0..R-1) and ``record_steps`` (increasing steps in 0..steps) select
    the subsampled trajectories to keep. ``method`` is ``"exact"`` (minibatch SGD, eq. 4) or ``"reduced"``
    (eqs. 5–6, Φ ~ N(0, 1)). Returns a :class:`ToyRun`; divergence never raises.
    """
    check_choice("method", method, METHODS)
    steps = check_int("steps", steps, lo=1)
    seed = check_int("seed", seed, lo=0)
    shapes = [np.shape(v) for v in (sigma_eps, w0, w1, w_ni, lr, batch_size, sigma_x, M)]
    n = max((s[0] for s in shapes if len(s) == 1), default=1)
    se = _per_replica("sigma_eps", sigma_eps, n)
    eta = _per_replica("lr", lr, n)
    sx = _per_replica("sigma_x", sigma_x, n)
    m = _per_replica("M", M, n)
    b = _per_replica("batch_size", batch_size, n, np.int64)
    for name, arr, lo in (("sigma_eps", se, 0.0), ("sigma_x", sx, 0.0)):
        if not (np.all(np.isfinite(arr)) and np.all(arr >= lo)):
            raise ConfigError(name, arr[~(np.isfinite(arr) & (arr >= lo))][0], f"finite values >= {lo}")
    if not (np.all(np.isfinite(eta)) and np.all(eta > 0)):  # lr = 0: nothing moves, no phase to classify
        raise ConfigError("lr", eta[~(np.isfinite(eta) & (eta > 0))][0], "finite values > 0")
    if not (np.all(b >= 1) and np.all(np.isfinite(m))):
        raise ConfigError("batch_size/M", "out of range", "batch_size >= 1 and finite M")
    if np.any(np.asarray(batch_size, dtype=np.float64) != b):
        raise ConfigError("batch_size", batch_size, "positive integers")
    a0, a1, an = _starts(w0, w1, w_ni, n)
    limit = divergence_limit(a0, a1, an, m)
    reps = np.arange(n, dtype=np.int64) if replicas is None else _per_replica("replicas", replicas, n, np.int64)
    if np.any(reps < 0):
        raise ConfigError("replicas", reps[reps < 0][0], "non-negative integers (global replica indices)")
    rec, rsteps, rec_row, traj = _recording(record, record_steps, n, steps)
    stats = np.empty((n, _NF))
    ovf = np.empty(n, dtype=np.int64)
    # Dynamic scheduling, one group of LANES replicas at a time: replicas on a σ grid diverge (and stop) at
    # very different steps, so numba's default equal static split leaves threads idle. Results do not change.
    keys = replica_keys(seed, reps)
    groups = {_REDUCED: b >= 1} if method == "reduced" else {_SINGLE: b == 1, _WISHART: b > 1}
    with numba.parallel_chunksize(1):
        for kind, mask in groups.items():
            if mask.any():
                _kernel(
                    kind,
                    np.flatnonzero(mask),
                    a0,
                    a1,
                    an,
                    se,
                    eta,
                    sx,
                    m,
                    b,
                    keys,
                    steps,
                    limit,
                    rec_row,
                    rsteps,
                    traj,
                    stats,
                    ovf,
                )
    return ToyRun(se, eta, b, sx, m, a0, a1, an, reps, steps, method, stats, ovf, rec, rsteps, traj)
