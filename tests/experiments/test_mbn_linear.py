"""Experiments mbn-fig3/4/5/6 and mbn-table2: tiny presets run end to end, checks pass, figures exist,
results do not depend on chunking, and invalid overrides are rejected."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from noiseprobe import experiments
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.runner import run_experiment

TINY = {
    "mbn-fig3": {"batch_sizes": [12, 32], "gammas": [0.0, 0.3], "chains": 200, "steps": 400},
    "mbn-fig4": {"lrs": [0.5, 1.2], "S2d": [50], "chains": 200, "steps": 400, "chains2d": 100, "steps2d": 400},
    "mbn-fig5": {"gammas": [-0.4, -0.2159, 0.0], "lrs": [1.0], "chains": 100, "steps": 400},
    "mbn-fig6": {"D": 8, "alphas": [0.5, 1.5, 4.0], "chains": 50, "steps": 600},
    "mbn-table2": {"chains": 200, "steps": 500},
}


@pytest.mark.parametrize("exp_id", sorted(TINY))
def test_runs_and_writes(tmp_path, exp_id):
    summary = run_experiment(exp_id, "quick", out=tmp_path, overrides=TINY[exp_id])
    assert summary["checks"] and all("claim" in c and "measured" in c for c in summary["checks"])
    assert (tmp_path / "results.parquet").exists() and list(tmp_path.glob("*.png"))
    assert json.loads((tmp_path / "summary.json").read_text())["experiment"] == exp_id


def test_fig3_quick_checks_pass(tmp_path):
    """The demo preset: every stated claim holds."""
    summary = run_experiment("mbn-fig3", "quick", out=tmp_path)
    failed = [c["claim"] for c in summary["checks"] if not c["passed"]]
    assert not failed, failed


def test_chunk_independence():
    """A chunk's rows depend only on its spec: running it alone or after others gives identical numbers."""
    exp = experiments.get("mbn-table2")
    cfg = exp.config("quick", {"chains": 20, "steps": 50})
    chunks = exp.chunks(cfg)
    alone = exp.run_chunk(cfg, chunks[2])
    for c in chunks[:2]:
        exp.run_chunk(cfg, c)
    pd.testing.assert_frame_equal(alone, exp.run_chunk(cfg, chunks[2]))
    assert len(set(pd.concat([exp.run_chunk(cfg, c) for c in chunks]).chain)) == 3 * 20


@pytest.mark.parametrize("exp_id,bad", [("mbn-fig3", {"chains": 1}), ("mbn-fig4", {"lrs": [-0.1]}),
                                        ("mbn-fig5", {"S": 0}), ("mbn-fig5", {"lr": 30.0}), ("mbn-fig6", {"D": 500}),
                                        ("mbn-table2", {"lr": -1.0})])
def test_invalid_config(exp_id, bad):
    with pytest.raises(ConfigError):
        experiments.get(exp_id).config("quick", bad)
