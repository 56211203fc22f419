"""The HTML report: self-contained, figures embedded, checks table; rendered in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

from noiseprobe.core.report import write_report
from noiseprobe.core.runner import run_experiment

EXP = "sample_experiment:Walk"


def _render(html_path, tmp_path) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is needed: `make browser` installs Debian's chromium package"
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        html_path.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_report_renders_figures_and_checks_in_chromium(sample_env, tmp_path):
    runs = tmp_path / "runs"
    run_experiment(EXP, "quick", runs / "a", workers=1)
    run_experiment(EXP, "quick", runs / "b", {"n_steps": 80}, workers=1)
    page = write_report(runs)
    text = page.read_text()
    assert "src='data:image/png;base64," in text and "http" not in text.split("<body>")[1]  # self-contained
    dom = _render(page, tmp_path)
    loaded = re.search(r'data-figures-loaded="(\d+)"', dom)
    total = re.search(r'data-figures-total="(\d+)"', dom)
    assert loaded and total and int(total.group(1)) == 2 and loaded.group(1) == total.group(1), dom[:500]
    assert dom.count('<table class="checks">') == 2
    assert "Var x_T = T sd^2" in dom and "<th>measured</th>" in dom and "<th>tolerance</th>" in dom
    assert "2 reproduced · 0 paper claims refuted and corrected · 0 failed" in dom
