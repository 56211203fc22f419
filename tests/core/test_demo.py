"""`noiseprobe demo` end to end, as a new user runs it: every paper's quick runs and the HTML report."""

from __future__ import annotations

import json
import re
import subprocess

from noiseprobe import experiments
from tests.core.test_report import _render


def test_demo_writes_a_report_with_every_run(cli, tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [*cli, "demo", "--out", str(out), "--quiet", "--workers", "1"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    papers = {exp_id.split("-")[0] for exp_id in experiments.DEMO}
    assert papers == {"nin", "mbn", "sl"}
    for exp_id in experiments.DEMO:
        summary = json.loads((out / exp_id / "summary.json").read_text())
        assert summary["experiment"] == exp_id and summary["preset"] == "quick" and summary["checks"]
    dom = _render(out / "report.html", tmp_path)
    for exp_id in experiments.DEMO:
        assert f'id="{exp_id}"' in dom
    loaded = int(re.search(r'data-figures-loaded="(\d+)"', dom).group(1))
    total = int(re.search(r'data-figures-total="(\d+)"', dom).group(1))
    assert total >= len(experiments.DEMO) and loaded == total
