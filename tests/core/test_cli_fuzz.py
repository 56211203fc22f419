"""Property-based: any ``--set`` value for any field of any registered experiment, with ``--dry-run``, is
accepted (exit 0) or refused in one line (exit 2): no traceback, no third-party warning, nothing
written, within 10 s. Huge sizes must be refused by the typed config or the memory estimate, never run."""

from __future__ import annotations

import dataclasses
import io
import json
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from noiseprobe import experiments
from noiseprobe.cli import main

EDGE_NUMBERS = [
    0,
    -1,
    1,
    2**31,
    2**63,
    -(2**63) - 1,
    10**30,
    1e308,
    -1e-300,
    0.5,
    float("nan"),
    float("inf"),
    float("-inf"),
]
VALUES = st.one_of(
    st.sampled_from(EDGE_NUMBERS),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=6),
    st.lists(st.one_of(st.sampled_from(EDGE_NUMBERS), st.integers(-3, 10**12), st.floats()), max_size=4),
    st.lists(st.lists(st.integers(-2, 6), max_size=3), max_size=3),  # ragged and empty
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def fields_of(exp_id: str) -> list[str]:
    exp = experiments.get(exp_id)
    if exp.Config is not None:
        return [f.name for f in dataclasses.fields(exp.Config)]
    return list(exp.presets["quick"])


def _dry_run(exp_id: str, field: str, value, out: Path) -> tuple[int, str, str, float]:
    err, std = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with redirect_stderr(err), redirect_stdout(std):
        try:
            code = main(
                [
                    "reproduce",
                    exp_id,
                    "--out",
                    str(out),
                    "--workers",
                    "2",
                    "--dry-run",
                    "--set",
                    f"{field}={json.dumps(value)}",
                ]
            )
        except SystemExit as exc:
            code = exc.code
    return code, std.getvalue(), err.getvalue(), time.perf_counter() - t0


IDS = ["sample_experiment:Walk", *experiments.REGISTRY]


@pytest.mark.parametrize("exp_id", IDS)
def test_any_set_value_is_accepted_or_one_line(sample_env, tmp_path, exp_id):
    if not experiments.available(exp_id) and ":" not in exp_id:
        pytest.skip(f"{exp_id} not available in this build")
    names = fields_of(exp_id)
    out = tmp_path / "run"
    preset = experiments.get(exp_id).presets["quick"]
    for field in names:  # the preset's own values are accepted and print the estimate
        if field in preset:
            code, stdout, stderr, _ = _dry_run(exp_id, field, preset[field], out)
            assert code == 0 and stderr == "" and "estimate:" in stdout, f"{field}: exit {code}\n{stderr}"

    @settings(
        max_examples=30, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(field=st.sampled_from(names), value=VALUES)
    def check(field, value):
        code, stdout, stderr, secs = _dry_run(exp_id, field, value, out)
        where = f"{exp_id} --set {field}={json.dumps(value)}"
        assert "Traceback" not in stderr, where + "\n" + stderr
        assert code in (0, 2), f"{where}: exit {code}\n{stderr}"
        if code == 0:
            assert stderr == "" and "nothing written" in stdout, where + "\n" + stderr
        else:
            lines = stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("noiseprobe: error:"), where + "\n" + stderr
        assert not out.exists(), where + ": wrote " + str(list(out.rglob("*")))
        assert secs < 10, f"{where}: {secs:.1f} s"

    check()


def _huge(exp, field: str):
    """A huge value of the field's JSON type (a list of one huge item for list fields)."""
    value = exp.presets["quick"].get(field)
    return [10**12] if isinstance(value, list) else 10**12


@pytest.mark.parametrize("exp_id", IDS)
def test_huge_sizes_are_refused_before_anything_runs(sample_env, tmp_path, exp_id):
    exp = experiments.get(exp_id)
    sizes = getattr(exp.Config, "size_fields", ()) if exp.Config is not None else ()
    assert sizes, f"{exp_id} declares no size_fields in a typed config"
    for field in sizes:
        code, _, stderr, secs = _dry_run(exp_id, field, _huge(exp, field), tmp_path / "run")
        assert code == 2 and len(stderr.strip().splitlines()) == 1, f"--set {field}=huge: exit {code}\n{stderr}"
        assert secs < 10 and not (tmp_path / "run").exists()


def _report(run: Path, html: Path) -> tuple[int, str, str]:
    err, std = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(std):
        try:
            code = main(["report", str(run), "--out", str(html)])
        except SystemExit as exc:
            code = exc.code
    return code, std.getvalue(), err.getvalue()


def test_report_on_any_summary_or_table_damage_renders_or_is_one_line(sample_env, tmp_path):
    """Any JSON value in any field of summary.json (or of its first check), or a results.parquet cut at any
    length or overwritten: ``report`` renders (exit 0, nothing on stderr) or names the run in one line (exit
    4, no report written) — never a traceback."""
    from noiseprobe.core.runner import run_experiment

    run, html = tmp_path / "run", tmp_path / "report.html"
    run_experiment("sample_experiment:Walk", "quick", run, workers=1)
    summary = json.loads((run / "summary.json").read_text())
    table = (run / "results.parquet").read_bytes()

    @settings(
        max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(
        where=st.sampled_from(["summary", "check", "table"]),
        field=st.sampled_from([*summary, "key", "claim", "verdict", "measured"]),
        value=VALUES,
        cut=st.integers(0, len(table)),
        junk=st.binary(max_size=64),
    )
    def check(where, field, value, cut, junk):
        s = json.loads(json.dumps(summary))
        data = table
        if where == "summary":
            s[field] = value
        elif where == "check":
            s["checks"][0][field] = value
        else:
            data = table[:cut] + junk
        (run / "summary.json").write_text(json.dumps(s))
        (run / "results.parquet").write_bytes(data)
        html.unlink(missing_ok=True)
        code, stdout, stderr = _report(run, html)
        case = f"{where} {field}={value!r} cut={cut} junk={junk!r}"
        assert "Traceback" not in stderr and code in (0, 4), f"{case}: exit {code}\n{stderr}"
        if code == 0:
            assert stderr == "" and html.exists(), case
        else:
            lines = stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("noiseprobe: error:") and not html.exists(), case
        if where == "table" and data != table:
            assert code == 4 and "results.parquet" in stderr, case  # the manifest sees every change

    check()
