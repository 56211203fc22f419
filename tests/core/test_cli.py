"""The command line: every bad argument is one line, exit 2, nothing written (property-based)."""

from __future__ import annotations

import json
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from noiseprobe.cli import main

EXP = "sample_experiment:Walk"
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _assert_one_line_error(code, err, field):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("noiseprobe") and "error" in lines[0] and field in lines[0]
    assert "Traceback" not in err


@SETTINGS
@given(value=st.one_of(st.integers(max_value=0), st.floats(), st.text(max_size=8), st.booleans()))
def test_bad_n_steps(sample_env, tmp_path, capsys, value):
    out = tmp_path / "run"
    code, _, err = _run(["reproduce", EXP, "--out", str(out), "--set", f"n_steps={json.dumps(value)}"], capsys)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return
    _assert_one_line_error(code, err, "n_steps")
    assert not out.exists()


@SETTINGS
@given(
    value=st.one_of(
        st.floats(max_value=-1e-9), st.floats(min_value=10.001), st.just(float("nan")), st.just(float("inf"))
    )
)
def test_bad_real_field(sample_env, tmp_path, capsys, value):
    out = tmp_path / "run"
    code, _, err = _run(["reproduce", EXP, "--out", str(out), "--set", f"sleep={value}"], capsys)
    _assert_one_line_error(code, err, "sleep")
    assert not out.exists()


@SETTINGS
@given(workers=st.integers(max_value=0))
def test_bad_workers(sample_env, tmp_path, capsys, workers):
    out = tmp_path / "run"
    code, _, err = _run(["reproduce", EXP, "--out", str(out), "--workers", str(workers)], capsys)
    _assert_one_line_error(code, err, "--workers")
    assert not out.exists()


@SETTINGS
@given(name=st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_", min_size=1, max_size=12))
def test_unknown_field_experiment_preset_executor(sample_env, tmp_path, capsys, name):
    out = tmp_path / "run"
    cases = [
        (["reproduce", EXP, "--out", str(out), "--set", f"zz{name}=1"], f"zz{name}"),
        (["reproduce", f"no-{name}", "--out", str(out)], "experiment"),
        (["reproduce", EXP, "--out", str(out), "--preset", f"x{name}"], "--preset"),
        (["reproduce", EXP, "--out", str(out), "--executor", f"x{name}"], "--executor"),
        (["reproduce", EXP, "--out", str(out), "--set", name], "--set"),
    ]
    for argv, field in cases:
        code, _, err = _run(argv, capsys)
        _assert_one_line_error(code, err, field)
        assert not out.exists()


@pytest.mark.parametrize(
    "argv,field",
    [
        (["reproduce"], "id"),
        (["frobnicate"], "frobnicate"),
        (["reproduce", EXP, "--workers", "two"], "--workers"),
        (["reproduce", EXP, "--executor", "local", "--address", "1.2.3.4:6379"], "--address"),
        (["report", "/nonexistent/dir"], "DIR"),
    ],
)
def test_argument_errors(sample_env, capsys, argv, field):
    code, _, err = _run(argv, capsys)
    _assert_one_line_error(code, err, field)


def test_cli_end_to_end_in_a_subprocess(sample_env, cli, tmp_path):
    out = tmp_path / "run"
    ok = subprocess.run(
        [*cli, "reproduce", EXP, "--out", str(out), "--workers", "1"],
        env=sample_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert (
        "1 reproduced · 0 paper claims refuted and corrected · 0 failed" in ok.stdout
        and (out / "summary.json").exists()
    )
    bad = subprocess.run(
        [*cli, "reproduce", EXP, "--set", "n_steps=0", "--out", str(tmp_path / "bad")],
        env=sample_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    _assert_one_line_error(bad.returncode, bad.stderr, "n_steps")
    assert not (tmp_path / "bad").exists()
    lst = subprocess.run([*cli, "list"], env=sample_env, capture_output=True, text=True, timeout=120)
    assert lst.returncode == 0 and "nin-fig2-top" in lst.stdout and "sl-fig4" in lst.stdout
