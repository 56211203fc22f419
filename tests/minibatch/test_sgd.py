"""The vectorised SGD simulator: chunk invariance, divergence handling, samplers and sampling schemes."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from scipy import stats

from noiseprobe.core import streams
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.streams import stream_keys
from noiseprobe.minibatch import sgd_kernel
from noiseprobe.minibatch.highdim import highdim_sigma_exact
from noiseprobe.minibatch.linear import label_noise_sigma
from noiseprobe.minibatch.sgd import LinearProblem, simulate_sgd


def _aniso(D: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.normal(size=(D, D)))[0]
    return Q @ np.diag(np.linspace(1.5, 0.2, D)) @ Q.T


def test_chunking_invariance():
    pb = LinearProblem(_aniso(3), u=[1.0, 0.0, -1.0], sigma=0.5, Gamma=0.1)
    kw = dict(steps=50, burn_in=10, seed=3, snapshot_every=10)
    whole = simulate_sgd(pb, lr=0.3, batch_size=4, chains=6, **kw)
    a = simulate_sgd(pb, lr=0.3, batch_size=4, chains=2, first_chain=0, **kw)
    b = simulate_sgd(pb, lr=0.3, batch_size=4, chains=4, first_chain=2, **kw)
    assert np.array_equal(whole.second_moment, np.concatenate([a.second_moment, b.second_moment]))
    assert np.array_equal(whole.snapshots, np.concatenate([a.snapshots, b.snapshots]))
    assert whole.snapshots.shape == (6, 5, 3)


def test_divergence_is_per_chain():
    pb = LinearProblem(1.0, sigma=1.0)
    lr = np.array([0.5, 3.0, 0.5, 3.0])  # λa = 3: E log|1 − λh| > 0, a.s. divergent
    run = simulate_sgd(pb, lr=lr, batch_size=4, steps=3000, burn_in=0, chains=4, seed=0)
    assert run.diverged.tolist() == [False, True, False, True]
    assert (run.diverged_at[[1, 3]] > 0).all() and (run.diverged_at[[0, 2]] == -1).all()
    assert np.isfinite(run.sigma()).all()
    assert np.isnan(run.second_moment[1]).all()


def test_exact_1d_sampler_matches_generic():
    """Both samplers against Thm 2 (a = 1, λ = 0.5, S = 4: Σ = 0.1, tail index ≈ 30 so SEs are reliable)."""
    pb = LinearProblem(1.0, sigma=1.0)
    theory = label_noise_sigma(1.0, lr=0.5, batch_size=4, sigma=1.0)[0, 0]
    for exact, chains in ((True, 2000), (False, 500)):
        run = simulate_sgd(pb, lr=0.5, batch_size=4, steps=2000, burn_in=200, chains=chains, seed=1, exact_law=exact)
        assert abs(run.sigma()[0, 0] - theory) < 4 * run.sigma_se()[0, 0]


def test_exact_law_sampler_matches_minibatch_sampler_3d():
    """Bartlett sampler (with the input-noise reduction) vs explicit minibatches: input noise B not commuting
    with A, label noise and L2 together (no closed form): the two independent estimates of Σ agree."""
    A, B = _aniso(3, 1), 0.3 * _aniso(3, 2)
    pb = LinearProblem(A, u=[1.0, -0.5, 0.8], sigma=0.5, B=B, Gamma=0.1)
    kw = dict(steps=2000, burn_in=300, chains=300)
    ex = simulate_sgd(pb, lr=0.4, batch_size=4, seed=6, exact_law=True, **kw)
    mb = simulate_sgd(pb, lr=0.4, batch_size=4, seed=7, exact_law=False, **kw)
    z = np.abs(ex.sigma() - mb.sigma()) / np.hypot(ex.sigma_se(), mb.sigma_se())
    assert z.max() < 4.5, z
    assert np.allclose(ex.center, np.linalg.solve(A + B + 0.1 * np.eye(3), A @ pb.u))


def test_rademacher_labels():
    pb = LinearProblem(1.0, sigma=1.0, label_noise="rademacher")
    run = simulate_sgd(pb, lr=0.5, batch_size=4, steps=2000, burn_in=200, chains=500, seed=2)
    assert abs(run.sigma()[0, 0] - 0.1) < 4 * run.sigma_se()[0, 0]


@pytest.mark.parametrize("replacement", [True, False])
def test_finite_data_with_and_without_replacement(replacement):
    """Fixed data set (N = 12, D = 3, S = 6): Σ against the exact finite-N solve (Prop. 8 factor)."""
    pb = LinearProblem(_aniso(3), u=[1.0, -0.5, 0.3], sigma=0.7).with_data(12, seed=5)
    lr = 0.4
    run = simulate_sgd(pb, lr=lr, batch_size=6, steps=3000, burn_in=300, chains=400, seed=4, replacement=replacement)
    theory = highdim_sigma_exact(pb.X, pb.y, lr=lr, batch_size=6, replacement=replacement)
    other = highdim_sigma_exact(pb.X, pb.y, lr=lr, batch_size=6, replacement=not replacement)
    z = np.abs(run.sigma() - theory) / run.sigma_se()
    assert z.max() < 4.5, z
    assert np.abs(run.sigma() - other).max() > 6 * run.sigma_se().max()  # the test tells the schemes apart


def test_bad_inputs():
    pb = LinearProblem(np.eye(2))
    with pytest.raises(ConfigError):
        simulate_sgd(pb, lr=0.1, batch_size=0, steps=10, burn_in=0, chains=2, seed=0)
    with pytest.raises(ConfigError):
        simulate_sgd(pb, lr=np.ones(3), batch_size=1, steps=10, burn_in=0, chains=2, seed=0)
    with pytest.raises(ConfigError):
        simulate_sgd(pb, lr=0.1, batch_size=1, steps=10, burn_in=0, chains=2, seed=0, exact_law=True)  # S < D
    with pytest.raises(ConfigError):
        LinearProblem(np.array([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ConfigError):
        LinearProblem(1.0, sigma=-1.0)
    with pytest.raises(ConfigError):
        simulate_sgd(pb.with_data(3, 0), lr=0.1, batch_size=4, steps=10, burn_in=0, chains=2, seed=0, replacement=False)
    for bad in (dict(seed=-1), dict(seed=0.5), dict(first_chain=-2)):
        with pytest.raises(ConfigError):
            simulate_sgd(pb, lr=0.1, batch_size=1, steps=10, burn_in=0, chains=2, **{"seed": 0, **bad})


def test_same_numbers_on_any_chunking_and_thread_count():
    """A chain's path depends only on (seed, global chain index): chunks that split a task's group of lanes
    differently (whole: lanes 0..L−1 and L..L+5; parts: L+1 chains, then 5), and one thread against all of
    them, give bit-identical statistics."""
    pb = LinearProblem(_aniso(2), u=[0.5, -1.0], sigma=0.3, B=0.1 * _aniso(2, 3))
    kw = dict(steps=60, burn_in=5, seed=9, snapshot_every=7, measure_noise=True, exact_law=False)
    L = sgd_kernel.LANES
    whole = simulate_sgd(pb, lr=0.3, batch_size=3, chains=L + 6, **kw)
    parts = [simulate_sgd(pb, lr=0.3, batch_size=3, chains=n, first_chain=f, **kw) for f, n in ((0, L + 1), (L + 1, 5))]
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        single = simulate_sgd(pb, lr=0.3, batch_size=3, chains=L + 6, **kw)
    finally:
        numba.set_num_threads(threads)
    for name in ("second_moment", "mean", "noise_cov", "snapshots"):
        got = getattr(whole, name)
        assert np.array_equal(got, np.concatenate([getattr(p, name) for p in parts])), name
        assert np.array_equal(got, getattr(single, name)), name
    assert not np.array_equal(whole.second_moment[0], whole.second_moment[32])  # lanes are not copies


def test_kernel_gradient_against_the_explicit_minibatch_formula():
    """The kernel's whitened-coordinate ONLINE gradient and its Bartlett EXACT gradient against ĝ = Xᵀ(Xw − y)/S
    formed densely from the same numbers (x = R_a z + R_b z', y = uᵀR_a z + σε; resp. M = R_K L, eq. 98)."""
    rng = np.random.default_rng(0)
    D, S, lanes = 3, 5, sgd_kernel.LANES
    A, B, u = _aniso(D, 1), 0.2 * _aniso(D, 2), rng.normal(size=D)
    Ra, Rb = (np.linalg.cholesky(M) for M in (A, B))
    w = rng.normal(size=(D, lanes))
    for rademacher in (False, True):
        z = rng.normal(size=(1, S * (2 * D + 1), lanes))
        g = sgd_kernel.step_gradient(
            sgd_kernel.ONLINE, w, z, z, Ra, Rb, u, 0.7, rademacher, 2 * D, S, np.zeros((0, D)), np.zeros(0)
        )
        for j in range(lanes):
            zz = z[0, :, j].reshape(S, 2 * D + 1)
            x = zz[:, :D] @ Ra.T + zz[:, D : 2 * D] @ Rb.T
            eps = np.sign(zz[:, -1]) if rademacher else zz[:, -1]
            yv = zz[:, :D] @ Ra.T @ u + 0.7 * eps
            np.testing.assert_allclose(g[:, j], x.T @ (x @ w[:, j] - yv) / S, rtol=1e-12, atol=1e-12)
    Rk, wl = np.linalg.cholesky(A + B), rng.normal(size=D)
    z = rng.normal(size=(1, D * (D - 1) // 2 + 2 * D, lanes))
    chi = rng.chisquare(S - np.arange(D)[None, :, None], size=(1, D, lanes))
    g = sgd_kernel.step_gradient(
        sgd_kernel.EXACT, w, z, np.sqrt(chi), Rk, Rk / S, wl, 0.7, False, D, S, np.zeros((0, D)), np.zeros(0)
    )
    for j in range(lanes):
        L = np.diag(np.sqrt(chi[0, :, j]))
        L[np.tril_indices(D, -1)] = z[0, D : D + D * (D - 1) // 2, j]
        M = Rk @ L
        want = M @ M.T @ (w[:, j] - wl) / S - 0.7 * M @ z[0, -D:, j] / S
        np.testing.assert_allclose(g[:, j], want, rtol=1e-12, atol=1e-12)


def test_block_draws_have_their_laws():
    """The kernel's block draws: normals (fast path + completions) by a 60-bin chi-square test and the tail
    mass beyond the ziggurat's base, uniforms by KS, and χ²_k (k = 1, 2, 5; squeeze + Marsaglia–Tsang
    completions) by KS and their mean/variance within 4 SE."""
    lanes = sgd_kernel.LANES
    keys = stream_keys(4, 0, lanes, 3)[:, :2].copy()
    z, u, chi = sgd_kernel.draw_block(sgd_kernel.EXACT, keys, 4000, 6, 3, 5)  # D = 3, S = 5: χ²_5, χ²_4, χ²_3
    n = z.size
    counts = np.histogram(z.ravel(), stats.norm.ppf(np.linspace(0, 1, 61)))[0]
    assert stats.chisquare(counts).pvalue > 1e-3
    p_tail = 2 * stats.norm.sf(streams.ZIG_R)
    assert abs(np.sum(np.abs(z) > streams.ZIG_R) - n * p_tail) < 4 * np.sqrt(n * p_tail)
    assert stats.kstest(u.ravel(), "uniform").pvalue > 1e-3
    for i, k in enumerate((5, 4, 3)):
        c = chi[:, i].ravel() ** 2
        assert stats.kstest(c, "chi2", args=(k,)).pvalue > 1e-3
        assert abs(c.mean() - k) < 4 * np.sqrt(2 * k / c.size)
        assert abs(c.var() - 2 * k) < 4 * np.sqrt((12 * k * k + 48 * k) / c.size)  # Var of s² for χ²_k
    _, _, chi1 = sgd_kernel.draw_block(sgd_kernel.EXACT, keys, 4000, 2, 1, 1)  # D = 1, S = 1: χ²_1 = z²
    assert stats.kstest(chi1.ravel() ** 2, "chi2", args=(1,)).pvalue > 1e-3


def test_invalid_learning_rates_and_robust_divergence():
    pb = LinearProblem(np.eye(2), sigma=1.0)
    kw = dict(steps=10, burn_in=0, chains=8, seed=0)
    for bad in (-1.0, 0.0, True, np.nan, np.array([0.1] * 7 + [-0.1]), -np.eye(2), np.zeros((2, 2))):
        with pytest.raises(ConfigError, match="lr"):
            simulate_sgd(pb, lr=bad, batch_size=2, **kw)
    # far past the stability edge: |w| overflows to inf within a few hundred steps and is flagged
    run = simulate_sgd(pb, lr=np.array([0.1] * 4 + [50.0] * 4), batch_size=2, steps=400, burn_in=0, chains=8, seed=0)
    assert run.diverged.tolist() == [False] * 4 + [True] * 4
    assert (run.diverged_at[4:] > 0).all() and np.isfinite(run.sigma()).all()
