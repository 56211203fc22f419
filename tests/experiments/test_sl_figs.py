"""Singular-limits experiments sl-fig1..4: end to end through the runner (sl-fig2 quick = the demo run),
reduced runs of the others, typed configs (preset values and run hashes unchanged, errors naming field and
range), all-diverging runs that finish with checks "not measurable", and the memory estimate's inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.paper_claims import PAPER_CLAIMS
from noiseprobe.core.runner import run_experiment
from noiseprobe.core.store import config_hash
from noiseprobe.experiments import get

IDS = ("sl-fig1", "sl-fig2", "sl-fig3", "sl-fig4")
#: run.json hashes of the quick presets written before the typed configs (existing run directories resume)
QUICK_HASHES = {
    "sl-fig1": "1d3ec51730a2347a",
    "sl-fig2": "2bc16a2a4da7b291",
    "sl-fig3": "83fde951d7396bd6",
    "sl-fig4": "ab550f741b2dda4d",
}
#: small sizes for the fast runs
SMALL = {
    "sl-fig1": {"chains": 8, "per_chunk": 4, "t_end": 2.0, "records": 40},
    "sl-fig2": {"chains": 8, "per_chunk": 8, "t_end": 1.0, "t_check": [0.5, 1.0], "records": 20, "t_fast": 1.0},
    "sl-fig3": {
        "chains": 12,
        "per_chunk": 12,
        "t_end_A": 1.0,
        "t_end_B": 0.3,
        "t_check_A": [0.5, 1.0],
        "t_check_B": [0.15, 0.3],
        "records": 40,
        "mb_chains": 4,
        "sde_dt": 0.05,
    },
    "sl-fig4": {"chains": 8, "per_chunk": 8, "t_end": 2.0, "t_check": [1.0, 2.0], "records": 20},
}


def _checks(summary: dict) -> dict[str, dict]:
    return {c["key"]: c for c in summary["checks"]}


def test_fig2_quick_preset_end_to_end(tmp_path) -> None:
    """The demo run: every check passes, error ∝ α on the grid, files written."""
    summary = run_experiment("sl-fig2", preset="quick", out=tmp_path, workers=1)
    checks = _checks(summary)
    assert set(checks) == {"error-first-order", "error-order-lr", "fast-phase-gradient-flow"}
    assert all(c["verdict"] == "pass" for c in checks.values()), json.dumps(summary["checks"], indent=1)
    assert (tmp_path / "fig2.png").stat().st_size > 10_000
    errs = [row["max_err"] for row in summary["metrics"]["grid"]]  # sorted by α ascending
    assert errs[0] < errs[1] < errs[2]
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert {"chain", "step", "lr", "w0", "w1", "theta", "loss", "diverged", "t_A"} <= set(df.columns)
    assert not df["diverged"].any()


def test_fig1_gd_stops_ngd_moves(tmp_path) -> None:
    summary = run_experiment("sl-fig1", preset="quick", out=tmp_path, workers=1, overrides=SMALL["sl-fig1"])
    checks = _checks(summary)
    assert set(checks) == {"gd-stops", "gd-ends-at-phi", "ngd-follows-flow"}
    assert all(c["verdict"] == "pass" for c in checks.values()), json.dumps(summary["checks"], indent=1)
    m = summary["metrics"]
    assert m["ngd_mean_theta_end"] - m["gd_theta_end"] > 0.5  # NGD has moved ~0.9 rad further along Γ


def test_fig3_reduced_caption_claim_refuted(tmp_path) -> None:
    """The caption's printed Reg = 2a is a paper claim: it fails as printed and is refuted by the a/2 check."""
    summary = run_experiment("sl-fig3", preset="quick", out=tmp_path, workers=1, overrides=SMALL["sl-fig3"])
    checks = _checks(summary)
    for key in ("nondegenerate-theorem-a", "degenerate-theorem-b", "clock-ratio", "minibatch-frozen"):
        assert checks[key]["verdict"] == "pass", json.dumps(checks[key], indent=1)
    cap = checks["caption-regulariser-2a"]
    assert cap["kind"] == "paper-claim" and cap["corrected_by"] == "nondegenerate-theorem-a"
    assert cap["verdict"] == "refuted" and cap["measured"] > 0.1
    assert summary["ok"]
    assert summary["metrics"]["caption_reg_ratio"] == pytest.approx(4.0)
    assert abs(summary["metrics"]["argmin_reg_A"] - math.pi / 2) < 1e-6


def test_paper_claims_of_the_family_are_registered() -> None:
    assert [k for k in PAPER_CLAIMS if k.startswith("sl-")] == ["sl-fig3/caption-regulariser-2a"]


def test_fig4_chunking_does_not_change_results() -> None:
    """Chains depend on (seed, global index) only: two chunks reproduce one chunk of the same chains."""
    exp = get("sl-fig4")
    cfg = exp.config("quick", {"chains": 6, "per_chunk": 6, "t_end": 1.0, "t_check": [0.5], "records": 10})
    one = exp.measure(cfg, exp.chunks(cfg)[0])
    cfg2 = cfg.replace(per_chunk=4)
    two = pd.concat([exp.measure(cfg2, c) for c in exp.chunks(cfg2) if c.spec["variant"] == "independent"])
    key = ["chain", "step"]
    pd.testing.assert_frame_equal(
        one.sort_values(key).reset_index(drop=True), two.sort_values(key).reset_index(drop=True)
    )


@pytest.mark.parametrize("exp_id", IDS)
def test_typed_config_keeps_preset_values_and_run_hashes(exp_id: str) -> None:
    exp = get(exp_id)
    for preset in ("quick", "full"):
        assert exp.config(preset).to_dict() == exp.presets[preset]
    assert config_hash(exp_id, exp.config("quick").to_dict()) == QUICK_HASHES[exp_id]


def test_existing_run_directory_resumes(tmp_path) -> None:
    """A run directory whose run.json holds the pre-typed config dict is resumed, not refused."""
    exp_id, overrides = "sl-fig4", SMALL["sl-fig4"]
    first = run_experiment(exp_id, preset="quick", out=tmp_path, workers=1, overrides=overrides)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["config"] == {**get(exp_id).presets["quick"], **overrides}
    (tmp_path / "summary.json").unlink()
    again = run_experiment(exp_id, preset="quick", out=tmp_path, workers=1, overrides=overrides)
    assert [c["measured"] for c in again["checks"]] == [c["measured"] for c in first["checks"]]


@pytest.mark.parametrize(
    "exp_id, overrides, field",
    [
        ("sl-fig2", {"main_lr": 0.3}, "main_lr"),
        ("sl-fig2", {"lrs": [0.1]}, "lrs"),
        ("sl-fig2", {"lrs": [0.1, 0.1]}, "lrs"),
        ("sl-fig2", {"t_check": [9.0]}, "t_check"),
        ("sl-fig1", {"w0": [1.0]}, "w0"),
        ("sl-fig1", {"w0": [0.0, 3.0]}, "w0"),
        ("sl-fig1", {"lr": -0.1}, "lr"),
        ("sl-fig1", {"lr": 20.0}, "lr"),
        ("sl-fig1", {"sigma2": 1e-9}, "t_end/(lr·sigma2)"),
        ("sl-fig1", {"chains": "many"}, "chains"),
        ("sl-fig1", {"nonsense": 1}, "nonsense"),
        ("sl-fig3", {"mb_lr": 0.0}, "mb_lr"),
        ("sl-fig3", {"mb_w0": [-1.0, -1.0]}, "mb_w0"),
        ("sl-fig3", {"t_check_B": [5.0]}, "t_check_B"),
        ("sl-fig4", {"chains": 1}, "chains"),
        ("sl-fig4", {"t_check": []}, "t_check"),
    ],
)
def test_invalid_overrides_name_the_field(exp_id: str, overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        get(exp_id).config("quick", overrides)
    assert info.value.field == field and "allowed" in str(info.value)


@pytest.mark.parametrize("exp_id", IDS)
def test_all_diverging_run_finishes_not_measurable(tmp_path, exp_id: str) -> None:
    """With the experiment's diverging overrides every chain diverges; the run finishes and no check passes."""
    exp = get(exp_id)
    overrides = {**SMALL[exp_id], **exp.diverging}
    if exp_id == "sl-fig2":
        overrides.pop("t_fast")
    summary = run_experiment(exp_id, preset="quick", out=tmp_path, workers=1, overrides=overrides)
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert df["diverged"].all()
    verdicts = {c["key"]: c["verdict"] for c in summary["checks"]}
    assert set(verdicts.values()) == {"not measurable"}, verdicts
    assert not summary["ok"]


@pytest.mark.parametrize("exp_id", IDS)
def test_estimate_grows_with_its_drivers(exp_id: str) -> None:
    exp = get(exp_id)
    cfg = exp.config("quick")
    est = exp.estimate(cfg)
    assert est.peak_bytes > 0 and set(est.drivers) <= set(cfg.to_dict())
    bigger = exp.estimate(cfg.replace(chains=10 * cfg.chains, per_chunk=10 * cfg.per_chunk))
    assert bigger.peak_bytes > est.peak_bytes
    assert est.seconds is not None and 0 < est.seconds < bigger.seconds


@pytest.mark.slow
@pytest.mark.parametrize("exp_id", ["sl-fig1", "sl-fig3", "sl-fig4"])
def test_quick_presets_pass_all_checks(tmp_path, exp_id: str) -> None:
    summary = run_experiment(exp_id, preset="quick", out=tmp_path, workers=1)
    assert summary["ok"], json.dumps(summary["checks"], indent=1)
    assert all(c["verdict"] in ("pass", "refuted") for c in summary["checks"])
    assert any(p.suffix == ".png" for p in tmp_path.iterdir())
    assert np.isfinite(pd.read_parquet(tmp_path / "results.parquet")["theta"]).all()
