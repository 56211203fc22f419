"""Tail estimators on synthetic data with known exponents (above and below 3: no silent cap)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.powerlaw import hill, hill_curve, powerlaw_mle


def pareto(rng: np.random.Generator, beta: float, size: int | tuple[int, ...], x_m: float = 1.0) -> np.ndarray:
    """Exact Pareto samples: P(X > x) = (x / x_m)^(-beta), x >= x_m (inverse-CDF, independent of numpy's pareto)."""
    return x_m * rng.random(size) ** (-1.0 / beta)


@pytest.mark.parametrize("beta", [0.8, 1.5, 2.5, 3.5, 6.0, 12.0])
def test_estimators_recover_known_exponent(beta: float) -> None:
    rng = np.random.default_rng(int(beta * 10))
    x = pareto(rng, beta, 20_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an interior x_min: no bound warning
        fits = [hill(x, x.size - 1), powerlaw_mle(x)]
    for f in fits:
        assert abs(f.beta - beta) < 4 * f.se, (f, beta)
        assert not f.at_bound


def test_hill_matches_direct_formula() -> None:
    x = np.random.default_rng(0).lognormal(size=1000)
    xs = np.sort(x)[::-1]
    for k in (5, 100, 998):
        direct = 1.0 / np.mean(np.log(xs[:k] / xs[k]))
        assert hill(x, k).beta == pytest.approx(direct, rel=1e-12)
    beta, se = hill_curve(x, np.array([5, 100, 998]))
    assert beta[1] == pytest.approx(1.0 / np.mean(np.log(xs[:100] / xs[100])), rel=1e-12)
    assert se[1] == pytest.approx(beta[1] / 10)


def test_mle_at_a_given_threshold_matches_scipy_pareto_fit_and_kstest() -> None:
    """Fixed x_min: beta is scipy's Pareto maximum-likelihood fit of the tail (scale fixed at x_min) and the
    KS distance is scipy's one-sample KS statistic against the fitted Pareto law (independent code paths)."""
    x = np.random.default_rng(4).lognormal(sigma=1.5, size=3000)
    x_min = float(np.quantile(x, 0.8))
    f = powerlaw_mle(x, x_min=x_min)
    tail = x[x >= x_min]
    b, _, _ = stats.pareto.fit(tail, floc=0.0, fscale=x_min)
    assert f.k == tail.size and f.beta == pytest.approx(b, rel=1e-8)
    assert f.ks == pytest.approx(stats.kstest(tail, stats.pareto(f.beta, scale=x_min).cdf).statistic, rel=1e-10)


def test_reported_se_matches_spread_over_replications() -> None:
    """400 independent samples of n = 500: the std of the estimates equals the reported SE (within 4 SE of a
    std estimated from 400 draws, i.e. 4/sqrt(2*400) = 14%)."""
    rng = np.random.default_rng(1)
    x = pareto(rng, 2.5, (400, 500))
    fits = [hill(row, 499) for row in x]
    est, se = np.array([f.beta for f in fits]), np.array([f.se for f in fits])
    tol = 4 / np.sqrt(2 * len(est))
    assert abs(est.std(ddof=1) / se.mean() - 1) < tol
    assert abs(est.mean() - 2.5) < 4 * est.std(ddof=1) / np.sqrt(len(est))


def test_cluster_robust_se_for_dependent_samples() -> None:
    """Each Pareto draw repeated 4 times (4 perfectly dependent samples per cluster): the i.i.d. SE is too small
    by 2, the cluster-robust SE matches the spread across replications."""
    rng = np.random.default_rng(2)
    base = pareto(rng, 3.0, (300, 250))
    labels = np.repeat(np.arange(250), 4)
    iid, rob, est = [], [], []
    for row in base:
        x = np.repeat(row, 4)
        k = 4 * 200
        est.append(hill(x, k).beta)
        iid.append(hill(x, k).se)
        rob.append(hill(x, k, clusters=labels).se)
    spread = np.std(est, ddof=1)
    tol = 4 / np.sqrt(2 * len(est))
    assert abs(spread / np.mean(rob) - 1) < tol
    assert spread / np.mean(iid) > 1.6


def test_mle_selects_x_min_of_a_mixture() -> None:
    """Half uniform(0, 1) body, half Pareto tail from x_m = 1: the KS-selected x_min is near 1 and beta is
    recovered within 4 SE (including one of 4.5, above the 3 where `powerlaw` caps by default)."""
    rng = np.random.default_rng(3)
    for beta in (1.7, 4.5):
        n = 40_000
        x = np.where(rng.random(n) < 0.5, rng.random(n), pareto(rng, beta, n))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            f = powerlaw_mle(x)
        assert 0.97 < f.x_min < 1.5
        assert abs(f.beta - beta) < 4 * f.se
        assert not f.at_bound
        g = powerlaw_mle(x, x_min=1.0)
        assert g.k == int(np.sum(x >= 1.0)) and abs(g.beta - beta) < 4 * g.se


def test_bound_warning_and_flag() -> None:
    """Deterministic quantile samples. Exact Pareto: the KS distance falls as the tail grows, so capping the
    search at half the sample puts x_min on the lower bound. Log-normal: the local slope steepens along the
    tail, the KS distance grows with the tail, so x_min lands on the min_tail bound."""
    n = 10_000
    q = (np.arange(n) + 0.5) / n
    with pytest.warns(RuntimeWarning, match="bound of the search range"):
        f = powerlaw_mle((1 - q) ** (-1 / 2.0), max_tail=n // 2)
    assert f.at_bound and f.k == n // 2
    with pytest.warns(RuntimeWarning, match="bound of the search range"):
        g = powerlaw_mle(np.exp(stats.norm.ppf(q)), min_tail=500)
    assert g.at_bound and g.k == 500


@pytest.mark.parametrize("bad", [[1.0, 2.0, -1.0, 3.0], [1.0, np.nan, 2.0, 3.0], [1.0, 2.0]])
def test_invalid_samples_raise_config_error(bad: list[float]) -> None:
    with pytest.raises(ConfigError):
        hill(bad, 2)
    with pytest.raises(ConfigError):
        powerlaw_mle(bad)


def test_invalid_arguments_raise_config_error() -> None:
    x = pareto(np.random.default_rng(5), 2.0, 100)
    for kwargs in ({"k": 1}, {"k": 100}, {"k": 2.5}):
        with pytest.raises(ConfigError):
            hill(x, **kwargs)
    with pytest.raises(ConfigError):
        hill(x, 10, clusters=np.arange(5))
    with pytest.raises(ConfigError):
        powerlaw_mle(x, x_min=-1.0)
    with pytest.raises(ConfigError):
        powerlaw_mle(x, x_min=1e9)
    with pytest.raises(ConfigError):
        powerlaw_mle(x, min_tail=5)
    with pytest.raises(ConfigError):
        hill_curve(x, np.array([1, 5]))
