"""The toy-model simulators (nin.toy): the step against autograd and against eqs. (5)-(6), the random
moments against their exact distributions, online statistics against recorded trajectories,
reproducibility across chunking and threads, and per-replica divergence handling."""

from __future__ import annotations

import warnings

import numba
import numpy as np
import pytest
import torch
from scipy import stats

from noiseprobe.core import streams
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.fitting import efold_time
from noiseprobe.nin import toy
from noiseprobe.nin.toy_theory import loss_exponent, niw_exponent


def test_sgd_step_matches_autograd_of_eq4():
    rng = np.random.default_rng(0)
    for b in (1, 5):
        x, eps = rng.normal(0, 1.3, b), rng.normal(0, 2.0, b)
        w = torch.tensor(rng.normal(size=3), dtype=torch.float64, requires_grad=True)
        m, lr = 0.7, 0.05
        xt, et = torch.tensor(x), torch.tensor(eps)
        loss = ((w[1] * (w[0] * xt + w[2] * et) - m * xt) ** 2).sum() / (2 * b)  # eq. (4), ½-MSE
        loss.backward()
        want = (w - lr * w.grad).detach().numpy()
        got = toy.sgd_step(*w.detach().numpy(), np.mean(x * x), np.mean(x * eps), np.mean(eps * eps), lr, m)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


def test_reduced_step_is_eqs_5_6_of_the_paper():
    rng = np.random.default_rng(1)
    eta, sx, se, b, m = 0.01, 1.2, 3.0, 4, 1.5
    for _ in range(20):
        w0, w1, wn, phi = rng.normal(size=4)
        # eq. (6), written out literally
        a = eta * phi * sx / np.sqrt(b) * wn * (2 * w1 * w0 - m)
        a_t = eta * phi * sx / np.sqrt(b) * w1 * (w1 * w0 - m)
        b_, b_t, c = eta * wn**2, eta * w1**2, eta * (w1 * w0 - m) * w0 * sx**2
        w1_new = a * se + w1 * (1 - b_ * se**2) - c  # eq. (5)
        wn_new = a_t * se + wn * (1 - b_t * se**2)  # eq. (5)
        w0_new = w0 - eta * sx**2 * w1 * (w1 * w0 - m) + eta * phi * sx * se / np.sqrt(b) * w1**2 * wn
        got = toy.sgd_step(w0, w1, wn, sx**2, -phi * sx * se / np.sqrt(b), se**2, eta, m)
        np.testing.assert_allclose(got, (w0_new, w1_new, wn_new), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("exact,b", [(True, 1), (True, 2), (True, 3), (True, 7), (True, 32), (False, 3)])
def test_moment_draws_have_the_wishart_moments(exact, b):
    sx, se, n = 1.5, 0.7, 200_000
    s = toy.draw_moments(np.array([12345 + b, 777], dtype=np.uint64), n, "exact" if exact else "reduced", b, sx, se)
    if exact:  # E S = diag(σx², σε²); Var S_xx = 2σx⁴/B, Var S_xε = σx²σε²/B, Var S_εε = 2σε⁴/B
        means = [sx**2, 0.0, se**2]
        variances = [2 * sx**4 / b, sx**2 * se**2 / b, 2 * se**4 / b]
    else:  # reduced map: S_xx, S_εε fixed, S_xε = −Φ σx σε/√B
        means, variances = [sx**2, 0.0, se**2], [0.0, sx**2 * se**2 / b, 0.0]
    for j in range(3):
        col = s[:, j]
        assert abs(col.mean() - means[j]) <= 4 * col.std() / np.sqrt(n) + 1e-12
        dev2 = (col - means[j]) ** 2
        assert abs(dev2.mean() - variances[j]) <= 4 * dev2.std() / np.sqrt(n) + 1e-12
    if exact:  # the Bartlett factors: B S_xx/σx² = c1² ~ χ²_B, n ~ N(0, 1), c2² ~ χ²_{B-1}, independent
        c1sq = s[:, 0] * b / sx**2
        assert stats.kstest(c1sq, stats.chi2(b).cdf).pvalue > 1e-3
        if b > 1:
            z = s[:, 1] * b / (sx * se * np.sqrt(c1sq))
            c2sq = s[:, 2] * b / se**2 - z * z
            assert stats.kstest(z, "norm").pvalue > 1e-3
            assert stats.kstest(c2sq, stats.chi2(b - 1).cdf).pvalue > 1e-3
            assert abs(np.corrcoef(c1sq, c2sq)[0, 1]) < 4 / np.sqrt(n)
        assert abs(np.corrcoef(s[:, 0], s[:, 2])[0, 1]) < 4 / np.sqrt(n)
    else:  # Φ ~ N(0, 1)
        assert stats.kstest(-s[:, 1] * np.sqrt(b) / (sx * se), "norm").pvalue > 1e-3


def _grid(n_sigma=8, n_seeds=6, lo=0.05, hi=40.0):
    sigma = np.repeat(np.logspace(np.log10(lo), np.log10(hi), n_sigma), n_seeds)
    seeds = np.tile(np.arange(n_seeds), n_sigma)
    w0, w1, wn = toy.init_weights("niw_large", 3, np.arange(n_seeds))
    return sigma, dict(w0=w0[seeds], w1=w1[seeds], w_ni=wn[seeds])


@pytest.mark.parametrize("method,b", [("exact", 1), ("exact", 4), ("reduced", 1)])
def test_same_numbers_for_any_chunking_and_thread_count(method, b):
    """A replica's numbers do not depend on which replicas share its SIMD group (some of which diverge
    or cross e-fold levels at other steps), on the chunking, or on the thread count."""
    sigma, w = _grid()
    kw = dict(steps=3000, batch_size=b, method=method, seed=11)
    full = toy.simulate(sigma, **w, **kw)
    idx = np.array([40, 3, 17, 29])
    part = toy.simulate(sigma[idx], **{k: v[idx] for k, v in w.items()}, replicas=idx, **kw)
    np.testing.assert_array_equal(part.stats, full.stats[idx])
    np.testing.assert_array_equal(part.overflow_step, full.overflow_step[idx])
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = toy.simulate(sigma, **w, **kw)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(single.stats, full.stats)
    other = toy.simulate(sigma, **w, **{**kw, "seed": 12})
    assert not np.array_equal(other.stats, full.stats)


def test_divergence_is_recorded_per_replica_and_never_stops_the_others():
    sigma = np.array([0.5, 1e4, 2.0, np.float64(1e6)])
    kw = dict(w0=0.3, w1=0.5, w_ni=1.0, steps=500, method="exact", seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = toy.simulate(sigma, **kw)
    assert list(run.overflow) == [False, True, False, True]
    assert np.all(run.overflow_step[[1, 3]] >= 1)
    assert np.all(np.isfinite(run["w1_T"]))  # frozen at the last finite state
    alone = toy.simulate(sigma[[0, 2]], replicas=[0, 2], **kw)  # identical without the divergent ones
    np.testing.assert_array_equal(alone.stats, run.stats[[0, 2]])
    assert list(run.phases()[[1, 3]]) == [3, 3]


@pytest.mark.parametrize("method,b", [("exact", 1), ("exact", 16), ("reduced", 1)])
def test_online_statistics_equal_those_of_the_recorded_trajectory(method, b):
    sigma, w = _grid(n_sigma=6, n_seeds=3, lo=0.5, hi=12.0)
    steps, lr = 1500, 0.01
    all_steps = np.arange(steps + 1)
    run = toy.simulate(
        sigma,
        **w,
        steps=steps,
        lr=lr,
        batch_size=b,
        method=method,
        seed=2,
        record=np.arange(sigma.size),
        record_steps=all_steps,
    )
    ok = ~run.overflow
    w0, w1, wn, loss = (run.traj[ok, :, j] for j in range(4))
    se = sigma[ok]
    np.testing.assert_allclose(run["w1_T"][ok], w1[:, -1])
    np.testing.assert_allclose(run["max_u"][ok], (lr * se[:, None] ** 2 * w1**2).max(1), rtol=1e-12)
    np.testing.assert_allclose(run["max_v"][ok], (lr * se[:, None] ** 2 * wn**2).max(1), rtol=1e-12)
    np.testing.assert_allclose(run["sum_w1sq"][ok], (w1[:, :-1] ** 2).sum(1), rtol=1e-10)
    # atol: the kernel fuses w1 w0 − M into one FMA, exact where numpy rounds the product (D ~ 1e-16)
    np.testing.assert_allclose(run["loss_T"][ok], 0.5 * (w1[:, -1] * w0[:, -1] - 1) ** 2, rtol=1e-12, atol=1e-20)
    t = all_steps.astype(float)
    for k, col in ((1, "niw_efold1"), (2, "niw_efold2")):
        np.testing.assert_allclose(run[col][ok], efold_time(t, np.abs(wn), k=k), rtol=1e-9)
    np.testing.assert_allclose(run["loss_efold1"][ok], efold_time(t, loss), rtol=1e-9)
    # the exponent at the crossing: eq. (9) sums interpolated to the fractional crossing step
    te = run["niw_efold1"][ok]
    has = np.isfinite(te)
    assert has.sum() >= 5
    expo = niw_exponent(w1, sigma_eps=se, lr=lr)
    np.testing.assert_allclose(
        run["niw_exp1"][ok][has], [np.interp(x, t, e) for x, e in zip(te[has], expo[has])], rtol=1e-9
    )
    tl = run["loss_efold1"][ok]
    lex = loss_exponent(w0, w1, lr=lr)
    hl = np.isfinite(tl)
    np.testing.assert_allclose(
        run["loss_exp1"][ok][hl], [np.interp(x, t, e) for x, e in zip(tl[hl], lex[hl])], rtol=1e-9
    )


@pytest.mark.parametrize("method,b", [("exact", 1), ("exact", 5), ("reduced", 3)])
def test_kernel_equals_a_step_by_step_replay_of_its_stream(method, b):
    """The kernel (32 replicas as SIMD lanes, moments drawn 64 steps ahead, rare branches completed
    outside the vector loops) gives the trajectory of the plain sequence: draw the moments from the
    replica's two streams, take the SGD step."""
    steps, lr, sx, se, m = 400, 0.02, 1.3, 2.0, 0.8
    w = dict(w0=0.3, w1=-0.5, w_ni=0.9)
    run = toy.simulate(
        np.array([se]),
        **w,
        steps=steps,
        lr=lr,
        batch_size=b,
        sigma_x=sx,
        M=m,
        method=method,
        seed=5,
        replicas=np.array([7]),
        record=np.array([0]),
        record_steps=np.arange(steps + 1),
    )
    # 400 steps: at B = 1 about 20 draws need the ziggurat's rare branches; at B > 1 every draw (χ²)
    moments = toy.draw_moments(toy.replica_keys(5, np.array([7]))[0], steps, method, b, sx, se)
    v = (w["w0"], w["w1"], w["w_ni"])
    want = [v]
    for sxx, sxe, see in moments:
        v = toy.sgd_step(*v, sxx, sxe, see, lr, m)
        want.append(v)
    assert not run.overflow[0]
    # equal up to where fused multiply-adds fall (the kernel inlines the step); a draw out of order
    # would change the trajectory at O(1)
    np.testing.assert_allclose(run.traj[0, :, :3], np.array(want), rtol=1e-12, atol=1e-15)


def test_recorded_trajectories_table_and_validation():
    run = toy.simulate([0.1, 30.0], w0=0.1, w1=0.1, w_ni=1.0, steps=100, record=[1], record_steps=[0, 10, 100])
    df = run.trajectories()
    assert list(df["step"]) == [0, 10, 100] and (df["sigma_eps"] == 30.0).all()
    assert df.loc[0, "w_ni"] == 1.0
    assert len(run.frame()) == 2
    with pytest.raises(ConfigError):
        toy.simulate([0.1], w0=0.1, w1=0.1, w_ni=1.0, steps=10, method="euler")
    with pytest.raises(ConfigError):
        toy.simulate([0.1, -1.0], w0=0.1, w1=0.1, w_ni=1.0, steps=10)
    with pytest.raises(ConfigError):
        toy.simulate([0.1], w0=0.1, w1=0.1, w_ni=1.0, steps=10, record_steps=[5, 3])
    with pytest.raises(ConfigError):
        toy.simulate([0.1, 0.2], w0=[0.1, 0.2, 0.3], w1=0.1, w_ni=1.0, steps=10)
    with pytest.raises(ConfigError):
        toy.init_weights("garbled", 0, [0])
    for bad in (dict(seed=-1), dict(seed=1.5), dict(replicas=[-1])):
        with pytest.raises(ConfigError):
            toy.simulate([0.1], w0=0.1, w1=0.1, w_ni=1.0, steps=10, **bad)
    assert toy.simulate([0.1], w0=0.1, w1=0.1, w_ni=1.0, steps=10, seed=np.int64(3)).steps == 10


def test_ziggurat_normals_match_the_gaussian_histogram_and_tails():
    """Φ of the reduced sampler is the raw N(0, 1) stream: chi-square over 120 equiprobable bins of
    1e6 draws (sensitive to the ~1 % of mass from the wedge and tail branches) and the tail mass."""
    n = 1_000_000
    z = -toy.draw_moments(np.array([99, 98], dtype=np.uint64), n, "reduced", 1, 1.0, 1.0)[:, 1]
    edges = stats.norm.ppf(np.linspace(0, 1, 121))
    counts = np.histogram(z, edges)[0]
    assert stats.chisquare(counts).pvalue > 1e-3
    p_tail = 2 * stats.norm.sf(streams.ZIG_R)  # beyond the ziggurat's base r
    k = np.sum(np.abs(z) > streams.ZIG_R)
    assert abs(k - n * p_tail) < 4 * np.sqrt(n * p_tail)
