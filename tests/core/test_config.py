"""Typed configs: every field checked by type and bounds, errors name field, value and what is allowed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest

from noiseprobe.core.config import ExperimentConfig, param
from noiseprobe.core.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class C(ExperimentConfig):
    n: int = param(4, lo=1, hi=100)
    lr: float = param(0.1, lo=0.0, lo_open=True)
    sizes: list[int] = param([1, 2], lo=1, min_len=1, max_len=5)
    mode: Literal["a", "b"] = "a"
    flag: bool = False
    dim: int | None = param(None, lo=1)
    grid: list[list[float]] = param([[0.0, 1.0]])

    def check(self) -> None:
        if self.n < len(self.sizes):
            raise ConfigError("n", self.n, f">= len(sizes) = {len(self.sizes)}")


def test_defaults_and_json_form():
    c = C.from_dict({"lr": 1, "n": np.int64(3)})
    assert c.lr == 1.0 and isinstance(c.lr, float) and c.n == 3 and type(c.n) is int
    assert c.sizes == [1, 2] and not hasattr(c, "__getitem__") and c.to_dict()["grid"] == [[0.0, 1.0]]


@pytest.mark.parametrize(
    "values, field, allowed",
    [
        ({"n": 0}, "n", "an integer >= 1 and <= 100"),
        ({"n": 2.5}, "n", "an integer"),
        ({"n": True}, "n", "an integer"),
        ({"lr": 0.0}, "lr", "> 0"),
        ({"lr": float("nan")}, "lr", "a finite number"),
        ({"lr": "x"}, "lr", "a finite number"),
        ({"sizes": []}, "sizes", "a list of 1 to 5 items"),
        ({"sizes": [0]}, "sizes", ">= 1"),
        ({"sizes": 3}, "sizes", "a list"),
        ({"mode": "c"}, "mode", "one of 'a', 'b'"),
        ({"flag": 1}, "flag", "true or false"),
        ({"dim": 0}, "dim", ">= 1"),
        ({"grid": [1.0]}, "grid", "a list of lists"),
        ({"seed": -1}, "seed", ">= 0"),
        ({"zz": 1}, "zz", "a field of"),
        ({"n": 1, "sizes": [1, 2]}, "n", ">= len(sizes)"),
    ],
)
def test_errors_name_field_value_and_range(values, field, allowed):
    with pytest.raises(ConfigError) as err:
        C.from_dict(values)
    assert err.value.field == field and allowed in err.value.allowed and "\n" not in str(err.value)


def test_frozen():
    with pytest.raises(Exception):
        C.from_dict({}).n = 5  # type: ignore[misc]
