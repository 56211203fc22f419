"""Run directories written before checks computed their own verdicts still load and report; a summary
that does not read is re-analysed from the chunks."""

from __future__ import annotations

import json

from noiseprobe.core.report import write_report
from noiseprobe.core.runner import run_experiment

EXP = "sample_experiment:Walk"


def _legacy(check: dict) -> dict:
    """A check dict as the runner wrote it before keyed checks (the legacy ``Check.to_dict``)."""
    return {k: check[k] for k in ("claim", "measured", "expected", "tolerance", "passed", "detail")}


def test_an_old_format_summary_loads_with_verdicts_and_reports(sample_env, tmp_path):
    out = tmp_path / "runs" / "old"
    new = run_experiment(EXP, "quick", out, workers=1)
    (check,) = new["checks"]
    assert check["verdict"] == "pass"
    old = {
        **new,
        "checks": [
            _legacy(check),
            {**_legacy(check), "claim": "Var at T/2", "passed": False},
            {**_legacy(check), "claim": "diverged", "measured": "nan", "passed": False},
        ],
    }
    del old["ok"], old["headline"]
    (out / "summary.json").write_text(json.dumps(old))
    loaded = run_experiment(EXP, "quick", out, workers=1)  # a finished run: returned, not recomputed
    assert [c["verdict"] for c in loaded["checks"]] == ["pass", "fail", "not measurable"]
    assert loaded["checks"][0]["key"] == "var-x-t-t-sd-2" and loaded["checks"][0]["rule"] == "legacy"
    assert json.loads((out / "summary.json").read_text()) == old  # the stored file is left as it was
    page = write_report(tmp_path / "runs").read_text()
    assert "1 reproduced · 0 paper claims refuted and corrected · 1 failed · 1 not measurable" in page


def test_an_unreadable_summary_is_reanalysed(sample_env, tmp_path):
    out = tmp_path / "run"
    first = run_experiment(EXP, "quick", out, workers=1)
    (out / "summary.json").write_text("{not json")
    again = run_experiment(EXP, "quick", out, workers=1, warn=lambda _: None)
    assert again["checks"] == first["checks"] and again["metrics"] == first["metrics"]
    assert again["chunks"]["resumed"] == again["chunks"]["total"]
