"""Divergence is an outcome, never a crash: every experiment run with its all-diverging overrides
(``Experiment.diverging``) finishes, and what needs convergence is "not measurable", never "pass".

An experiment that trains nothing (closed-form tables, e.g. nin-table1) has nothing to diverge: it sets
``diverging = None`` and states why in a class attribute ``nothing_to_diverge``; its quick run must still
finish and be ok. Every registered experiment is one or the other. The default suite runs one fast
representative of each family (issue 11); the rest are ``slow``."""

from __future__ import annotations

import pytest

from noiseprobe import experiments
from noiseprobe.core.runner import run_experiment

#: one fast (a few seconds) representative per family (the id's prefix), plus the closed-form table
FAST = {
    "nin-fig2-bottom",
    "nin-table1",
    "mbn-fig3",
    "sl-fig1",
    "gns-critical-batch",
    "eos-sharpness",
    "eoss-batch-sharpness",
}
#: smaller sizes for the default runs (divergence shows at any size)
SMALL = {
    "gns-critical-batch": {"seeds": 1, "n_train": 600, "probe_samples": 128, "n_boot": 10},
    "eos-sharpness": {"n_train": 200, "width": 20},
    "eoss-batch-sharpness": {"n_train": 64, "width": 8, "batch_sizes": [4, 8, 16]},
}


def _run_diverging(exp_id: str, tmp_path) -> dict:
    exp = experiments.get(exp_id)
    assert exp.diverging is not None, f"{exp_id}: declare Experiment.diverging (or nothing_to_diverge)"
    s = run_experiment(exp_id, "quick", tmp_path / "run", {**exp.diverging, **SMALL.get(exp_id, {})}, workers=1)
    assert (tmp_path / "run" / "summary.json").exists()
    verdicts = {c["key"]: c["verdict"] for c in s["checks"]}
    assert "not measurable" in verdicts.values(), verdicts
    assert s["ok"] is False  # a run where nothing converged is never "ok"
    return verdicts


def test_sample_experiment_diverging(sample_env, tmp_path):
    assert _run_diverging("sample_experiment:Walk", tmp_path) == {"var-final": "not measurable"}


@pytest.mark.parametrize(
    "exp_id", [pytest.param(i, marks=() if i in FAST else pytest.mark.slow) for i in experiments.REGISTRY]
)
def test_every_registered_experiment_finishes_when_all_replicas_diverge(exp_id, tmp_path):
    exp = experiments.get(exp_id)
    reason = getattr(exp, "nothing_to_diverge", None)
    assert (exp.diverging is None) == bool(reason), f"{exp_id}: exactly one of diverging, nothing_to_diverge"
    if reason:
        s = run_experiment(exp_id, "quick", tmp_path / "run", workers=1)
        assert s["ok"] is True and s["checks"], s["checks"]
        return
    _run_diverging(exp_id, tmp_path)


def test_fast_representatives_cover_every_family():
    assert FAST <= set(experiments.REGISTRY)
    assert {i.split("-")[0] for i in experiments.REGISTRY} == {i.split("-")[0] for i in FAST}
