"""Shared test fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# One intra-op thread per test process: the suite runs as two xdist workers on 2 cores.
torch.set_num_threads(1)
CORE_TESTS = Path(__file__).parent / "core"


@pytest.fixture
def sample_env(monkeypatch) -> dict[str, str]:
    """Make tests/core/sample_experiment.py importable here and in subprocesses and workers."""
    monkeypatch.syspath_prepend(str(CORE_TESTS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(CORE_TESTS), os.environ.get("PYTHONPATH", "")]))
    env = dict(os.environ)
    return env


@pytest.fixture
def cli() -> list[str]:
    """The noiseprobe command as run by a user (this interpreter's entry point)."""
    return [sys.executable, "-m", "noiseprobe.cli"]
