"""gns-layers (#20.3): the pooled blocks, the checks' verdicts on synthetic tables, a reduced run end to
end, and (slow) the quick preset."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.runner import run_experiment
from noiseprobe.experiments import get
from noiseprobe.experiments.gns_layers import blocks

EXP = "gns-layers"
SMALL = {"steps": 40, "measure_every": 2, "window": 4, "width": 16, "layers": 1, "batch_size": 8, "context": 8}


def _tables(b_total: np.ndarray, b_norms: np.ndarray, g: float = 1.0) -> dict[str, pd.DataFrame]:
    """One measurement per block (window 1) with tr Σ = B·|G|²."""
    n = len(b_total)
    meas = pd.DataFrame(
        {
            "step": np.arange(n) * 10,
            "tr_sigma": b_total * g,
            "g_sq": np.full(n, g),
            "tr_sigma_norms": b_norms * 0.01 * g,
            "g_sq_norms": np.full(n, 0.01 * g),
            "status": "ok",
        }
    )
    return {"results": pd.DataFrame({"step": np.arange(10 * n), "loss": 1.0}), "measurements": meas}


def _verdicts(tables, **over):
    exp = get(EXP)
    config = exp.config("quick", {"window": 1, **over})
    _, checks = exp.evaluate(config, tables)
    return {c.key: {True: "pass", False: "fail", None: "none"}[c.passed] for c in checks}


def test_blocks_pool_tr_sigma_and_g_sq_over_windows():
    t = _tables(np.array([1.0, 3.0, 5.0, 7.0, 9.0]), np.array([2.0, 2.0, 2.0, 2.0, 2.0]))
    t["measurements"].loc[1, "g_sq"] = 3.0  # tr 3 over |G|² 3
    b = blocks(2, t["measurements"])
    assert len(b) == 2  # the fifth measurement is left over
    assert b["b_total"].tolist() == pytest.approx([(1.0 + 3.0) / (1.0 + 3.0), (5.0 + 7.0) / 2.0])
    assert b["b_norms"].tolist() == pytest.approx([2.0, 2.0])


def test_checks_pass_when_norms_track_the_total_and_fail_when_they_do_not():
    rng = np.random.default_rng(0)
    b_total = np.exp(np.linspace(0, 3, 12))
    assert set(_verdicts(_tables(b_total, 0.7 * b_total * np.exp(0.05 * rng.standard_normal(12)))).values()) == {"pass"}
    off = _verdicts(_tables(b_total, 0.1 * b_total))  # tracks, but a factor 10 off: outside the band
    assert off == {"norms-track-total": "pass", "norms-ratio-in-band": "fail"}
    flat = _verdicts(_tables(b_total, np.exp(rng.standard_normal(12))))  # unrelated
    assert flat["norms-track-total"] == "fail"


def test_too_few_blocks_are_not_measurable():
    v = _verdicts(_tables(np.array([1.0, 2.0]), np.array([1.0, 2.0])))
    assert set(v.values()) == {"none"}


def test_config_rules():
    exp = get(EXP)
    with pytest.raises(ConfigError, match="heads"):
        exp.config("quick", {"heads": 5})
    with pytest.raises(ConfigError, match="ratio_band"):
        exp.config("quick", {"ratio_band": [2.0, 1.0]})


def test_reduced_run_end_to_end_and_reproducible(tmp_path):
    a = run_experiment(EXP, preset="quick", out=tmp_path / "a", workers=1, overrides=SMALL)
    b = run_experiment(EXP, preset="quick", out=tmp_path / "b", workers=1, overrides=SMALL)
    meas = pd.read_parquet(tmp_path / "a" / "measurements.parquet")
    assert len(meas) == 20 and (meas["status"] == "ok").all()
    assert (meas["tr_sigma_norms"] < meas["tr_sigma"]).all()
    assert a["metrics"] == b["metrics"] and math.isfinite(a["metrics"]["correlation"])


@pytest.mark.slow
def test_quick_preset_reproduces_the_claim(tmp_path):
    summary = run_experiment(EXP, preset="quick", out=tmp_path, workers=1)
    verdicts = {c["key"]: c["verdict"] for c in summary["checks"]}
    assert verdicts == {"norms-track-total": "pass", "norms-ratio-in-band": "pass"}, summary["checks"]
    assert summary["ok"] and summary["metrics"]["blocks"] == 10
