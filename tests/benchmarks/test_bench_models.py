"""benchmarks/bench_models.py (the "Which models" table of docs/monitor.md) runs at tiny sizes and every row
reports the estimator the monitor is documented to choose for its model family."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
bench_models = importlib.import_module("bench_models")

#: the table's estimator column: what estimator="auto" must choose (docs/monitor.md "Which models")
EXPECTED = {
    "mlp": "per-sample",
    "cnn-bn-eval": "per-sample",
    "resnet-bn-train": "micro-batch",
    "gpt2": "per-sample",
    "bert-padded": "per-sample",
    "llama": "per-sample",
    "lstm-train-dropout0": "per-sample",
    "gru-train-dropout0": "per-sample",
    "rnn-train-dropout0": "per-sample",
    "lstm-eval-dropout": "per-sample",
    "lstm-train-dropout": "micro-batch",
    "dropconnect-train": "micro-batch",
    "custom-function": "micro-batch",
    "compiled": "per-sample",
    "autocast-bf16": "per-sample",
}


def _check(rows: list[dict], expected: dict[str, str]) -> None:
    by_case = {r["case"]: r for r in rows if r["name"].startswith("default measurement: time")}
    assert set(by_case) == set(expected)
    for case, estimator in expected.items():
        row = by_case[case]
        assert (row["estimator"], row["status"]) == (estimator, "ok"), (case, row["note"])
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0, case
        assert row["aim_met"] is None and row["target"] == "info"


def test_every_model_family_gets_its_estimator() -> None:
    assert set(bench_models.CASES) == {*EXPECTED, "resnet-bn-train-forced-per-sample"}
    rows = bench_models.run(quick=True, ddp=False)
    _check(rows, EXPECTED)
    (refused,) = [r for r in rows if r["case"] == "resnet-bn-train-forced-per-sample"]
    assert refused["status"] == "no per-sample gradients" and refused["ratio"] is None
    assert "BatchNorm" in refused["note"]


@pytest.mark.slow  # two spawned gloo processes: ~30 s on a loaded 2-core machine
def test_ddp_is_per_sample_and_fsdp_is_refused() -> None:
    rows = bench_models.ddp_rows(quick=True, rounds=1)
    _check(rows[:1], {"ddp": "per-sample"})
    assert rows[-1]["case"] == "fsdp" and rows[-1]["status"] == "refused"
    assert "FSDP-sharded" in rows[-1]["note"]
