"""nin/levels.py: Table 1's noise unit and levels, by hand, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from noiseprobe.core.errors import ConfigError
from noiseprobe.nin.levels import TABLE1, level_sigmas, sigma2_unit, table1
from noiseprobe.nin.phases import PHASES


def test_units_and_levels_by_hand():
    assert sigma2_unit("mse", d_input=784, n_w=1024, lr=0.01) == pytest.approx(76.5625)
    assert sigma2_unit("ce", d_input=784, n_w=1024, lr=0.01) == pytest.approx(78400.0)
    np.testing.assert_allclose(level_sigmas([1.0, 4.0], loss="ce", d_input=100, n_w=7, lr=0.25), [20.0, 40.0])
    tab = table1(d_input=196, n_w=64, lr=0.05)
    assert list(tab["phase"]) == list(PHASES) * 2 and list(tab["coefficient"]) == [*TABLE1["mse"], *TABLE1["ce"]]
    np.testing.assert_allclose(tab["sigma"] ** 2, tab["sigma2"], rtol=1e-12)
    np.testing.assert_allclose(
        tab.loc[tab["loss"] == "mse", "sigma2"], np.asarray(TABLE1["mse"]) * 196 / (64 * 0.05), rtol=1e-12
    )


@pytest.mark.parametrize(
    "kw,field", [({"lr": 0.0}, "lr"), ({"n_w": 0}, "n_w"), ({"d_input": 2.5}, "d_input"), ({"loss": "hinge"}, "loss")]
)
def test_bad_input_names_the_argument(kw, field):
    args = {"loss": "mse", "d_input": 10, "n_w": 4, "lr": 0.1, **kw}
    loss = args.pop("loss")
    with pytest.raises(ConfigError, match=field):
        sigma2_unit(loss, **args)


def test_bad_coefficients_raise():
    for bad in ([0.0], [-1.0], [np.nan], [[1.0]]):
        with pytest.raises(ConfigError, match="coefficients"):
            level_sigmas(bad, loss="ce", d_input=10, n_w=4, lr=0.1)
