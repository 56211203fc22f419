"""core/linalg.py, core/stats.py and the array validators of core/validation.py, against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.linalg import commutes, is_positive_definite, psd_factor, psd_power
from noiseprobe.core.stats import mean_se, mean_se_kept, standard_error
from noiseprobe.core.validation import check_lr, check_matrix, check_scalar, check_vector


def _psd(rng, d, rank=None):
    x = rng.standard_normal((d, rank or d))
    return x @ x.T


def test_psd_factor_and_power_against_scipy():
    rng = np.random.default_rng(0)
    for M in (_psd(rng, 5), _psd(rng, 5, rank=2)):  # full rank and singular
        R = psd_factor(M)
        np.testing.assert_allclose(R @ R.T, M, atol=1e-10)
        np.testing.assert_allclose(psd_power(M), np.real(scipy.linalg.sqrtm(M)), atol=1e-6)
    M = _psd(rng, 4)
    np.testing.assert_allclose(psd_power(M, -0.5) @ M @ psd_power(M, -0.5), np.eye(4), atol=1e-10)
    with pytest.raises(np.linalg.LinAlgError):
        psd_power(_psd(rng, 4, rank=1), -0.5)
    assert is_positive_definite(M) and not is_positive_definite(-M)
    assert commutes(M, M @ M) and not commutes(M, np.diag([1.0, 2, 3, 4]))


def test_standard_error_matches_definition():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 3))
    m, se = mean_se(x)
    np.testing.assert_allclose(m, x.mean(0))
    np.testing.assert_allclose(se, [np.sqrt(np.sum((c - c.mean()) ** 2) / 49 / 50) for c in x.T])
    assert standard_error([1.0]) == np.inf and mean_se([2.0]) == (np.inf, np.inf)
    v = np.array([1.0, 2.0, 3.0] * 4 + [1e300])  # 1 of 13 dropped: within MAX_DIVERGED_FRACTION
    assert mean_se_kept(v, [False] * 12 + [True]) == (2.0, pytest.approx(np.std(v[:12], ddof=1) / np.sqrt(12)), 1 / 13)
    assert mean_se_kept(v[-4:], [False, False, False, True]) == (np.inf, np.inf, 0.25)  # above it: not measurable
    assert mean_se_kept(v, [True] * 12 + [False])[:2] == (np.inf, np.inf)


def test_check_matrix():
    np.testing.assert_array_equal(check_matrix("A", 2.0, 3), 2 * np.eye(3))
    np.testing.assert_array_equal(check_matrix("A", np.int64(2)), [[2.0]])
    for bad, kw in [
        ([[1.0, 2.0], [0.0, 1.0]], {}),
        ([[1.0, 0.0], [0.0, -1.0]], {"psd": True}),
        (np.ones((2, 3)), {"symmetric": False}),
        ([[np.nan]], {}),
        (True, {}),
        ("x", {}),
        (np.eye(2), {"dim": 3}),
    ]:
        with pytest.raises(ConfigError, match="A"):
            check_matrix("A", bad, **kw)
    assert check_matrix("A", [[1.0, 2.0], [0.0, 1.0]], symmetric=False)[0, 1] == 2.0


def test_check_lr_vector_scalar():
    lam, s = check_lr(0.5, 2)
    assert s == 0.5 and np.array_equal(lam, 0.5 * np.eye(2))
    lam, s = check_lr(np.diag([1.0, 2.0]), 2)
    assert s is None and lam[1, 1] == 2.0
    lam, s = check_lr([0.1, 0.2, 0.3], 2, replicas=3)
    assert s is None and lam.shape == (3,)
    for bad, kw in [
        (True, {}),
        (0.0, {}),
        (-1.0, {}),
        (np.nan, {}),
        ([0.1, -0.2, 0.3], {"replicas": 3}),
        ([[0.0, 1.0], [0.0, 0.0]], {}),
        (np.ones(3), {}),
    ]:
        with pytest.raises(ConfigError, match="lr"):
            check_lr(bad, 2, **kw)
    assert check_scalar("x", np.float32(1.5), lo=0.0) == 1.5
    with pytest.raises(ConfigError):
        check_scalar("x", np.bool_(True))
    np.testing.assert_array_equal(check_vector("u", 1.0, 1), [1.0])
    with pytest.raises(ConfigError, match="u"):
        check_vector("u", [1.0, 2.0], 3)
