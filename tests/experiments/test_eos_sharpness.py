"""eos-sharpness: typed config, a reduced run end to end, an all-diverging run that finishes with its checks
"not measurable", and (slow) the quick preset's reproduction."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.runner import run_experiment
from noiseprobe.experiments import get

ID = "eos-sharpness"
PER_LR = ("crosses", "sharpening", "hover-median", "hover-p10", "hover-p90", "loss-decreases", "loss-nonmonotone")
SMALL = {"n_train": 150, "width": 16, "lrs": [0.08, 0.1], "steps": 200, "measure_every": 10, "settle_steps": 50}


def _checks(summary: dict) -> dict[str, dict]:
    return {c["key"]: c for c in summary["checks"]}


def test_typed_config_keeps_preset_values() -> None:
    exp = get(ID)
    for preset in ("quick", "full"):
        assert exp.config(preset).to_dict() == exp.presets[preset]


@pytest.mark.parametrize("overrides, field", [
    ({"lrs": []}, "lrs"), ({"lrs": [0.1, 0.1]}, "lrs"), ({"lrs": [0.0]}, "lrs"), ({"width": 0}, "width"),
    ({"measure_every": 10**7}, "measure_every"), ({"steps": "long"}, "steps"), ({"nonsense": 1}, "nonsense"),
])
def test_invalid_overrides_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        get(ID).config("quick", overrides)
    assert err.value.field == field


def test_reduced_run_end_to_end(tmp_path) -> None:
    summary = run_experiment(ID, preset="quick", out=tmp_path, workers=1, overrides=SMALL)
    checks = _checks(summary)
    assert set(checks) == {f"{name}-lr{k}" for name in PER_LR for k in (1, 2)}
    sharp = pd.read_parquet(tmp_path / "sharpness.parquet")
    assert len(sharp) == 2 * (200 // 10 + 1)
    # the monitor's eos_ratio is lr·sharpness/2 for plain GD
    assert ((sharp["eos_ratio"] - sharp["lr"] * sharp["sharpness"] / 2).abs() < 1e-4 * sharp["eos_ratio"]).all()
    phases = summary["metrics"]["phases"]
    assert [p["lr"] for p in phases] == [0.08, 0.1]
    for k, p in enumerate(phases, start=1):
        crossed = checks[f"crosses-lr{k}"]["measured"] >= 1
        assert (checks[f"hover-median-lr{k}"]["verdict"] == "not measurable") == (not crossed or p["hover_n"] == 0)
    assert (tmp_path / "eos_sharpness.png").stat().st_size > 10_000


def test_diverging_run_finishes_not_measurable(tmp_path) -> None:
    exp = get(ID)
    summary = run_experiment(ID, preset="quick", out=tmp_path, workers=1,
                             overrides={**SMALL, **exp.diverging})
    losses = pd.read_parquet(tmp_path / "results.parquet")
    assert losses.groupby("lr")["loss"].apply(lambda v: v.isna().any() or (v.abs() > 1e8).any()).all()
    assert {c["verdict"] for c in summary["checks"]} == {"not measurable"}, json.dumps(summary["checks"], indent=1)
    assert all("diverged" in c["detail"] for c in summary["checks"])


@pytest.mark.slow
def test_quick_preset_reproduces(tmp_path) -> None:
    summary = run_experiment(ID, preset="quick", out=tmp_path, workers=2)
    checks = _checks(summary)
    assert set(checks) == {f"{name}-lr{k}" for name in PER_LR for k in (1, 2, 3)}
    assert all(c["verdict"] == "pass" for c in checks.values()), json.dumps(summary["checks"], indent=1)
