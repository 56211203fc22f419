"""core.fitting against closed forms and against the scatter of repeated synthetic fits."""

import numpy as np
import pytest

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.fitting import bootstrap, crossing, efold_time, fit_exponential


def test_efold_time_exact_for_exponentials_on_a_coarse_grid():
    t = np.arange(0.0, 50.0, 3.0)  # coarse: crossings fall between samples
    tau = np.array([2.0, 5.0, 7.3, 100.0])
    y = 4.0 * np.exp(-t[None, :] / tau[:, None])
    for k in (1, 2):
        got = efold_time(t, y, k=k)
        want = np.where(k * tau <= t[-1], k * tau, np.nan)
        np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.isclose(efold_time(t, y[1]), 5.0)  # 1-D input gives a scalar


def test_efold_time_linear_interpolation_when_curve_hits_zero():
    t = np.array([0.0, 1.0, 2.0])
    y = np.array([1.0, 0.5, 0.0])  # crosses 1/e between t=1 and t=2 linearly
    assert np.isclose(efold_time(t, y), 1.0 + (0.5 - np.exp(-1)) / 0.5)


def test_efold_time_rejects_bad_shapes():
    with pytest.raises(ConfigError):
        efold_time(np.arange(3.0), np.ones((2, 4)))


def test_crossing_recovers_a_log_linear_level_exactly():
    x = np.logspace(-2, 2, 9)
    f = (np.log10(x) + 2) / 4  # 0 .. 1, linear in log x; 1/2 at x = 1
    assert np.isclose(crossing(x, f), 1.0)
    assert np.isnan(crossing(x, 0.2 * f))  # never reaches 1/2
    assert np.isnan(crossing(x, f + 0.6))  # already above at the first point
    with pytest.raises(ConfigError):
        crossing(x, f, level=float("nan"))
    with pytest.raises(ConfigError):
        crossing(np.linspace(-1.0, 1.0, 9), f)  # log x needs x > 0
    assert np.isclose(crossing(np.linspace(-1.0, 1.0, 9), np.linspace(0.0, 1.0, 9), log_x=False), 0.0)


@pytest.mark.parametrize("offset", [True, False])
def test_fit_exponential_unbiased_and_its_error_matches_the_scatter(offset):
    rng = np.random.default_rng(1)
    t = np.linspace(0.0, 30.0, 61)
    tau, amp, c, noise, n = 6.0, 2.0, (0.3 if offset else 0.0), 0.02, 300
    y = amp * np.exp(-t / tau) + c + noise * rng.standard_normal((n, t.size))
    fit = fit_exponential(t, y, offset=offset)
    se_mean = fit.tau.std(ddof=1) / np.sqrt(n)
    assert abs(fit.tau.mean() - tau) < 4 * se_mean
    # the covariance standard error should describe the run-to-run scatter of tau (±20 %)
    assert 0.8 < np.median(fit.tau_err) / fit.tau.std(ddof=1) < 1.25
    assert np.allclose(np.median(fit.amplitude), amp, rtol=0.02)
    if offset:
        assert abs(fit.offset.mean() - c) < 4 * fit.offset.std(ddof=1) / np.sqrt(n)


def test_fit_exponential_window_and_failures():
    t = np.linspace(0.0, 60.0, 241)
    y = 3.0 * np.exp(-t / 8.0) + 1.0
    fit = fit_exponential(t, y, offset=True, window=(0.9, 0.1))
    assert np.isclose(fit.tau[0], 8.0, rtol=1e-4)
    assert fit.t_start[0] > 0 and fit.t_stop[0] < t[-1]
    assert np.isnan(fit_exponential(t[:3], y[:3], offset=True).tau[0])  # too few points
    with pytest.raises(ConfigError):
        fit_exponential(t, y, window=(0.1, 0.9))


def test_bootstrap_standard_error_of_the_mean():
    rng = np.random.default_rng(2)
    v = rng.standard_normal(400)
    est, se, lo, hi = bootstrap(v, np.mean, n_boot=1000, seed=3)
    assert np.isclose(est, v.mean())
    assert 0.85 < se / (v.std(ddof=1) / np.sqrt(v.size)) < 1.15
    assert lo < est < hi
    assert np.isnan(bootstrap(np.array([np.nan]))[0])
