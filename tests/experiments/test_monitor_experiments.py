"""The monitor's reproductions gns-critical-batch and eos-sharpness: typed configs, reduced runs end to end,
all-diverging runs that finish with their checks "not measurable", and (slow) the quick presets' reproductions."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.runner import run_experiment
from noiseprobe.experiments import get

GNS, EOS = "gns-critical-batch", "eos-sharpness"
GNS_KEYS = {
    "steps-decrease",
    "examples-increase",
    "hyperbola-fit",
    "bracket-below",
    "bracket-above",
    "lr-grid-brackets",
    "bcrit-vs-bsimple",
    "bcrit-vs-bnoise",
}
GNS_SMALL = {
    "n_train": 300,
    "hidden": 8,
    "batch_sizes": [4, 8, 16, 32, 64, 128],
    "lrs": [0.05, 0.1, 0.2, 0.4, 0.8],
    "seeds": 2,
    "target_loss": 1.0,
    "max_steps": 1000,
    "probe_samples": 64,
    "n_boot": 50,
}
EOS_PER_LR = ("crosses", "sharpening", "hover-median", "hover-p10", "hover-p90", "loss-decreases", "loss-nonmonotone")
EOS_SMALL = {"n_train": 150, "width": 16, "lrs": [0.08, 0.1], "steps": 200, "measure_every": 10, "settle_steps": 50}


def _checks(summary: dict) -> dict[str, dict]:
    return {c["key"]: c for c in summary["checks"]}


@pytest.mark.parametrize("exp_id", [GNS, EOS])
def test_typed_config_keeps_preset_values(exp_id: str) -> None:
    exp = get(exp_id)
    for preset in ("quick", "full"):
        assert exp.config(preset).to_dict() == exp.presets[preset]


@pytest.mark.parametrize(
    "exp_id, overrides, field",
    [
        (GNS, {"batch_sizes": [1, 2, 4]}, "batch_sizes"),
        (GNS, {"batch_sizes": [4, 4, 8, 16, 32, 64]}, "batch_sizes"),
        (GNS, {"lrs": [0.1, -1.0]}, "lrs"),
        (GNS, {"probe_samples": 5000}, "probe_samples"),
        (GNS, {"target_loss": 0.0}, "target_loss"),
        (GNS, {"seeds": 0}, "seeds"),
        (GNS, {"nonsense": 1}, "nonsense"),
        (EOS, {"lrs": []}, "lrs"),
        (EOS, {"lrs": [0.1, 0.1]}, "lrs"),
        (EOS, {"lrs": [0.0]}, "lrs"),
        (EOS, {"width": 0}, "width"),
        (EOS, {"measure_every": 10**7}, "measure_every"),
        (EOS, {"steps": "long"}, "steps"),
    ],
)
def test_invalid_overrides_name_the_field(exp_id: str, overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        get(exp_id).config("quick", overrides)
    assert err.value.field == field


def test_gns_reduced_run_end_to_end(tmp_path) -> None:
    summary = run_experiment(GNS, preset="quick", out=tmp_path, workers=1, overrides=GNS_SMALL)
    checks = _checks(summary)
    assert set(checks) == GNS_KEYS
    m = summary["metrics"]
    assert len(m["grid"]) == 6 and all(r["reached"] == 2 for r in m["grid"]), json.dumps(m["grid"])
    assert m["b_crit"] > 0 and m["b_simple_mean"] > 0
    assert checks["steps-decrease"]["verdict"] == "pass" and checks["examples-increase"]["verdict"] == "pass"
    noise = pd.read_parquet(tmp_path / "noise.parquet")
    assert {"step", "b_simple", "b_simple_lo", "b_simple_hi", "b_noise", "batch_size", "seed_index"} <= set(noise)
    assert (tmp_path / "critical_batch.png").stat().st_size > 10_000
    res = pd.read_parquet(tmp_path / "results.parquet")
    assert len(res) == 6 * 2 * 5 and res["replica"].is_unique


def test_gns_chunk_depends_only_on_its_replicas() -> None:
    """A chunk's result is a function of (seed, its global replica indices): recomputing it alone (as another
    worker would) gives the same tables."""
    exp = get(GNS)
    cfg = exp.config("quick", GNS_SMALL)
    chunk = exp.chunks(cfg)[5]
    a, b = exp.measure(cfg, chunk), exp.measure(cfg, chunk)
    for name in a:  # everything but the monitor's timing
        pd.testing.assert_frame_equal(
            a[name].drop(columns="seconds", errors="ignore"), b[name].drop(columns="seconds", errors="ignore")
        )
    assert len(a["noise"]) > 3
    assert set(a["results"]["replica"]) == set(range(5 * 5, 5 * 5 + 5))


def test_gns_diverging_run_finishes_not_measurable(tmp_path) -> None:
    exp = get(GNS)
    summary = run_experiment(
        GNS, preset="quick", out=tmp_path, workers=1, overrides={**GNS_SMALL, "seeds": 1, **exp.diverging}
    )
    res = pd.read_parquet(tmp_path / "results.parquet")
    assert res["diverged"].all()
    assert {c["verdict"] for c in summary["checks"]} == {"not measurable"}
    assert not summary["ok"]


def test_gns_estimate_names_its_drivers() -> None:
    exp = get(GNS)
    quick = exp.estimate(exp.config("quick"))
    bigger = exp.estimate(exp.config("quick", {"lrs": [0.01 * k for k in range(1, 31)]}))
    assert 0 < quick.peak_bytes < bigger.peak_bytes and "lrs" in quick.drivers


@pytest.mark.slow
def test_gns_quick_preset_reproduces(tmp_path) -> None:
    summary = run_experiment(GNS, preset="quick", out=tmp_path, workers=2)
    checks = _checks(summary)
    assert set(checks) == GNS_KEYS
    assert all(c["verdict"] == "pass" for c in checks.values()), json.dumps(summary["checks"], indent=1)


def test_eos_reduced_run_end_to_end(tmp_path) -> None:
    summary = run_experiment(EOS, preset="quick", out=tmp_path, workers=1, overrides=EOS_SMALL)
    checks = _checks(summary)
    assert set(checks) == {f"{name}-lr{k}" for name in EOS_PER_LR for k in (1, 2)}
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


def test_eos_diverging_run_finishes_not_measurable(tmp_path) -> None:
    exp = get(EOS)
    summary = run_experiment(EOS, preset="quick", out=tmp_path, workers=1, overrides={**EOS_SMALL, **exp.diverging})
    losses = pd.read_parquet(tmp_path / "results.parquet")
    assert losses.groupby("lr")["loss"].apply(lambda v: v.isna().any() or (v.abs() > 1e8).any()).all()
    assert {c["verdict"] for c in summary["checks"]} == {"not measurable"}, json.dumps(summary["checks"], indent=1)
    assert all("diverged" in c["detail"] for c in summary["checks"])


@pytest.mark.slow
def test_eos_quick_preset_reproduces(tmp_path) -> None:
    summary = run_experiment(EOS, preset="quick", out=tmp_path, workers=2)
    checks = _checks(summary)
    assert set(checks) == {f"{name}-lr{k}" for name in EOS_PER_LR for k in (1, 2, 3)}
    assert all(c["verdict"] == "pass" for c in checks.values()), json.dumps(summary["checks"], indent=1)
