"""The numba kernel of :func:`noiseprobe.minibatch.sgd.simulate_sgd`: chains as SIMD lanes, noise from
counter-based streams (``noiseprobe.core.streams``).

A task advances LANES chains in lockstep, one array column per chain ("lane"), so that every arithmetic
operation of a step is a loop over lanes (vectorised; a single chain's step is a chain of dependent
multiply-adds and would run at the latency, not the throughput, of the FPU). Tasks run in parallel.

Each chain owns three SplitMix64 streams (keys from ``stream_keys(seed, chain)``): a *normal* and a
*uniform* stream that give a fixed number of outputs per step, so the numbers of a block of steps are
drawn at once (the ziggurat's and the χ² squeeze's fast paths vectorised over lanes), and a *slow* stream,
used in order, for the rare completions (ziggurat wedge and tail, χ² rejections) and the random start. A
chain's numbers depend only on (seed, global chain index): not on the chunking, the lanes it shares or
the thread count.

Samplers of one step's minibatch gradient ĝ (all with the ½ convention, docs/theory/minibatch_noise.md §14):

* ``ONLINE``: S fresh samples x = R_a z + R_b z', y = uᵀR_a z + σε (or σ·sign ε), computed in whitened
  coordinates: r_s = z_s·R_aᵀ(w − u) + z'_s·R_bᵀw − σε_s, ĝ = (R_a Σ z_s r_s + R_b Σ z'_s r_s)/S
  (2D² + 2SD multiply-adds per step, 4D² + 4SD with input noise).
* ``EXACT``: the Bartlett sampler of eq. (98): ĝ = (R_K/S) L (Lᵀ R_Kᵀ(w − w_lab) − σ_eff ζ) with L lower
  triangular, L_ii² ~ χ²_{S−i}, L_ij ~ N(0, 1) (i > j), ζ ~ N(0, I_D); 3D² multiply-adds per step, L read
  in place from the block's numbers.
* ``WITH`` / ``WITHOUT``: a fixed data set, S indices uniform with replacement (Def. 2), or a uniform
  S-subset by a partial Fisher–Yates shuffle of the chain's running permutation (Def. 3).
"""

from __future__ import annotations

import numba
import numpy as np

from noiseprobe.core.streams import GOLDEN, ZR, ZX, bits53, chi2_from, gamma_shape, mix, normal, normal_slow, unit

ONLINE, EXACT, WITH, WITHOUT = range(4)
LANES = 64  # chains per task (a multiple of the widest SIMD vector, 8 float64)
BLOCK_NUMBERS = 1024  # random numbers per lane drawn at once (bounds the buffers: 0.5 MiB per task)
# rows of the per-task state array v[row, i, lane]
_W, _M, _G, _VA, _VB, _HA, _HB, _DV, _ETA = range(9)


@numba.njit(cache=True)
def draws_per_step(mode: int, D: int, S: int, n_in: int) -> tuple[int, int]:
    """(normals, uniforms) per step of a sampler."""
    if mode == ONLINE:
        return S * (n_in + 1), 0
    if mode == EXACT:
        return D * (D - 1) // 2 + 2 * D, D
    return 0, S


@numba.njit(cache=True)
def _fill(
    mode: int,
    t0: int,
    nb: int,
    nz: int,
    nu: int,
    S: int,
    keys: np.ndarray,
    a: np.ndarray,
    z: np.ndarray,
    u: np.ndarray,
    chi: np.ndarray,
) -> None:
    """Numbers of steps t0 … t0+nb−1 of every lane: z[k, n, j] the normal of output (t0+k)·nz + n + 1 of
    lane j's normal stream (key keys[0, j]), u[k, n, j] likewise uniform (keys[1, j]); in EXACT mode
    chi[k, i, j] (i < D = nu) is the root of χ²_{S−i} (Bartlett's L_ii) from the proposal (z[k, i, j],
    u[k, i, j]). Fast paths for all
    (vectorised over lanes, NaN where incomplete), then the completions in order from the slow streams
    ``a``: the normals' in (k, n) order, then the χ²'s in (i, k) order."""
    for k in range(nb):
        for n in range(nz):
            ctr = np.uint64((t0 + k) * nz + n + 1) * GOLDEN
            for j in range(LANES):
                i, x = bits53(mix(keys[0, j] + ctr))
                z[k, n, j] = x * ZX[i] if abs(x) < ZR[i] else np.nan
        for n in range(nu):
            ctr = np.uint64((t0 + k) * nu + n + 1) * GOLDEN
            for j in range(LANES):
                u[k, n, j] = unit(mix(keys[1, j] + ctr))
    for k in range(nb):
        for n in range(nz):
            ctr = np.uint64((t0 + k) * nz + n + 1) * GOLDEN
            for j in range(LANES):
                if np.isnan(z[k, n, j]):
                    i, x = bits53(mix(keys[0, j] + ctr))
                    a[j], z[k, n, j] = normal_slow(a[j], i, x)
    if mode == EXACT:
        for n in range(nu):
            df = S - n
            d, c = gamma_shape(max(df, 2))
            for k in range(nb):
                for j in range(LANES):  # Marsaglia–Tsang's squeeze; z² for χ²_1
                    g, x = z[k, n, j], 1.0 + c * z[k, n, j]
                    ok = (x > 0.0) & (u[k, n, j] < 1.0 - 0.0331 * (g * g) * (g * g))
                    chi[k, n, j] = abs(g) if df == 1 else (np.sqrt(2.0 * d * x * x * x) if ok else np.nan)
                for j in range(LANES):
                    if np.isnan(chi[k, n, j]):
                        a[j], c2 = chi2_from(a[j], d, c, z[k, n, j], u[k, n, j])
                        chi[k, n, j] = np.sqrt(c2)


@numba.njit(cache=True)
def _matvec(v: np.ndarray, out: int, M: np.ndarray, src: int, transpose: bool) -> None:
    """v[out] = M v[src] (or Mᵀ v[src]) for every lane."""
    D = M.shape[0]
    for i in range(D):
        c = M[0, i] if transpose else M[i, 0]
        for j in range(LANES):
            v[out, i, j] = c * v[src, 0, j]
        for m in range(1, D):
            c = M[m, i] if transpose else M[i, m]
            for j in range(LANES):
                v[out, i, j] += c * v[src, m, j]


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def _online_gradient(
    k: int,
    v: np.ndarray,
    r: np.ndarray,
    z: np.ndarray,
    P1: np.ndarray,
    P2: np.ndarray,
    sig: float,
    rademacher: bool,
    n_in: int,
    S: int,
) -> None:
    """S·ĝ of online data from the block's normals z (inputs through the factors P1, P2; the label noise
    last), given v[_VA] = R_aᵀ(w − u)."""
    D = P1.shape[0]
    if n_in > D:
        _matvec(v, _VB, P2, _W, True)
    for i in range(D):
        for j in range(LANES):
            v[_HA, i, j] = 0.0
            v[_HB, i, j] = 0.0
    for s in range(S):
        o = s * (n_in + 1)
        for j in range(LANES):
            e = z[k, o + n_in, j]
            r[j] = -sig * ((1.0 if e >= 0.0 else -1.0) if rademacher else e)
        for i in range(D):
            for j in range(LANES):
                r[j] += z[k, o + i, j] * v[_VA, i, j]
        if n_in > D:
            for i in range(D):
                for j in range(LANES):
                    r[j] += z[k, o + D + i, j] * v[_VB, i, j]
        for i in range(D):
            for j in range(LANES):
                v[_HA, i, j] += z[k, o + i, j] * r[j]
        if n_in > D:
            for i in range(D):
                for j in range(LANES):
                    v[_HB, i, j] += z[k, o + D + i, j] * r[j]
    _matvec(v, _G, P1, _HA, False)
    if n_in > D:
        _matvec(v, _VB, P2, _HB, False)
        for i in range(D):
            for j in range(LANES):
                v[_G, i, j] += v[_VB, i, j]


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def _exact_gradient(k: int, v: np.ndarray, z: np.ndarray, chi: np.ndarray, P2: np.ndarray, sig: float) -> None:
    """ĝ in law (Bartlett): L_ii = chi[k, i] (the χ² roots), L_im = z[k, D + i(i−1)/2 + m] (i > m); P2 = R_K/S."""
    D = v.shape[1]
    o = D + D * (D - 1) // 2  # ζ
    for m in range(D):  # p = Lᵀ q − σ_eff ζ
        for j in range(LANES):
            v[_HB, m, j] = chi[k, m, j] * v[_VA, m, j] - sig * z[k, o + m, j]
        for i in range(m + 1, D):
            q = D + i * (i - 1) // 2 + m
            for j in range(LANES):
                v[_HB, m, j] += z[k, q, j] * v[_VA, i, j]
    for i in range(D):  # L p
        for j in range(LANES):
            v[_HA, i, j] = chi[k, i, j] * v[_HB, i, j]
        for m in range(i):
            q = D + i * (i - 1) // 2 + m
            for j in range(LANES):
                v[_HA, i, j] += z[k, q, j] * v[_HB, m, j]
    _matvec(v, _G, P2, _HA, False)


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def _data_gradient(
    mode: int, k: int, v: np.ndarray, u: np.ndarray, S: int, X: np.ndarray, y: np.ndarray, perm: np.ndarray
) -> None:
    """S·ĝ on a fixed data set: S samples with replacement, or the next S of a running permutation."""
    D, N = v.shape[1], X.shape[0]
    for i in range(D):
        for j in range(LANES):
            v[_G, i, j] = 0.0
    for s in range(S):
        for j in range(LANES):
            if mode == WITH:
                n = min(np.int64(u[k, s, j] * N), N - 1)
            else:  # partial Fisher–Yates on the running permutation
                q = s + min(np.int64(u[k, s, j] * (N - s)), N - s - 1)
                perm[s, j], perm[q, j] = perm[q, j], perm[s, j]
                n = perm[s, j]
            res = -y[n]
            for i in range(D):
                res += X[n, i] * v[_W, i, j]
            for i in range(D):
                v[_G, i, j] += X[n, i] * res


@numba.njit(cache=True, fastmath={"contract"})
def _gradient(
    mode: int,
    k: int,
    v: np.ndarray,
    r: np.ndarray,
    z: np.ndarray,
    u: np.ndarray,
    chi: np.ndarray,
    P1: np.ndarray,
    P2: np.ndarray,
    vec: np.ndarray,
    sig: float,
    rademacher: bool,
    n_in: int,
    S: int,
    X: np.ndarray,
    y: np.ndarray,
    perm: np.ndarray,
) -> None:
    """ĝ (without Γw) of block step k into v[_G] for every lane (v[_VA … _HB], r: scratch)."""
    D = P1.shape[0]
    if mode == ONLINE or mode == EXACT:
        for i in range(D):
            for j in range(LANES):
                v[_DV, i, j] = v[_W, i, j] - vec[i]
        _matvec(v, _VA, P1, _DV, True)  # R_aᵀ(w − u), resp. R_Kᵀ(w − w_lab)
    if mode == ONLINE:
        _online_gradient(k, v, r, z, P1, P2, sig, rademacher, n_in, S)
    elif mode == EXACT:
        _exact_gradient(k, v, z, chi, P2, sig)
        return
    else:
        _data_gradient(mode, k, v, u, S, X, y, perm)
    inv = 1.0 / S
    for i in range(D):
        for j in range(LANES):
            v[_G, i, j] *= inv


# long: one fused step loop per group of LANES chains (35 lines of flat-array signature); split into inline njit
# helpers (update, divergence, sums) it measured 4.5-6% slower (interleaved single-thread medians, 13 rounds).
@numba.njit(cache=True, fastmath={"contract"})
def _group(
    g0: int,
    mode: int,
    keys: np.ndarray,
    w0: np.ndarray,
    init_scale: float,
    lr: np.ndarray,
    Lam: np.ndarray,
    lam_matrix: bool,
    mu: float,
    Gam: np.ndarray,
    center: np.ndarray,
    Q: np.ndarray,
    P1: np.ndarray,
    P2: np.ndarray,
    vec: np.ndarray,
    sig: float,
    rademacher: bool,
    n_in: int,
    S: int,
    X: np.ndarray,
    y: np.ndarray,
    total: int,
    burn_in: int,
    every: int,
    snap_every: int,
    limit: np.ndarray,
    s1: np.ndarray,
    s2: np.ndarray,
    seta: np.ndarray,
    snaps: np.ndarray,
    div_at: np.ndarray,
) -> None:
    """Chains g0 … g0 + LANES − 1 (those that exist) for ``total`` steps."""
    D, C = center.shape[0], keys.shape[0]
    n_live = min(LANES, C - g0)
    nz, nu = draws_per_step(mode, D, S, n_in)
    T = max(1, min(total, BLOCK_NUMBERS // max(1, nz + nu)))
    z, u = np.empty((T, nz, LANES)), np.empty((T, nu, LANES))
    chi = np.empty((T, nu if mode == EXACT else 0, LANES))
    v, r = np.zeros((9, D, LANES)), np.zeros(LANES)
    lk, a = np.zeros((2, LANES), dtype=np.uint64), np.zeros(LANES, dtype=np.uint64)
    lrj, lim = np.zeros(LANES), np.full(LANES, np.inf)
    perm = np.empty((X.shape[0] if mode == WITHOUT else 0, LANES), dtype=np.int64)
    for j in range(LANES):
        for q in range(perm.shape[0]):
            perm[q, j] = q
    for j in range(n_live):
        c = g0 + j
        lk[0, j], lk[1, j], a[j], lrj[j], lim[j] = keys[c, 0], keys[c, 1], keys[c, 2], lr[c], limit[c]
        for i in range(D):
            v[_W, i, j] = w0[c, i]
        if init_scale > 0.0:
            for i in range(D):
                a[j], e = normal(a[j])
                v[_W, i, j] += init_scale * e
    for j in range(n_live, LANES):
        for i in range(D):
            v[_W, i, j] = center[i]
    has_gam = np.any(Gam != 0.0)
    measure_noise = seta.shape[0] > 0
    n_snap = snaps.shape[1]
    dead = np.zeros(LANES, dtype=np.bool_)
    n_pairs = D * (D + 1) // 2  # the sums, lane-major (vectorised, not scattered)
    acc1, acc2 = np.zeros((D, LANES)), np.zeros((n_pairs, LANES))
    acc_eta = np.zeros((n_pairs if measure_noise else 0, LANES))
    meas = t = 0
    while t < total:
        nb = min(T, total - t)
        _fill(mode, t, nb, nz, nu, S, lk, a, z, u, chi)
        for k in range(nb):
            _gradient(mode, k, v, r, z, u, chi, P1, P2, vec, sig, rademacher, n_in, S, X, y, perm)
            if has_gam:
                for i in range(D):
                    for m in range(D):
                        for j in range(LANES):
                            v[_G, i, j] += Gam[i, m] * v[_W, m, j]
            if measure_noise:  # η = ĝ − ∇L_train(w), ∇L_train = Q (w − w*)
                for i in range(D):
                    for j in range(LANES):
                        v[_DV, i, j] = v[_W, i, j] - center[i]
                _matvec(v, _ETA, Q, _DV, False)
                for i in range(D):
                    for j in range(LANES):
                        v[_ETA, i, j] = v[_G, i, j] - v[_ETA, i, j]
            for i in range(D):
                for j in range(LANES):
                    v[_M, i, j] = mu * v[_M, i, j] + v[_G, i, j]
            if lam_matrix:
                _matvec(v, _G, Lam, _M, False)
                for i in range(D):
                    for j in range(LANES):
                        v[_W, i, j] -= v[_G, i, j]
            else:
                for i in range(D):
                    for j in range(LANES):
                        v[_W, i, j] -= lrj[j] * v[_M, i, j]
            t += 1
            for j in range(LANES):
                r[j] = 0.0
            for i in range(D):
                for j in range(LANES):
                    r[j] = r[j] if abs(v[_W, i, j] - center[i]) <= lim[j] else 1.0  # 1 for NaN too
            bad = False
            for j in range(LANES):
                bad |= r[j] != 0.0
            if bad:  # record, and restart the lane at w* (excluded later)
                for j in range(LANES):
                    ok = True
                    for i in range(D):
                        ok &= abs(v[_W, i, j] - center[i]) <= lim[j]
                    if not ok:
                        if j < n_live and not dead[j]:
                            dead[j] = True
                            div_at[g0 + j] = t
                        for i in range(D):
                            v[_W, i, j], v[_M, i, j] = center[i], 0.0
            if t > burn_in and (every == 1 or (t - burn_in) % every == 0):
                for i in range(D):
                    for j in range(LANES):
                        v[_DV, i, j] = v[_W, i, j] - center[i]
                        acc1[i, j] += v[_DV, i, j]
                p = 0
                for i in range(D):
                    for m in range(i + 1):
                        for j in range(LANES):
                            acc2[p, j] += v[_DV, i, j] * v[_DV, m, j]
                        if measure_noise:
                            for j in range(LANES):
                                acc_eta[p, j] += v[_ETA, i, j] * v[_ETA, m, j]
                        p += 1
                if snap_every > 0 and meas % snap_every == 0 and meas // snap_every < n_snap:
                    for i in range(D):
                        for j in range(n_live):
                            snaps[g0 + j, meas // snap_every, i] = v[_W, i, j]
                meas += 1
    p = 0
    for i in range(D):
        for j in range(n_live):
            s1[g0 + j, i] = acc1[i, j]
        for m in range(i + 1):
            for j in range(n_live):
                s2[g0 + j, i, m] = acc2[p, j]
                if measure_noise:
                    seta[g0 + j, i, m] = acc_eta[p, j]
            p += 1


@numba.njit(cache=True, parallel=True)
def run_chains(
    mode: int,
    keys: np.ndarray,
    w0: np.ndarray,
    init_scale: float,
    lr: np.ndarray,
    Lam: np.ndarray,
    lam_matrix: bool,
    mu: float,
    Gam: np.ndarray,
    center: np.ndarray,
    Q: np.ndarray,
    P1: np.ndarray,
    P2: np.ndarray,
    vec: np.ndarray,
    sig: float,
    rademacher: bool,
    n_in: int,
    S: int,
    X: np.ndarray,
    y: np.ndarray,
    total: int,
    burn_in: int,
    every: int,
    snap_every: int,
    limit: np.ndarray,
    s1: np.ndarray,
    s2: np.ndarray,
    seta: np.ndarray,
    snaps: np.ndarray,
    div_at: np.ndarray,
) -> None:
    """Advance every chain ``total`` steps and write its sums (lower triangles of s2, seta); a chain that
    leaves |w_i − w*_i| <= limit[chain] (or turns non-finite) gets its step in ``div_at`` and is restarted at w*."""
    for g in numba.prange((keys.shape[0] + LANES - 1) // LANES):
        _group(
            g * LANES,
            mode,
            keys,
            w0,
            init_scale,
            lr,
            Lam,
            lam_matrix,
            mu,
            Gam,
            center,
            Q,
            P1,
            P2,
            vec,
            sig,
            rademacher,
            n_in,
            S,
            X,
            y,
            total,
            burn_in,
            every,
            snap_every,
            limit,
            s1,
            s2,
            seta,
            snaps,
            div_at,
        )


@numba.njit(cache=True)
def draw_block(
    mode: int, keys: np.ndarray, nb: int, nz: int, nu: int, S: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, u, chi) of the first ``nb`` steps of lanes with stream keys ``keys`` (LANES, 2), as the kernel
    draws them (slow streams keyed by the normal keys; chi: the χ² roots). For tests."""
    z, u, chi = np.empty((nb, nz, LANES)), np.empty((nb, nu, LANES)), np.empty((nb, nu, LANES))
    _fill(mode, 0, nb, nz, nu, S, keys.T.copy(), keys[:, 0].copy(), z, u, chi)
    return z, u, chi


@numba.njit(cache=True)
def step_gradient(
    mode: int,
    w: np.ndarray,
    z: np.ndarray,
    u: np.ndarray,
    P1: np.ndarray,
    P2: np.ndarray,
    vec: np.ndarray,
    sig: float,
    rademacher: bool,
    n_in: int,
    S: int,
    X: np.ndarray,
    y: np.ndarray,
) -> np.ndarray:
    """ĝ (D, LANES) of one step from w (D, LANES) and given numbers z, u (1, n, LANES) (in EXACT mode u holds
    the χ² roots L_ii and P2 = P1/S). For tests."""
    D = w.shape[0]
    v = np.zeros((9, D, LANES))
    v[_W] = w
    perm = np.empty((X.shape[0], LANES), dtype=np.int64)
    for j in range(LANES):
        perm[:, j] = np.arange(X.shape[0])
    _gradient(mode, 0, v, np.zeros(LANES), z, u, u, P1, P2, vec, sig, rademacher, n_in, S, X, y, perm)
    return np.asarray(v[_G].copy())
