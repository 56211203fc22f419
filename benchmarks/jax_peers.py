"""JAX implementations of the toy-model sweep and of the minibatch SGD simulator: the peers a researcher
would write instead of noiseprobe (benchmark-only; JAX is not a dependency of the library).

Both are ``jit(vmap(chain))`` with ``lax.scan`` over blocks of steps and an inner ``lax.scan`` over the
steps of a block, float64 (``jax_enable_x64``), one key per replica ``fold_in(key(seed), replica)`` and per
block ``fold_in(replica key, block)`` (so, like noiseprobe, a replica's numbers do not depend on the
chunking), the noise of a block drawn at once. The work matches the numba kernels': the same update, the
same divergence test (the replica is frozen), the same running statistics (toy: the maxima, Σ w1²,
Σ (w0² + w1²) and the first e-fold steps of |w_NI| and of the loss; SGD: Σ (w − w*), Σ (w − w*)(w − w*)ᵀ).
Compile time is measured apart from the run (``jit(...).lower(...).compile()``). XLA's CPU thread pool is
limited to the same thread count as numba's (``intra_op_parallelism_threads``) before JAX is imported.
"""

from __future__ import annotations

import os
import time

import numba
import numpy as np

BLOCK = 250  # steps whose noise is drawn at once

# PRNG implementations: threefry2x32 (JAX's default: counter-based, splits and fold_in are sound) and rbg
# (XLA's RngBitGenerator for the bits, threefry for key derivation, so keys from fold_in stay independent);
# unsafe_rbg derives keys by a cheap non-cryptographic scheme (JAX documents no independence guarantee for
# fold_in/split) and is reported for information only.
SAFE_IMPLS = ("threefry2x32", "rbg")
ALL_IMPLS = (*SAFE_IMPLS, "unsafe_rbg")


def _jax():
    threads = numba.get_num_threads()
    flags = os.environ.get("XLA_FLAGS", "")
    if "intra_op_parallelism_threads" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={threads}"
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platforms", "cpu")
    return jax


def version() -> str:
    return _jax().__version__


def _timed(fn, args, repeats: int) -> tuple[float, float]:
    """(compile seconds, best run seconds) of ``jax.jit(fn)`` on ``args``."""
    jax = _jax()
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    t_compile = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - t0)
    return t_compile, best


def _blocks(steps: int) -> tuple[int, int]:
    block = min(BLOCK, steps)
    if steps % block:
        raise ValueError(f"steps = {steps} must be a multiple of {block}")
    return steps // block, block


def sgd_explicit(
    Ra: np.ndarray,
    u: np.ndarray,
    sigma: float,
    lr: float,
    S: int,
    steps: int,
    chains: int,
    seed: int,
    impl: str,
    repeats: int = 2,
) -> tuple[float, float]:
    """Online SGD on linear regression with explicit Gaussian minibatches (no input noise, Gaussian labels),
    in the whitened coordinates of the numba kernel; returns (compile s, run s)."""
    jax = _jax()
    import jax.numpy as jnp

    D = Ra.shape[0]
    n_blocks, block = _blocks(steps)
    Raj, uj = jnp.asarray(Ra), jnp.asarray(u)

    def chain(k, w0):
        def block_step(carry, b):
            z_blk = jax.random.normal(jax.random.fold_in(k, b), (block, S, D + 1), dtype=jnp.float64)

            def step(c, z):
                w, dead, s1, s2 = c
                # small contractions as broadcast + sum (fused by XLA; its batched dot_general on CPU is slower)
                va = jnp.sum(Raj * (w - uj)[:, None], axis=0)  # R_aᵀ(w − u)
                r = jnp.sum(z[:, :D] * va, axis=1) - sigma * z[:, D]
                w = w - lr * jnp.sum(Raj * jnp.sum(z[:, :D] * r[:, None], axis=0), axis=1) / S
                bad = ~jnp.all(jnp.abs(w) <= 1e100)
                dead = dead | bad
                w = jnp.where(bad, uj, w)
                dv = w - uj
                return (w, dead, s1 + dv, s2 + dv[:, None] * dv[None, :]), None

            return jax.lax.scan(step, carry, z_blk)[0], None

        init = (w0, jnp.bool_(False), jnp.zeros(D), jnp.zeros((D, D)))
        return jax.lax.scan(block_step, init, jnp.arange(n_blocks))[0]

    def run(key, w0):
        keys = jax.vmap(lambda c: jax.random.fold_in(key, c))(jnp.arange(chains))
        return jax.vmap(chain)(keys, w0)

    w0 = jnp.asarray(np.tile(u, (chains, 1)) + 0.1)
    return _timed(run, (jax.random.key(seed, impl=impl), w0), repeats)


def toy_sweep(
    sigma: np.ndarray,
    w0: np.ndarray,
    w1: np.ndarray,
    wn: np.ndarray,
    steps: int,
    lr: float,
    M: float,
    seed: int,
    impl: str,
    threshold: float = 1e8,
    repeats: int = 2,
) -> tuple[float, float]:
    """The toy model's exact SGD at B = 1 (x, ε fresh each step) with the kernel's statistics; returns
    (compile s, run s)."""
    jax = _jax()
    import jax.numpy as jnp

    n_blocks, block = _blocks(steps)

    def replica(k, se, a0, a1, an):
        n0, l0 = jnp.abs(an), 0.5 * (a1 * a0 - M) ** 2

        def block_step(carry, b):
            z_blk = jax.random.normal(jax.random.fold_in(k, b), (block, 2), dtype=jnp.float64)

            def step(c, zt):
                (v0, v1, vn, live, s1, s01, m1, mn, ml, tn, tl), (z, t) = c, zt
                x, e = z[0], se * z[1]
                sxx, sxe, see = x * x, x * e, e * e
                d = v1 * v0 - M
                n0_ = v0 - lr * v1 * (d * sxx + v1 * vn * sxe)
                n1_ = v1 - lr * (d * v0 * sxx + (2 * v1 * v0 - M) * vn * sxe + v1 * vn * vn * see)
                nn_ = vn - lr * v1 * (d * sxe + v1 * vn * see)
                ok = (jnp.abs(n0_) <= threshold) & (jnp.abs(n1_) <= threshold) & (jnp.abs(nn_) <= threshold)
                take = ok & live
                s1 = s1 + jnp.where(live, v1 * v1, 0.0)
                s01 = s01 + jnp.where(live, v0 * v0 + v1 * v1, 0.0)
                v0, v1, vn = jnp.where(take, n0_, v0), jnp.where(take, n1_, v1), jnp.where(take, nn_, vn)
                loss = 0.5 * (v1 * v0 - M) ** 2
                m1, mn, ml = jnp.maximum(m1, v1 * v1), jnp.maximum(mn, vn * vn), jnp.maximum(ml, loss)
                lv = jnp.array([1.0, np.exp(-1.0)])
                tn = jnp.where((tn < 0) & (jnp.abs(vn) <= n0 * lv * np.exp(-1.0)) & take, t + 1, tn)
                tl = jnp.where((tl < 0) & (loss <= l0 * lv * np.exp(-1.0)) & take, t + 1, tl)
                return (v0, v1, vn, take, s1, s01, m1, mn, ml, tn, tl), None

            ts = b * block + jnp.arange(block)
            return jax.lax.scan(step, carry, (z_blk, ts))[0], None

        init = (
            a0,
            a1,
            an,
            jnp.bool_(True),
            0.0,
            0.0,
            a1 * a1,
            an * an,
            l0,
            -jnp.ones(2, jnp.int64),
            -jnp.ones(2, jnp.int64),
        )
        return jax.lax.scan(block_step, init, jnp.arange(n_blocks))[0]

    def run(key, se, a0, a1, an):
        keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(se.shape[0]))
        return jax.vmap(replica)(keys, se, a0, a1, an)

    args = (jax.random.key(seed, impl=impl), *(jnp.asarray(a, dtype=jnp.float64) for a in (sigma, w0, w1, wn)))
    return _timed(run, args, repeats)
