"""core.stats (means with standard errors, worst deviation, log-log slope with SE), core.linalg.psd_root and
the matrix/array validators of core.validation, against direct computations and simulation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.linalg import psd_factor
from noiseprobe.core.stats import group_mean_se, loglog_slope, worst_deviation
from noiseprobe.core.validation import check_array, check_matrix


def test_group_mean_se_by_hand() -> None:
    df = pd.DataFrame(
        {
            "step": [0, 0, 0, 1, 1, 1, 2],
            "x": [1.0, 2.0, 6.0, 3.0, 5.0, 100.0, 7.0],
            "bad": [False, False, False, False, False, True, True],
        }
    )
    out = group_mean_se(df, "x", "step", keep=~df["bad"])
    assert list(out.index) == [0, 1, 2]
    assert out.loc[0, "mean"] == 3.0 and out.loc[0, "se"] == pytest.approx(math.sqrt(7.0) / math.sqrt(3.0))
    assert out.loc[1, "mean"] == 4.0 and out.loc[1, "n"] == 2 and out.loc[1, "sd"] == pytest.approx(math.sqrt(2.0))
    assert math.isnan(out.loc[2, "mean"]) and out.loc[2, "n"] == 0  # every row of step 2 excluded


def test_worst_deviation() -> None:
    err, se, errs = worst_deviation([1.0, 2.5, 2.9], [0.1, 0.2, 0.3], [1.1, 2.0, 3.0])
    assert err == pytest.approx(0.5) and se == 0.2 and errs == pytest.approx([-0.1, 0.5, -0.1])
    assert math.isnan(worst_deviation([1.0, math.nan], [0.1, 0.1], [1.0, 1.0])[0])


def test_loglog_slope_and_its_standard_error_by_simulation() -> None:
    """Exact on a power law; the delta-method SE matches the spread of slopes of noisy power laws."""
    x = np.array([0.05, 0.1, 0.2, 0.4])
    assert loglog_slope(x, 3 * x**1.5, np.zeros(4))[0] == pytest.approx(1.5, abs=1e-12)
    rng = np.random.default_rng(0)
    se_y = 0.02 * x  # 2 % relative noise
    slopes = [loglog_slope(x, x * (1 + 0.02 * rng.standard_normal(4)), se_y)[0] for _ in range(4000)]
    _, se = loglog_slope(x, x, se_y)
    sd = float(np.std(slopes, ddof=1))
    assert abs(sd - se) <= 5 * sd / math.sqrt(2 * 3999)
    assert math.isnan(loglog_slope(x, [1.0, 0.0, 1.0, 1.0], se_y)[0])  # log of 0: not measurable


@pytest.mark.parametrize("rank", [3, 2, 0])
def test_psd_root(rank: int) -> None:
    g = torch.Generator().manual_seed(rank)
    A = torch.randn(3, rank, dtype=torch.float64, generator=g)
    C = A @ A.T
    R = psd_factor(C, rtol=1e-14)
    assert R.shape == (3, rank)
    assert torch.allclose(R @ R.T, C, atol=1e-12)


def test_psd_and_array_validators() -> None:
    assert check_matrix("C", [[0.5, 0.5], [0.5, 0.5]], 2, psd=True).tolist() == [[0.5, 0.5], [0.5, 0.5]]
    assert check_array("w", torch.tensor([1.0, 2.0]), last_dim=2).tolist() == [1.0, 2.0]
    for bad, n in (
        ([[1.0, 2.0], [2.0, 1.0]], 2),
        ([[1.0, 0.1], [0.0, 1.0]], 2),
        ([[1.0]], 2),
        ("C", 1),
        ([[math.inf]], 1),
    ):
        with pytest.raises(ConfigError, match="C = "):
            check_matrix("C", bad, n, psd=True)
    for bad in ([1.0, math.nan], [[1.0, 2.0, 3.0]], "w", None):
        with pytest.raises(ConfigError, match="w = "):
            check_array("w", bad, last_dim=2)
