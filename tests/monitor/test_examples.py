"""The examples run (in seconds) and measure what they say."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plain_loop(tmp_path):
    mon = _load("plain_loop").main(["--steps", "30", "--every", "10", "--out", str(tmp_path)])
    assert list(mon.history["step"]) == [0, 10, 20] and (tmp_path / "monitor.parquet").exists()
    assert all(math.isfinite(v) and v > 0 for v in mon.history["tr_sigma"])


def test_lightning_module(tmp_path):
    pytest.importorskip("lightning")
    cb = _load("lightning_module").main(["--epochs", "1", "--n-train", "200", "--out", str(tmp_path)])
    assert list(cb.monitor.history["step"]) == [0]


def test_transformers_trainer(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    cb = _load("transformers_trainer").main(["--steps", "6", "--every", "5", "--out", str(tmp_path)])
    hist = cb.monitor.history
    assert list(hist["step"]) == [0, 5]
    assert all(math.isfinite(v) and v > 0 for v in hist["tr_sigma"])
