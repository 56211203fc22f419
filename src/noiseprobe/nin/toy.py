"""The linear toy model of the NIN paper (paper 001, Sec. 3, eqs. 4–6): simulators.

Model ``f = w1 (w0 x + w_NI ε)``, target ``y = M x``, loss with the ½ convention (eq. 4)::

    L = (1/2B) Σ_{i∈batch} (w1 (w0 x_i + w_NI ε_i) − M x_i)²,   x ~ N(0, σx²), ε ~ N(0, σε²),

samples drawn fresh every step (infinite data: with replacement). The batch enters only through the
moments S_xx = ⟨x²⟩_B, S_xε = ⟨xε⟩_B, S_εε = ⟨ε²⟩_B. With D = w1 w0 − M the exact SGD step (all right-hand
sides at the old values; reference §4, verified against autograd in the tests) is::

    w0'  = w0  − η w1 (D S_xx + w1 w_NI S_xε)                       (derived; the paper omits it)
    w1'  = w1  − η (D w0 S_xx + (2 w1 w0 − M) w_NI S_xε + w1 w_NI² S_εε)
    wNI' = wNI − η w1 (D S_xε + w1 w_NI S_εε)

Two samplers of the moments share that one step:

* ``method="exact"``: exact minibatch SGD. B = 1 draws (x, ε); B > 1 draws B·(S_xx, S_xε, S_εε) from
  Wishart(B, diag(σx², σε²)) by the 2×2 Bartlett decomposition (O(1) per step for any B).
* ``method="reduced"``: the paper's reduced map, eqs. (5)–(6): S_xx → σx², S_εε → σε², S_xε → −Φ σx σε/√B
  with Φ ~ N(0, 1). Then the w1 and w_NI steps are *literally* eq. (5) with A, Ã, B = η w_NI², B̃ = η w1²,
  C = η D w0 σx² of eq. (6), and w0 follows the derived equation w0' = w0 − η σx² w1 D + η (Φ σx σε/√B) w1² w_NI.

Every replica is advanced by a fused numba kernel (parallel over replicas, a loop over steps inside;
one compiled kernel per sampler), which records the phase and decay statistics online instead of full
trajectories. Randomness: each replica owns a SplitMix64 stream keyed by ``seed_sequence(seed, replica)``
(normals by the ziggurat method; at B = 1, x and ε from the two 32-bit halves of one output, in Marsaglia
& Tsang's 32-bit form; χ² by Marsaglia–Tsang), so the numbers do not depend on chunking or on the thread
count. The kernel is compiled with ``fastmath={"contract"}`` only (fused multiply-adds; no assumptions
about NaN or inf, which the divergence test relies on). A replica whose weights leave |w| <= ``threshold``
or become non-finite is frozen at its last finite state and its overflow step recorded; the others
continue.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np
import pandas as pd

from noiseprobe.core.errors import ConfigError, check_choice, check_int, check_real
from noiseprobe.core.seeding import ReplicaStreams, seed_sequence
from noiseprobe.nin.phases import classify_summary

METHODS: tuple[str, ...] = ("exact", "reduced")
INITS: dict[str, tuple[float, float, float]] = {
    # std of (w0, w1, w_NI) at t = 0: the two readings of the garbled App. B sentence (reference §5.1)
    "niw_large": (0.1, 0.1, 1.0),
    "data_large": (1.0, 1.0, 0.1),
}

# ---------------------------------------------------------------------------------------------------
# random numbers inside numba: SplitMix64 (Steele, Lea & Flood 2014), one 64-bit state per replica
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


@numba.njit(cache=True, inline="always")
def _mix(s: np.uint64) -> np.uint64:
    """SplitMix64 output function of the state ``s``."""
    z = s
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@numba.njit(cache=True, inline="always")
def _uniform(s: np.uint64) -> tuple[np.uint64, float]:
    """Advance the state; return (state, u) with u uniform on the open interval (0, 1)."""
    s = s + _GOLDEN
    return s, (np.int64(_mix(s) >> _S11) + 0.5) * (1.0 / 9007199254740992.0)


def _ziggurat_tables(n: int = 128, r: float = 3.442619855899,
                     v: float = 9.91256303526217e-3) -> tuple[np.ndarray, np.ndarray]:
    """Layer edges x[0..n] and ratios x[i+1]/x[i] of the 128-layer normal ziggurat (Marsaglia & Tsang
    2000, in Doornik's 2005 'ZIGNOR' form; ``v`` is the common layer area)."""
    x = np.zeros(n + 1)
    f = np.exp(-0.5 * r * r)
    x[0], x[1] = v / f, r
    for i in range(2, n):
        x[i] = np.sqrt(-2.0 * np.log(v / x[i - 1] + f))
        f = np.exp(-0.5 * x[i] * x[i])
    return x, x[1:] / x[:-1]


_ZX, _ZR = _ziggurat_tables()
_ZIG_R = 3.442619855899
_LOW7 = np.uint64(0x7F)


_LOW32, _S32, _S7, _ZERO = np.uint64(0xFFFFFFFF), np.uint64(32), np.uint64(7), np.uint64(0)


@numba.njit(cache=True, inline="always")
def _bits53(z: np.uint64) -> tuple[np.int64, float]:
    """A ziggurat draw from 64 random bits: layer i from the low 7, u in (-1, 1) from the top 53."""
    return np.int64(z & _LOW7), (np.int64(z >> _S11) + 0.5) * (2.0 / 9007199254740992.0) - 1.0


@numba.njit(cache=True, inline="always")
def _bits32(v: np.uint64) -> tuple[np.int64, float]:
    """A ziggurat draw from 32 random bits (Marsaglia & Tsang's form): layer i from the low 7, u from
    the other 25."""
    return np.int64(v & _LOW7), (np.int64(v >> _S7) + 0.5) * (2.0 / 33554432.0) - 1.0


@numba.njit(cache=True, inline="always")
def _layer(s: np.uint64) -> tuple[np.uint64, np.int64, float]:
    """Advance the state; return (state, i, u) of one 53-bit ziggurat draw."""
    s = s + _GOLDEN
    i, u = _bits53(_mix(s))
    return s, i, u


@numba.njit(cache=True)
def _normal_slow(s: np.uint64, i: np.int64, u: float) -> tuple[np.uint64, float]:
    """The ziggurat's rare branches for a draw (i, u) outside its layer's rectangle: the tail beyond r
    (Marsaglia 1964) for i = 0, else the wedge test; on rejection, fresh draws until acceptance."""
    while True:
        if i == 0:
            while True:
                s, a = _uniform(s)
                s, c = _uniform(s)
                x = np.log(a) / _ZIG_R
                if -2.0 * np.log(c) >= x * x:
                    return s, (x - _ZIG_R) if u < 0 else (_ZIG_R - x)
        x = u * _ZX[i]
        f0 = np.exp(-0.5 * (_ZX[i] * _ZX[i] - x * x))
        f1 = np.exp(-0.5 * (_ZX[i + 1] * _ZX[i + 1] - x * x))
        s, a = _uniform(s)
        if f1 + a * (f0 - f1) < 1.0:
            return s, x
        s, i, u = _layer(s)
        if abs(u) < _ZR[i]:
            return s, u * _ZX[i]


@numba.njit(cache=True, inline="always")
def _ziggurat(s: np.uint64, i: np.int64, u: float) -> tuple[np.uint64, float]:
    """N(0, 1) from the draw (i, u): accepted in the layer's rectangle about 99 % of the time; the rest
    goes to :func:`_normal_slow` (kept out of line so this path inlines)."""
    if abs(u) < _ZR[i]:
        return s, u * _ZX[i]
    return _normal_slow(s, i, u)


@numba.njit(cache=True, inline="always")
def _normal(s: np.uint64) -> tuple[np.uint64, float]:
    """One N(0, 1) by the ziggurat from one SplitMix64 output."""
    s, i, u = _layer(s)
    return _ziggurat(s, i, u)


@numba.njit(cache=True)
def _chi2(s: np.uint64, k: int) -> tuple[np.uint64, float]:
    """χ²_k for integer k >= 1: z² for k = 1, else 2·Gamma(k/2) by Marsaglia–Tsang (shape >= 1)."""
    if k == 1:
        s, z = _normal(s)
        return s, z * z
    d = 0.5 * k - 1.0 / 3.0
    c = 1.0 / np.sqrt(9.0 * d)
    while True:
        s, z = _normal(s)
        v = 1.0 + c * z
        if v <= 0.0:
            continue
        v = v * v * v
        s, u = _uniform(s)
        if np.log(u) < 0.5 * z * z + d - d * v + d * np.log(v):
            return s, 2.0 * d * v


# ---------------------------------------------------------------------------------------------------
# Samplers of one step's batch moments (S_xx, S_xε, S_εε), one per kind of replica. Each is a pair:
# ``draw(s, b, sx, se) -> (s, z, complete, S_xx, S_xε, S_εε)`` does the cheap common part inline (one
# SplitMix64 output z); when ``complete`` is False, ``finish(s, z, b, sx, se) -> (s, S_xx, S_xε, S_εε)``
# redoes the draw from z with the rare branches (or does all of it, for B > 1). The simulation kernel
# keeps every function call out of its hot loop this way; the numbers are those of drawing inline.

@numba.njit(cache=True, inline="always")
def _single_moments(zx: float, ze: float, sx: float, se: float) -> tuple[float, float, float]:
    """(S_xx, S_xε, S_εε) of one sample x = σx zx, ε = σε ze."""
    return sx * sx * zx * zx, sx * se * zx * ze, se * se * ze * ze


@numba.njit(cache=True, inline="always")
def _draw_single(s: np.uint64, b: int, sx: float, se: float) -> tuple[np.uint64, np.uint64, bool, float, float, float]:
    """Exact SGD at B = 1: (x, ε) from the two 32-bit halves of one output."""
    s = s + _GOLDEN
    z = _mix(s)
    ix, ux = _bits32(z & _LOW32)
    ie, ue = _bits32(z >> _S32)
    complete = abs(ux) < _ZR[ix] and abs(ue) < _ZR[ie]
    sxx, sxe, see = _single_moments(ux * _ZX[ix], ue * _ZX[ie], sx, se)
    return s, z, complete, sxx, sxe, see


@numba.njit(cache=True)
def _finish_single(s: np.uint64, z: np.uint64, b: int, sx: float, se: float) -> tuple[np.uint64, float, float, float]:
    ix, ux = _bits32(z & _LOW32)
    s, zx = _ziggurat(s, ix, ux)
    ie, ue = _bits32(z >> _S32)
    s, ze = _ziggurat(s, ie, ue)
    sxx, sxe, see = _single_moments(zx, ze, sx, se)
    return s, sxx, sxe, see


@numba.njit(cache=True, inline="always")
def _draw_reduced(s: np.uint64, b: int, sx: float, se: float) -> tuple[np.uint64, np.uint64, bool, float, float, float]:
    """The reduced map, eqs. (5)-(6): S_xx = σx², S_εε = σε², S_xε = −Φ σx σε/√B, Φ ~ N(0, 1)."""
    s = s + _GOLDEN
    z = _mix(s)
    i, u = _bits53(z)
    return s, z, abs(u) < _ZR[i], sx * sx, -u * _ZX[i] * sx * se / np.sqrt(b), se * se


@numba.njit(cache=True)
def _finish_reduced(s: np.uint64, z: np.uint64, b: int, sx: float, se: float) -> tuple[np.uint64, float, float, float]:
    i, u = _bits53(z)
    s, phi = _ziggurat(s, i, u)
    return s, sx * sx, -phi * sx * se / np.sqrt(b), se * se


@numba.njit(cache=True, inline="always")
def _draw_wishart(s: np.uint64, b: int, sx: float, se: float) -> tuple[np.uint64, np.uint64, bool, float, float, float]:
    """Exact SGD at B > 1: nothing inline (the χ² draws loop); all of it in :func:`_finish_wishart`."""
    return s, _ZERO, False, 0.0, 0.0, 0.0


@numba.njit(cache=True)
def _finish_wishart(s: np.uint64, z: np.uint64, b: int, sx: float, se: float) -> tuple[np.uint64, float, float, float]:
    """Bartlett: B·S = L A Aᵀ Lᵀ, L = diag(σx, σε), A = [[c1, 0], [n, c2]], c1² ~ χ²_B, c2² ~ χ²_{B-1}."""
    s, c1sq = _chi2(s, b)
    s, c2sq = _chi2(s, b - 1)
    s, n = _normal(s)
    return s, sx * sx * c1sq / b, sx * se * np.sqrt(c1sq) * n / b, se * se * (n * n + c2sq) / b


SAMPLERS: tuple[str, ...] = ("single", "wishart", "reduced")   # exact B = 1, exact B > 1, eqs. (5)-(6)
_SINGLE, _WISHART, _REDUCED = range(len(SAMPLERS))


@numba.njit(cache=True, inline="always")
def _draw(kind: int, s: np.uint64, b: int, sx: float, se: float) -> tuple[np.uint64, np.uint64, bool, float, float, float]:
    """The draw of sampler ``SAMPLERS[kind]``; ``kind`` is a constant in each kernel, so one branch remains."""
    if kind == _SINGLE:
        return _draw_single(s, b, sx, se)
    if kind == _WISHART:
        return _draw_wishart(s, b, sx, se)
    return _draw_reduced(s, b, sx, se)


@numba.njit(cache=True)
def _finish(kind: int, s: np.uint64, z: np.uint64, b: int, sx: float, se: float) -> tuple[np.uint64, float, float, float]:
    """The completion of sampler ``SAMPLERS[kind]`` (out of line)."""
    if kind == _SINGLE:
        return _finish_single(s, z, b, sx, se)
    if kind == _WISHART:
        return _finish_wishart(s, z, b, sx, se)
    return _finish_reduced(s, z, b, sx, se)


@numba.njit(cache=True)
def _draws(kind: int, key: np.uint64, n: int, b: int, sx: float, se: float) -> np.ndarray:
    out = np.empty((n, 3))
    s = key
    for k in range(n):
        s, z, complete, out[k, 0], out[k, 1], out[k, 2] = _draw(kind, s, b, sx, se)
        if not complete:
            s, out[k, 0], out[k, 1], out[k, 2] = _finish(kind, s, z, b, sx, se)
    return out


def draw_moments(key: np.uint64, n: int, method: str, batch_size: int, sigma_x: float,
                 sigma_eps: float) -> np.ndarray:
    """``n`` successive (S_xx, S_xε, S_εε) draws of one replica's stream, as the kernel draws them:
    shape (n, 3). For tests."""
    kind = _REDUCED if method == "reduced" else (_SINGLE if batch_size == 1 else _WISHART)
    return _draws(kind, np.uint64(key), n, batch_size, sigma_x, sigma_eps)


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def sgd_step(w0: float, w1: float, wn: float, sxx: float, sxe: float, see: float, lr: float,
             m: float) -> tuple[float, float, float]:
    """One exact SGD step on the ½-MSE of eq. (4) given the batch moments (module docstring)."""
    d = w1 * w0 - m
    g0 = w1 * (d * sxx + w1 * wn * sxe)
    g1 = d * w0 * sxx + (2.0 * w1 * w0 - m) * wn * sxe + w1 * wn * wn * see
    gn = w1 * (d * sxe + w1 * wn * see)
    return w0 - lr * g0, w1 - lr * g1, wn - lr * gn


# columns of the float statistics returned by the kernel
STAT_COLUMNS: tuple[str, ...] = (
    "w0_T", "w1_T", "w_ni_T",       # final (or last finite) weights
    "max_u", "max_v",               # max_t η σε² w1², max_t η σε² w_NI² (stability of the mean map)
    "sum_w1sq",                     # Σ_{t<T} w1(t)²  (horizon law)
    "niw_efold1", "niw_efold2",     # first step with |w_NI|/|w_NI,0| <= e^-1, e^-2 (log-interpolated)
    "niw_exp1", "niw_exp2",         # eq. (9) exponent η σε² Σ_{s<t} w1(s)² at those steps
    "loss_efold1", "loss_efold2",   # same for the clean loss L(ε=0) = ½ σx² D²
    "loss_exp1", "loss_exp2",       # eq. (9) exponent 2 η σx² Σ_{s<t} (w0² + w1²) at those steps
    "loss_0", "loss_T", "max_loss", "max_abs_w_ni",
)
_NF = len(STAT_COLUMNS)
_C_NIW_T, _C_NIW_E = STAT_COLUMNS.index("niw_efold1"), STAT_COLUMNS.index("niw_exp1")
_C_LOSS_T, _C_LOSS_E = STAT_COLUMNS.index("loss_efold1"), STAT_COLUMNS.index("loss_exp1")


@numba.njit(cache=True, inline="always")
def _crossing(t: int, y_prev: float, y_now: float, level: float, e_prev: float,
              e_now: float) -> tuple[float, float]:
    """Crossing of ``level`` between steps t-1 and t, interpolated in log y; the eq. (9) exponent is
    interpolated with the same fraction."""
    lp, ln, lv = np.log(y_prev), np.log(max(y_now, 1e-300)), np.log(level)
    f = (lp - lv) / (lp - ln) if lp > ln else 1.0
    f = min(max(f, 0.0), 1.0)
    return t - 1 + f, e_prev + f * (e_now - e_prev)


@numba.njit(cache=True)
def _record_efolds(st: np.ndarray, col_t: int, col_e: int, t: int, y_prev: float, y: float, y0: float,
                   thr: float, k: int, e_prev: float, e_now: float) -> tuple[float, int]:
    """Write each e-fold level (k = 1, 2 of y0) crossed between steps t-1 and t into st[col_t + k - 1]
    (step) and st[col_e + k - 1] (eq. 9 exponent); return the next level and count. Kept out of line:
    it runs at most twice per run, and inlining it slows the hot loop."""
    while y <= thr:
        st[col_t + k], st[col_e + k] = _crossing(t, y_prev, y, thr, e_prev, e_now)
        k += 1
        thr = y0 * np.exp(-2.0) if k == 1 else -1.0
    return thr, k


def _make_kernel(kind: int):
    """Compile the replica-parallel simulation kernel for the sampler ``SAMPLERS[kind]``. (A closure over
    an int, not over the sampler functions: numba caches it then.)"""

    @numba.njit(parallel=True, cache=True, fastmath={"contract"})
    def kernel(idx, w0i, w1i, wni, sigma, lr, sigma_x, m, batch, keys, steps, threshold, rec_row, rec_steps,
               traj, stats, overflow_step):
        nan = np.nan
        for k in numba.prange(idx.shape[0]):
            r = idx[k]
            w0, w1, wn = w0i[r], w1i[r], wni[r]
            se, sx, eta, mm, b = sigma[r], sigma_x[r], lr[r], m[r], batch[r]
            a_n, a_l, hx = eta * se * se, 2.0 * eta * sx * sx, 0.5 * sx * sx   # eq. (9) prefactors; ½σx²
            n0 = abs(wn)
            loss0 = hx * (w1 * w0 - mm) * (w1 * w0 - mm)
            # next e-fold levels (k = 1, then 2); -1 once both were crossed or when undefined
            thr_n = n0 * np.exp(-1.0) if n0 > 0 else -1.0
            thr_l = loss0 * np.exp(-1.0) if loss0 > 0 else -1.0
            kn = kl = 0
            st = stats[r]
            st[_C_NIW_T:_C_LOSS_E + 2] = nan                  # e-fold steps and exponents
            sw1 = sw01 = 0.0                                  # Σ_{s<t} w1², Σ_{s<t} (w0² + w1²)
            max_w1sq = max_wnsq = max_loss = 0.0
            yn_prev, yl_prev, sw1_prev, sw01_prev = n0, loss0, 0.0, 0.0
            row, ptr = rec_row[r], 0
            n_rec = rec_steps.shape[0] if row >= 0 else 0
            t_next = rec_steps[0] if n_rec > 0 else steps      # next step to record (or the last step)
            ovf = -1
            loss = loss0
            t = 0
            # the moments of the update t -> t+1 are drawn one step ahead
            s, z, complete, sxx, sxe, see = _draw(kind, keys[r], b, sx, se)
            while True:
                if not complete:
                    s, sxx, sxe, see = _finish(kind, s, z, b, sx, se)
                    complete = True
                # Hot loop, free of function calls: it stops at an event at step t (an e-fold level
                # crossed, a step to record, the last step), at an incomplete draw, or at overflow. It
                # is re-entered at the same t once that is dealt with; an event cannot fire twice.
                while True:
                    d = w1 * w0 - mm
                    loss = hx * d * d
                    yn = abs(wn)
                    max_w1sq = max(max_w1sq, w1 * w1)
                    max_wnsq = max(max_wnsq, wn * wn)
                    max_loss = max(max_loss, loss)
                    if yn <= thr_n or loss <= thr_l or t == t_next:
                        break
                    yn_prev, yl_prev, sw1_prev, sw01_prev = yn, loss, sw1, sw01
                    sw1 += w1 * w1
                    sw01 += w0 * w0 + w1 * w1
                    v0, v1, vn = sgd_step(w0, w1, wn, sxx, sxe, see, eta, mm)
                    t += 1
                    if not (abs(v0) <= threshold and abs(v1) <= threshold and abs(vn) <= threshold):
                        ovf = t                               # also catches NaN
                        break
                    w0, w1, wn = v0, v1, vn
                    s, z, complete, sxx, sxe, see = _draw(kind, s, b, sx, se)
                    if not complete:
                        break
                if ovf >= 0:
                    break
                if not complete:
                    continue
                if yn <= thr_n:
                    thr_n, kn = _record_efolds(st, _C_NIW_T, _C_NIW_E, t, yn_prev, yn, n0, thr_n, kn,
                                               a_n * sw1_prev, a_n * sw1)
                if loss <= thr_l:
                    thr_l, kl = _record_efolds(st, _C_LOSS_T, _C_LOSS_E, t, yl_prev, loss, loss0, thr_l, kl,
                                               a_l * sw01_prev, a_l * sw01)
                if t == t_next:
                    if ptr < n_rec and rec_steps[ptr] == t:
                        traj[row, ptr, 0], traj[row, ptr, 1], traj[row, ptr, 2], traj[row, ptr, 3] = w0, w1, wn, loss
                        ptr += 1
                    if t == steps:
                        break
                    t_next = rec_steps[ptr] if ptr < n_rec else steps
            st[0], st[1], st[2], st[3], st[4], st[5] = w0, w1, wn, a_n * max_w1sq, a_n * max_wnsq, sw1
            st[14], st[15], st[16], st[17] = loss0, loss, max_loss, np.sqrt(max_wnsq)
            overflow_step[r] = ovf

    return kernel


_KERNELS = {name: _make_kernel(kind) for kind, name in enumerate(SAMPLERS)}


# ---------------------------------------------------------------------------------------------------
@dataclass
class ToyRun:
    """Per-replica statistics of one toy-model sweep (all arrays have leading length R).

    ``stats`` holds the columns :data:`STAT_COLUMNS`; ``overflow_step`` is the update at which the
    replica left |w| <= threshold (-1 if never). ``traj`` (n_recorded, len(record_steps), 4) holds
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
        """Task not learned at the horizon: |w1 w0 − M| > tol |M| (reference §5.2), overflow excluded."""
        return ~self.overflow & (np.abs(self["w1_T"] * self["w0_T"] - self.M) > tol * np.abs(self.M))

    def phases(self, *, edge: float = 2.0, tol: float = 0.1) -> np.ndarray:
        """Phase codes (R,) by the rule of reference §5.2 (see :func:`noiseprobe.nin.phases.classify_summary`):
        divergent = overflow or stalled; catapult = max_t η σε² max(w1², w_NI²) > edge; decay =
        |w_NI(T)| <= |w_NI(0)|/e; else decoupled."""
        return classify_summary(overflow=self.overflow, stalled=self.stalled(tol),
                                max_stability=np.maximum(self["max_u"], self["max_v"]),
                                niw_ratio=np.abs(self["w_ni_T"]) / np.abs(self.w_ni_0), edge=edge)

    def frame(self) -> pd.DataFrame:
        """One row per replica: parameters, initial weights, statistics, overflow step."""
        df = pd.DataFrame({"replica": self.replicas, "method": self.method, "sigma_eps": self.sigma_eps,
                           "lr": self.lr, "batch_size": self.batch_size, "sigma_x": self.sigma_x,
                           "M": self.M, "steps": self.steps, "w0_0": self.w0_0, "w1_0": self.w1_0,
                           "w_ni_0": self.w_ni_0})
        for j, name in enumerate(STAT_COLUMNS):
            df[name] = self.stats[:, j]
        df["overflow_step"] = self.overflow_step
        return df

    def trajectories(self) -> pd.DataFrame:
        """Long table of the recorded trajectories: replica, step, w0, w1, w_ni, loss."""
        n, k = len(self.recorded), len(self.record_steps)
        return pd.DataFrame({"replica": np.repeat(self.replicas[self.recorded], k),
                             "sigma_eps": np.repeat(self.sigma_eps[self.recorded], k),
                             "step": np.tile(self.record_steps, n),
                             "w0": self.traj[..., 0].ravel(), "w1": self.traj[..., 1].ravel(),
                             "w_ni": self.traj[..., 2].ravel(), "loss": self.traj[..., 3].ravel()})


def replica_keys(seed: int, replicas: np.ndarray) -> np.ndarray:
    """Per-replica uint64 stream keys from ``seed_sequence(seed, replica)``."""
    return np.array([seed_sequence(seed, int(r)).generate_state(1, np.uint64)[0] for r in replicas],
                    dtype=np.uint64)


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
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] not in (1, n)):
        raise ConfigError(name, f"shape {arr.shape}", f"a scalar or an array of length {n}")
    return np.array(np.broadcast_to(arr, (n,)), dtype=dtype)          # a writable copy: one kernel signature


def simulate(sigma_eps: float | np.ndarray, *, w0: float | np.ndarray, w1: float | np.ndarray,
             w_ni: float | np.ndarray, steps: int, lr: float | np.ndarray = 0.01,
             batch_size: int | np.ndarray = 1, sigma_x: float | np.ndarray = 1.0, M: float | np.ndarray = 1.0,
             method: str = "exact", seed: int = 0, replicas: np.ndarray | None = None,
             record: np.ndarray | None = None, record_steps: np.ndarray | None = None,
             threshold: float = 1e8) -> ToyRun:
    """Run ``steps`` SGD steps of the toy model for R replicas at once (float64).

    Every parameter is a scalar or an array of length R (the replica axis: σε values × seeds × any other
    swept parameter). ``replicas`` are the GLOBAL replica indices that key the noise streams (default
    0..R-1); ``record`` (indices into 0..R-1) and ``record_steps`` (increasing steps in 0..steps) select
    the subsampled trajectories to keep. ``method`` is ``"exact"`` (minibatch SGD, eq. 4) or ``"reduced"``
    (eqs. 5–6, Φ ~ N(0, 1)). Returns a :class:`ToyRun`; divergence never raises.
    """
    check_choice("method", method, METHODS)
    steps = check_int("steps", steps, lo=1)
    threshold = check_real("threshold", threshold, lo=0.0, lo_open=True)
    shapes = [np.shape(v) for v in (sigma_eps, w0, w1, w_ni, lr, batch_size, sigma_x, M)]
    n = max((s[0] for s in shapes if len(s) == 1), default=1)
    se = _per_replica("sigma_eps", sigma_eps, n)
    eta = _per_replica("lr", lr, n)
    sx = _per_replica("sigma_x", sigma_x, n)
    m = _per_replica("M", M, n)
    b = _per_replica("batch_size", batch_size, n, np.int64)
    for name, arr, lo in (("sigma_eps", se, 0.0), ("lr", eta, 0.0), ("sigma_x", sx, 0.0)):
        if not (np.all(np.isfinite(arr)) and np.all(arr >= lo)):
            raise ConfigError(name, arr[~(np.isfinite(arr) & (arr >= lo))][0], f"finite values >= {lo}")
    if not (np.all(b >= 1) and np.all(np.isfinite(m))):
        raise ConfigError("batch_size/M", "out of range", "batch_size >= 1 and finite M")
    if np.any(np.asarray(batch_size, dtype=np.float64) != b):
        raise ConfigError("batch_size", batch_size, "positive integers")
    a0, a1, an = (_per_replica(k, v, n) for k, v in (("w0", w0), ("w1", w1), ("w_ni", w_ni)))
    reps = np.arange(n, dtype=np.int64) if replicas is None else _per_replica("replicas", replicas, n, np.int64)
    rec = np.zeros(0, dtype=np.int64) if record is None else np.asarray(record, dtype=np.int64).ravel()
    rsteps = np.zeros(0, dtype=np.int64) if record_steps is None else np.asarray(record_steps, dtype=np.int64)
    if rec.size and (rec.min() < 0 or rec.max() >= n or len(np.unique(rec)) != rec.size):
        raise ConfigError("record", record, f"distinct indices in 0..{n - 1}")
    if rsteps.size and (rsteps.min() < 0 or rsteps.max() > steps or np.any(np.diff(rsteps) <= 0)):
        raise ConfigError("record_steps", "…", f"strictly increasing integers in 0..{steps}")
    rec_row = np.full(n, -1, dtype=np.int64)
    rec_row[rec] = np.arange(rec.size)
    traj = np.full((rec.size, rsteps.size, 4), np.nan)
    stats = np.empty((n, _NF))
    ovf = np.empty(n, dtype=np.int64)
    # Dynamic scheduling in small chunks: replicas on a σ grid diverge (and stop) at very different
    # steps, so numba's default equal static split leaves threads idle. Results do not depend on it.
    keys = replica_keys(seed, reps)
    groups = {"reduced": b >= 1} if method == "reduced" else {"single": b == 1, "wishart": b > 1}
    with numba.parallel_chunksize(8):
        for name, mask in groups.items():
            if mask.any():
                _KERNELS[name](np.flatnonzero(mask), a0, a1, an, se, eta, sx, m, b, keys, steps, threshold,
                               rec_row, rsteps, traj, stats, ovf)
    return ToyRun(se, eta, b, sx, m, a0, a1, an, reps, steps, method, stats, ovf, rec, rsteps, traj)
