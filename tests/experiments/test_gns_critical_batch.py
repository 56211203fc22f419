"""gns-critical-batch: typed config, a reduced run end to end, an all-diverging run that finishes with its
checks "not measurable", and (slow) the quick preset's reproduction."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.runner import run_experiment
from noiseprobe.experiments import get

ID = "gns-critical-batch"
KEYS = {"steps-decrease", "examples-increase", "hyperbola-fit", "bracket-below", "bracket-above", "lr-grid-brackets",
        "bcrit-vs-bsimple", "bcrit-vs-bnoise"}
SMALL = {"n_train": 300, "hidden": 8, "batch_sizes": [4, 8, 16, 32, 64, 128], "lrs": [0.05, 0.1, 0.2, 0.4, 0.8],
         "seeds": 2, "target_loss": 1.0, "max_steps": 1000, "probe_samples": 64, "n_boot": 50}


def _checks(summary: dict) -> dict[str, dict]:
    return {c["key"]: c for c in summary["checks"]}


def test_typed_config_keeps_preset_values() -> None:
    exp = get(ID)
    for preset in ("quick", "full"):
        assert exp.config(preset).to_dict() == exp.presets[preset]


@pytest.mark.parametrize("overrides, field", [
    ({"batch_sizes": [1, 2, 4]}, "batch_sizes"), ({"batch_sizes": [4, 4, 8, 16, 32, 64]}, "batch_sizes"),
    ({"lrs": [0.1, -1.0]}, "lrs"), ({"probe_samples": 5000}, "probe_samples"), ({"target_loss": 0.0}, "target_loss"),
    ({"seeds": 0}, "seeds"), ({"nonsense": 1}, "nonsense"),
])
def test_invalid_overrides_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        get(ID).config("quick", overrides)
    assert err.value.field == field


def test_reduced_run_end_to_end(tmp_path) -> None:
    summary = run_experiment(ID, preset="quick", out=tmp_path, workers=1, overrides=SMALL)
    checks = _checks(summary)
    assert set(checks) == KEYS
    m = summary["metrics"]
    assert len(m["grid"]) == 6 and all(r["reached"] == 2 for r in m["grid"]), json.dumps(m["grid"])
    assert m["b_crit"] > 0 and m["b_simple_mean"] > 0
    assert checks["steps-decrease"]["verdict"] == "pass" and checks["examples-increase"]["verdict"] == "pass"
    noise = pd.read_parquet(tmp_path / "noise.parquet")
    assert {"step", "b_simple", "b_simple_lo", "b_simple_hi", "b_noise", "batch_size", "seed_index"} <= set(noise)
    assert (tmp_path / "critical_batch.png").stat().st_size > 10_000
    res = pd.read_parquet(tmp_path / "results.parquet")
    assert len(res) == 6 * 2 * 5 and res["replica"].is_unique


def test_chunk_depends_only_on_its_replicas() -> None:
    """A chunk's result is a function of (seed, its global replica indices): recomputing it alone (as another
    worker would) gives the same tables."""
    exp = get(ID)
    cfg = exp.config("quick", SMALL)
    chunk = exp.chunks(cfg)[5]
    a, b = exp.run_chunk(cfg, chunk), exp.run_chunk(cfg, chunk)
    for name in a:  # everything but the monitor's timing
        pd.testing.assert_frame_equal(a[name].drop(columns="seconds", errors="ignore"),
                                      b[name].drop(columns="seconds", errors="ignore"))
    assert len(a["noise"]) > 3
    assert set(a["results"]["replica"]) == set(range(5 * 5, 5 * 5 + 5))


def test_diverging_run_finishes_not_measurable(tmp_path) -> None:
    exp = get(ID)
    summary = run_experiment(ID, preset="quick", out=tmp_path, workers=1,
                             overrides={**SMALL, "seeds": 1, **exp.diverging})
    res = pd.read_parquet(tmp_path / "results.parquet")
    assert res["diverged"].all()
    assert {c["verdict"] for c in summary["checks"]} == {"not measurable"}
    assert not summary["ok"]


def test_estimate_names_its_drivers() -> None:
    exp = get(ID)
    quick = exp.estimate(exp.config("quick"))
    bigger = exp.estimate(exp.config("quick", {"lrs": [0.01 * k for k in range(1, 31)]}))
    assert 0 < quick.peak_bytes < bigger.peak_bytes and "lrs" in quick.drivers


@pytest.mark.slow
def test_quick_preset_reproduces(tmp_path) -> None:
    summary = run_experiment(ID, preset="quick", out=tmp_path, workers=2)
    checks = _checks(summary)
    assert set(checks) == KEYS
    assert all(c["verdict"] == "pass" for c in checks.values()), json.dumps(summary["checks"], indent=1)
