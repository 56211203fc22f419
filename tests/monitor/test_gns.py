"""Gradient noise scale: unbiased estimates (against their definitions) and the interval's coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from noiseprobe.monitor.gns import fieller, noise_scale, two_batch


def test_estimates_match_their_definitions():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((20, 7)) + 0.5
    ns = noise_scale(g @ g.T)
    gbar = g.mean(0)
    tr = ((g - gbar) ** 2).sum() / 19
    assert ns.tr_sigma == pytest.approx(tr, rel=1e-12)
    assert ns.g_sq == pytest.approx(gbar @ gbar - tr / 20, rel=1e-12)
    pairs = sum(g[i] @ g[j] for i in range(20) for j in range(20) if i != j) / (20 * 19)
    assert ns.g_sq == pytest.approx(pairs, rel=1e-12)
    assert ns.b_simple == pytest.approx(ns.tr_sigma / ns.g_sq)
    # jackknife SE by brute force (leave each sample out and recompute)
    loo = [noise_scale(np.delete(np.delete(g @ g.T, i, 0), i, 1)) for i in range(20)]
    t = np.array([x.tr_sigma for x in loo])
    assert ns.tr_sigma_se == pytest.approx(math.sqrt(19 / 20 * ((t - t.mean()) ** 2).sum()), rel=1e-9)


def test_unbiased_on_average():
    rng = np.random.default_rng(1)
    mu, sd, n, reps = np.full(5, 0.3), np.linspace(0.5, 2, 5), 8, 4000
    x = rng.standard_normal((reps, n, 5)) * sd + mu
    est = [noise_scale(k) for k in x @ x.transpose(0, 2, 1)]
    for name, true in (("tr_sigma", (sd**2).sum()), ("g_sq", mu @ mu)):
        v = np.array([getattr(e, name) for e in est])
        assert abs(v.mean() - true) <= 4 * v.std(ddof=1) / math.sqrt(reps), name


@pytest.mark.parametrize("n, p, b_true", [(64, 50, 5.0), (32, 20, 2.0), (64, 30, 20.0)])
def test_interval_coverage_is_95_percent(n, p, b_true):
    rng = np.random.default_rng(2)
    reps = 2000  # coverage SE ≈ 0.005
    sd = np.linspace(0.5, 1.5, p)
    mu = np.ones(p) * math.sqrt((sd**2).sum() / b_true / p)
    x = rng.standard_normal((reps, n, p)) * sd + mu
    hits = 0
    for k in x @ x.transpose(0, 2, 1):
        ns = noise_scale(k)
        hits += ns.b_simple_lo <= b_true <= ns.b_simple_hi
    assert 0.93 <= hits / reps <= 0.97


def test_fieller_cases():
    assert fieller(2.0, 1.0, 0.0, 0.0, 0.0, 1.96) == (2.0, 2.0)
    lo, hi = fieller(2.0, 0.1, 0.01, 1.0, 0.0, 1.96)  # denominator not significant: unbounded above
    assert hi == math.inf and lo >= 0


def test_two_batch_is_unbiased_against_the_exact_values():
    rng = np.random.default_rng(3)
    mu, sd, reps = np.full(4, 0.5), np.ones(4), 20000
    small = rng.standard_normal((reps, 8, 4)) * sd + mu
    big = rng.standard_normal((reps, 64, 4)) * sd + mu
    g, t = two_batch((small.mean(1) ** 2).sum(1), (big.mean(1) ** 2).sum(1), 8, 64)
    for est, true in ((g, mu @ mu), (t, 4.0)):
        assert abs(est.mean() - true) <= 4 * est.std(ddof=1) / math.sqrt(reps)
