"""nin.phases: the classification rule on constructed curves, agreement of the curve-based classifier
with the toy simulator's online statistics, and boundaries on grids with a known crossing."""

from __future__ import annotations

import numpy as np
import pytest

from noiseprobe.core.errors import ConfigError
from noiseprobe.nin import toy
from noiseprobe.nin.phases import PHASES, boundaries, boundaries_bootstrap, classify, phase_fractions

T = np.arange(50.0)


def _curves():
    decoupled = 1.0 - 0.001 * T  # loses < 1 e-fold
    decay = np.exp(-T / 10)
    catapult = np.exp(-T / 10) * (1 + 30 * np.exp(-(((T - 5) / 2) ** 2)))  # transient growth > 2x
    divergent = np.exp(T)  # passes 1e8 × its start at T ≈ 18.4
    niw = np.stack([decoupled, decay, catapult, divergent])
    loss = np.stack([np.exp(-T / 5)] * 4)
    loss[2] *= 1 + 10 * np.exp(-(((T - 5) / 2) ** 2))  # loss spike with the catapult
    return niw, loss


def test_phase_codes_follow_the_documented_order():
    assert PHASES == ("decoupled", "decay", "catapult", "divergent")


def test_classify_with_the_observable_proxy():
    niw, loss = _curves()
    assert list(classify(niw, loss)) == [0, 1, 2, 3]
    flat_loss = np.stack([np.exp(-T / 5)] * 4)  # no loss spike: the proxy needs both
    assert list(classify(niw, flat_loss)) == [0, 1, 1, 3]


def test_classify_with_stability_diverged_flag_and_loss_bound():
    niw, loss = _curves()
    stab = np.zeros_like(niw)
    stab[0, 10] = 2.5  # decoupled curve but unstable once -> catapult
    assert list(classify(niw, loss, stability=stab)) == [2, 1, 1, 3]
    assert list(classify(niw, loss, stability=stab.max(1), edge=3.0)) == [0, 1, 1, 3]
    assert list(classify(niw, loss, stability=stab, diverged=[False, True, False, False])) == [2, 3, 1, 3]
    loss2 = loss.copy()
    loss2[0, -1] = 5.0
    assert classify(niw, loss2, loss_bound=1.0)[0] == 3
    nan_niw = niw.copy()
    nan_niw[1, 7] = np.nan
    assert classify(nan_niw, loss)[1] == 3
    with pytest.raises(ConfigError):
        classify(niw[:, :1], loss[:, :1])
    with pytest.raises(ConfigError):
        classify(niw, loss, stability=np.zeros(3))
    for kwargs in (dict(loss_bound=0.0), dict(loss_bound="x"), dict(diverged=[True, False])):
        with pytest.raises(ConfigError):
            classify(niw, loss, **kwargs)


def test_curve_classifier_agrees_with_the_toy_models_online_rule():
    """Same rule from two paths: full recorded curves (classify) vs online statistics (ToyRun.phases)."""
    n_seeds, steps, lr = 6, 3000, 0.01
    grid = np.array([0.05, 0.3, 3.0, 14.0, 18.0, 25.0, 60.0, 300.0])
    sigma = np.repeat(grid, n_seeds)
    seeds = np.tile(np.arange(n_seeds), grid.size)
    w0, w1, wn = toy.init_weights("niw_large", 7, np.arange(n_seeds))
    run = toy.simulate(
        sigma,
        w0=w0[seeds],
        w1=w1[seeds],
        w_ni=wn[seeds],
        steps=steps,
        batch_size=8,
        seed=7,
        record=np.arange(sigma.size),
        record_steps=np.arange(steps + 1),
    )
    tw0, tw1, twn, tloss = (run.traj[..., j] for j in range(4))
    stab = lr * sigma[:, None] ** 2 * np.maximum(tw1**2, twn**2)
    # stalled <=> |w1 w0 − M| > 0.1 M  <=>  clean loss ½ D² > ½ (0.1)²
    codes = classify(np.abs(twn), tloss, stability=stab, loss_bound=0.5 * 0.1**2, diverged=run.overflow)
    np.testing.assert_array_equal(codes, run.phases())
    assert set(np.unique(codes)) == {0, 1, 2, 3}


def test_phase_fractions_and_boundaries_on_a_known_grid():
    sigma_grid = np.logspace(-2, 2, 17)
    n = 100
    # P(code >= k) rises linearly in log10 σ with crossings of 1/2 at σ = 0.1, 3, 30
    centres = np.log10([0.1, 3.0, 30.0])
    sig, codes = [], []
    for s in sigma_grid:
        p = np.clip(0.5 + (np.log10(s) - centres) / 1.0, 0, 1)  # P(code >= 1..3), decreasing in k
        counts = np.round(p * n).astype(int)
        c = np.zeros(n, dtype=int)
        for k in range(3):
            c[: counts[k]] = k + 1
        sig.append(np.full(n, s))
        codes.append(c)
    sig, codes = np.concatenate(sig), np.concatenate(codes)
    frac = phase_fractions(sig, codes)
    assert np.allclose(frac[list(PHASES)].sum(axis=1), 1) and (frac["n"] == n).all()
    b = boundaries(sig, codes)
    for name, want in zip(("decoupled|decay", "decay|catapult", "catapult|divergent"), (0.1, 3.0, 30.0)):
        assert abs(np.log10(b[name] / want)) < 0.01 / 1.0 + 1e-9  # rounding to 1/n moves it < 0.01 decade
    assert np.isnan(boundaries(sig, np.zeros_like(codes))["decay|catapult"])
    seeds = np.tile(np.arange(n), sigma_grid.size)
    bb = boundaries_bootstrap(sig, codes, seeds, n_boot=50)
    assert bb["decay|catapult"][0] == b["decay|catapult"] and bb["decay|catapult"][1] > 0
    with pytest.raises(ConfigError):
        boundaries(sig, codes + 1)  # code 4 does not exist
    for kwargs in (dict(n_boot=1), dict(seed=-1)):
        with pytest.raises(ConfigError):
            boundaries_bootstrap(sig, codes, seeds, **kwargs)
    with pytest.raises(ConfigError):
        boundaries_bootstrap(sig, codes, seeds[:-1])
