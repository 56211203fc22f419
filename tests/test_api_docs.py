"""The API reference builds from the docstrings without a warning."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("pdoc")
SPEC = importlib.util.spec_from_file_location("api", Path(__file__).resolve().parents[1] / "docs" / "api.py")


def test_api_reference_builds_without_warnings(tmp_path):
    api = importlib.util.module_from_spec(SPEC)
    SPEC.loader.exec_module(api)
    assert api.build(tmp_path) == []
    for page in ("noiseprobe.html", "noiseprobe/core/checks.html", "noiseprobe/probes/operators/noise_covariance.html"):
        assert (tmp_path / page).stat().st_size > 0, page
