"""Experiment nin-fig2-top end to end through the runner (small override), and the quick preset (slow)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.runner import run_experiment
from noiseprobe.experiments import get

SMALL = {
    "n_sigma": 20,
    "n_seeds": 6,
    "steps": 4000,
    "sigma_min": 0.05,
    "sigma_max": 300.0,
    "traj_seeds": 1,
    "traj_points": 40,
}


def test_small_run_end_to_end_and_resume(tmp_path):
    out = tmp_path / "run"
    s = run_experiment("nin-fig2-top", "quick", out=out, overrides=SMALL)
    res = pd.read_parquet(out / "results.parquet")
    sweep = res[res["kind"] == "sweep"]
    assert len(sweep) == 2 * 20 * 6 and set(sweep["method"]) == {"reduced", "exact"}
    assert set(sweep["phase"]) <= {"decoupled", "decay", "catapult", "divergent"}
    traj = pd.read_parquet(out / "trajectories.parquet")
    assert set(traj["panel"]) == {0, 1, 2, 3} and traj["step"].max() == 4000
    assert {"fig2_top_trajectories.png", "phase_diagram.png", "decay_times.png"} <= set(s["figures"])
    v = {c["key"]: c["verdict"] for c in s["checks"]}
    assert {"reduced-boundaries-ordered", "exact-eq9-exponent", "exact-reduced-agree"} <= set(v)
    # the paper's boundary formulas fail as printed and are refuted by their passing corrections
    for m in ("reduced", "exact"):
        assert v[f"{m}-decoupled-decay-paper"] == "refuted" and v[f"{m}-decoupled-decay-corrected"] == "pass"
        assert v[f"{m}-catapult-divergent-paper"] == "refuted" and v[f"{m}-catapult-divergent-bound"] == "pass"
    b = s["metrics"]["reduced: decay|catapult"]
    assert {"measured", "paper", "corrected", "paper_rel_err", "corrected_rel_err"} <= set(b)
    assert np.isclose(b["paper_rel_err"], b["paper"] / b["measured"] - 1)
    # the four phases, in order, even at this size; the corrected decoupled|decay predictor within 15 %
    assert v["reduced-boundaries-ordered"] == "pass" and v["reduced-phases-appear"] == "pass"
    dec = s["metrics"]["reduced: decoupled|decay"]
    assert abs(dec["corrected_rel_err"]) < 0.15
    # a second call returns the finished summary without recomputing
    again = run_experiment("nin-fig2-top", "quick", out=out, overrides=SMALL)
    assert again["finished"] == s["finished"]
    assert json.loads((out / "summary.json").read_text())["experiment"] == "nin-fig2-top"


@pytest.mark.parametrize(
    "field,value",
    [
        ("methods", ["euler"]),
        ("methods", []),
        ("init", "garbled"),
        ("traj_sigmas", [1.0, 2.0]),
        ("sigma_max", 0.001),
        ("n_sigma", 2),
        ("methods", ["exact", "exact"]),
        ("lr", -1.0),
    ],
)
def test_invalid_configs_raise_config_error(field, value):
    with pytest.raises(ConfigError, match=field):
        get("nin-fig2-top").config("quick", {field: value})


def test_typed_config_keeps_the_presets_and_their_hash():
    from noiseprobe.core.store import config_hash

    exp = get("nin-fig2-top")
    for preset, values in exp.presets.items():
        cfg = exp.config(preset)
        assert cfg.to_dict() == json.loads(json.dumps(values))
        assert config_hash(exp.id, cfg.to_dict()) == config_hash(exp.id, values)


def test_all_diverging_run_finishes_with_checks_not_measurable(tmp_path):
    """Every replica overflows under the diverging overrides: the run finishes, nothing that needs a
    convergent run passes."""
    exp = get("nin-fig2-top")
    small = {**SMALL, "n_sigma": 8, "n_seeds": 2, "steps": 200, **exp.diverging}
    s = run_experiment("nin-fig2-top", "quick", out=tmp_path / "d", overrides=small)
    res = pd.read_parquet(tmp_path / "d" / "results.parquet")
    assert (res["overflow_step"] >= 0).all()
    v = {c["key"]: c["verdict"] for c in s["checks"]}
    for m in ("reduced", "exact"):
        assert v[f"{m}-boundaries-ordered"] == "not measurable"
        assert v[f"{m}-eq9-exponent"] == "not measurable"
        assert v[f"{m}-decoupled-decay-corrected"] in ("not measurable", "fail")
    assert not s["ok"]


def test_chunks_cover_the_grid_once():
    exp = get("nin-fig2-top")
    cfg = exp.config("quick")
    spans = [c.spec["sigma_index"] for c in exp.chunks(cfg) if c.spec["method"] == "exact" and "sigma_index" in c.spec]
    covered = np.concatenate([np.arange(a, b) for a, b in spans])
    np.testing.assert_array_equal(np.sort(covered), np.arange(cfg.n_sigma))


@pytest.mark.slow
def test_quick_preset_checks(tmp_path):
    s = run_experiment("nin-fig2-top", "quick", out=tmp_path / "q")
    assert s["ok"], [(c["key"], c["verdict"]) for c in s["checks"] if c["verdict"] not in ("pass", "refuted")]
    assert s["seconds"] < 120
