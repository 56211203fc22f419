"""``eoss-batch-sharpness``: its analysis on constructed measurements whose verdicts are known, a reduced
run end to end, an all-diverging run, and (slow) the quick preset."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from noiseprobe.core.checks import resolve
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.runner import run_experiment
from noiseprobe.experiments import get

EOSS = "eoss-batch-sharpness"
SMALL = {"n_train": 64, "width": 8, "lrs": [0.05, 0.1], "batch_sizes": [4, 8, 16], "steps": 20, "measure_every": 10}


def _meas(lr: float, b: int, ratios: list[float], lam_ratios: list[float]) -> pd.DataFrame:
    n = len(ratios)
    return pd.DataFrame(
        {
            "step": np.arange(n) * 10,
            "full_loss": np.linspace(1, 0.1, n),
            "batch_sharpness": 2 * np.asarray(ratios) / lr,
            "batch_sharpness_se": 0.01 * 2 * np.asarray(ratios) / lr,
            "mc_batches": 64,
            "step_batch_sharpness": 2 * np.asarray(ratios) / lr,
            "lambda_max": 2 * np.asarray(lam_ratios) / lr,
            "lr": lr,
            "b": b,
        }
    )


def test_analysis_verdicts_follow_the_numbers(tmp_path) -> None:
    exp = get(EOSS)
    config = exp.Config(**{**exp.presets["quick"], **SMALL, "lrs": [0.1]})
    rise = [0.5, 0.8, 1.02]
    tables = {
        "results": pd.DataFrame({"step": [0], "loss": [1.0], "lr": [0.1], "b": [4]}),
        "measurements": pd.concat(
            [
                # b = 4: at the edge (6 of 6 after the crossing in band), λ_max well below
                _meas(0.1, 4, rise + [0.95, 1.1, 0.9, 1.0, 1.05], [0.5] * 8),
                # b = 8: crosses but leaves the band (2 of 6 in band): the band claim fails
                _meas(0.1, 8, rise + [1.3, 1.4, 0.95, 1.3, 1.3], [0.6] * 8),
                # b = 16: never reaches 2/η, λ_max above 2/η
                _meas(0.1, 16, rise[:2] + [0.9] * 6, [0.7] * 6 + [1.05, 1.05]),
                # GD: λ_max at 2/η
                _meas(0.1, 64, rise + [1.0] * 5, [0.5, 0.8] + [1.02] * 6),
            ]
        ),
    }
    metrics, checks = exp.evaluate(config, tables, tmp_path)
    v = {c.key: c.verdict for c in resolve(checks, EOSS)}
    assert v["eoss-reaches-lr1-b4"] == "pass" and v["eoss-band-lr1-b4"] == "pass"
    assert v["eoss-reaches-lr1-b8"] == "pass" and v["eoss-band-lr1-b8"] == "fail"
    assert v["eoss-reaches-lr1-b16"] == "fail" and v["eoss-band-lr1-b16"] == "not measurable"
    assert v["lambda-below-lr1-b4"] == "pass" and v["lambda-below-lr1-b16"] == "fail"
    assert v["gap-grows-lr1"] == "pass"  # η·λ_max/2 in the last quarter: 0.5 < 0.6 < 1.05
    assert v["gd-edge-lr1"] == "pass"
    runs = {(r["lr"], r["b"]): r for r in metrics["runs"]}
    assert runs[(0.1, 8)]["in_band_fraction"] == pytest.approx(2 / 6)
    assert runs[(0.1, 4)]["first_crossing"] == 20
    assert (tmp_path / "eoss_batch_sharpness.png").stat().st_size > 10_000


def test_reduced_run_end_to_end(tmp_path) -> None:
    summary = run_experiment(EOSS, preset="quick", out=tmp_path, workers=1, overrides=SMALL)
    keys = {c["key"] for c in summary["checks"]}
    per_run = {
        f"{c}-lr{i}-b{b}" for c in ("eoss-reaches", "eoss-band", "lambda-below") for i in (1, 2) for b in (4, 8, 16)
    }
    assert keys == per_run | {f"{c}-lr{i}" for c in ("gap-grows", "gd-edge") for i in (1, 2)}
    meas = pd.read_parquet(tmp_path / "measurements.parquet")
    assert len(meas) == 2 * 4 * 3  # (η, b) runs × measurements at steps 0, 10, 20
    sgd = meas[meas["b"] < 64]
    assert (sgd["batch_sharpness_se"] <= 0.02 * sgd["batch_sharpness"].abs() + 1e-12).all()
    assert (meas.loc[meas["b"] == 64, "batch_sharpness_se"] == 0).all()
    # same seed, same numbers: a chunk recomputed alone gives the same table
    exp = get(EOSS)
    config = exp.Config(**{**exp.presets["quick"], **SMALL})
    chunk = next(c for c in exp.chunks(config) if c.spec["b"] == 8 and c.spec["lr"] == 0.1)
    again = exp.measure(config, chunk)["measurements"].reset_index(drop=True)
    mine = meas[(meas["b"] == 8) & (meas["lr"] == 0.1)].reset_index(drop=True)
    pd.testing.assert_frame_equal(again[mine.columns], mine, check_dtype=False)


def test_diverging_run_finishes_not_measurable(tmp_path) -> None:
    exp = get(EOSS)
    summary = run_experiment(EOSS, preset="quick", out=tmp_path, workers=1, overrides={**SMALL, **exp.diverging})
    assert {c["verdict"] for c in summary["checks"]} == {"not measurable"}, json.dumps(summary["checks"], indent=1)
    assert all("diverged" in c["detail"] for c in summary["checks"])


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"batch_sizes": [8, 8, 16]}, "batch_sizes"),
        ({"batch_sizes": [8, 16, 500]}, "batch_sizes"),
        ({"band": [1.05, 1.2]}, "band"),
        ({"mc_rel_se": 0.05}, "mc_rel_se"),
    ],
)
def test_invalid_overrides_name_the_field(overrides: dict, field: str) -> None:
    exp = get(EOSS)
    with pytest.raises(ConfigError, match=field):
        exp.Config(**{**exp.presets["quick"], **overrides})


@pytest.mark.slow
def test_quick_preset_runs_and_reports(tmp_path) -> None:
    """The quick preset finishes with every check measured or stated; its verdicts are what the data say
    (docs/eoss.md), so this test holds the run, not a verdict."""
    summary = run_experiment(EOSS, preset="quick", out=tmp_path, workers=2)
    checks = {c["key"]: c for c in summary["checks"]}
    assert len(checks) == 2 * 3 * 3 + 2 * 2
    assert all(c["verdict"] in ("pass", "fail", "not measurable") for c in checks.values())
    assert all(c["verdict"] != "not measurable" for k, c in checks.items() if k.startswith(("lambda-below", "gd-edge")))
