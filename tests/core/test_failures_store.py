"""Output paths, corrupt run directories, one process per directory, SIGTERM (docs/failures.md).

Faults are injected at the store's one write call and one rename call (``store._write_bytes``,
``store._rename``), so they are real OSErrors at the places the OS would raise them.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from noiseprobe.core import store
from noiseprobe.core.runner import run_experiment

from .test_failures_input import EXP, _main, one_line

SETS = ["--set", "n_replicas=40"]


def _tables_equal(a: Path, b: Path) -> None:
    for t in ("results", "paths"):
        pd.testing.assert_frame_equal(pd.read_parquet(a / f"{t}.parquet"), pd.read_parquet(b / f"{t}.parquet"))


@pytest.fixture
def ref(sample_env, tmp_path) -> Path:
    run_experiment(EXP, "quick", tmp_path / "ref", {"n_replicas": 40}, workers=1)
    return tmp_path / "ref"


def _fail_after(monkeypatch, name: str, n_ok: int, err: int) -> list[int]:
    """Make the store's ``name`` call raise OSError(err) after ``n_ok`` successful calls."""
    real, calls = getattr(store, name), [0]

    def faulty(a, b):
        calls[0] += 1
        if calls[0] > n_ok:
            raise OSError(err, os.strerror(err), str(a))
        return real(a, b)

    monkeypatch.setattr(store, name, faulty)
    return calls


@pytest.mark.parametrize(
    "name,n_ok,err", [("_write_bytes", 4, errno.ENOSPC), ("_rename", 7, errno.EROFS), ("_write_bytes", 0, errno.EACCES)]
)
def test_output_faults_are_one_line_and_resume_identically(
    sample_env, tmp_path, capsys, monkeypatch, ref, name, n_ok, err
):
    out = tmp_path / "run"
    _fail_after(monkeypatch, name, n_ok, err)
    code, _, stderr = _main(["reproduce", EXP, "--out", out, "--workers", 1, *SETS], capsys)
    assert code == 4
    one_line(stderr, str(out), os.strerror(err))
    assert not list(out.rglob(".tmp-*")) and not (out / "summary.json").exists()
    monkeypatch.undo()
    code, _, stderr = _main(["reproduce", EXP, "--out", out, "--workers", 1, *SETS], capsys)
    assert code == 0, stderr
    _tables_equal(out, ref)


def test_out_naming_a_file_or_under_a_file(sample_env, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    for argv in (["reproduce", EXP, "--out", f], ["reproduce", EXP, "--out", f / "sub"], ["demo", "--out", f]):
        code, _, err = _main(argv, capsys)
        assert code == 2
        one_line(err, "--out", str(f))
    assert f.read_text() == "x"


def test_unwritable_out_is_refused_before_anything(sample_env, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(store.os, "access", lambda p, mode: False)  # as for a read-only / foreign directory
    code, _, err = _main(["reproduce", EXP, "--out", tmp_path / "run"], capsys)
    assert code == 2
    one_line(err, str(tmp_path), "Permission denied")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory(sample_env, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    code, _, err = _main(["reproduce", EXP, "--out", ro / "run"], capsys)
    assert code == 2
    one_line(err, str(ro), "Permission denied")


def test_report_output_faults(sample_env, tmp_path, capsys, monkeypatch, ref):
    code, _, err = _main(["report", ref, "--out", ref / "results.parquet" / "r.html"], capsys)
    assert code == 4
    one_line(err, "results.parquet")
    _fail_after(monkeypatch, "_write_bytes", 0, errno.ENOSPC)
    code, _, err = _main(["report", ref], capsys)
    assert code == 4
    one_line(err, str(ref / "report.html"), "No space left on device")


@pytest.mark.parametrize("text", ["", '{"experiment": "sample', "[1, 2]", '{"experiment": "x"}'])
def test_corrupt_run_json_is_named_and_never_replaced(sample_env, tmp_path, capsys, ref, text):
    (ref / "run.json").write_text(text)
    for argv in (["reproduce", EXP, "--out", ref, *SETS], ["reproduce", EXP, "--out", ref, *SETS, "--dry-run"]):
        code, _, err = _main(argv, capsys)
        assert code == 4
        one_line(err, str(ref / "run.json"), "corrupt")
        assert (ref / "run.json").read_text() == text


@pytest.mark.parametrize("text", ["", '{"experiment": ', "null"])
def test_corrupt_summary_is_reanalysed_from_the_chunks(sample_env, tmp_path, capsys, ref, text):
    before = json.loads((ref / "summary.json").read_text())
    (ref / "summary.json").write_text(text)
    code, _, err = _main(["report", ref], capsys)  # report: one line naming it
    assert code == 4 and "summary.json" in err and len(err.strip().splitlines()) == 2  # warning + error
    code, _, err = _main(["reproduce", EXP, "--out", ref, *SETS, "--workers", 1], capsys)
    assert code == 0
    one_line(err, str(ref / "summary.json"), "re-analysing")
    after = json.loads((ref / "summary.json").read_text())
    assert after["checks"] == before["checks"] and after["metrics"] == before["metrics"]
    assert after["chunks"]["resumed"] == after["chunks"]["total"]


def test_report_leaves_out_a_corrupt_run_with_a_warning(sample_env, tmp_path, capsys):
    for name in ("a", "b"):
        run_experiment(EXP, "quick", tmp_path / "all" / name, workers=1)
    (tmp_path / "all/b/summary.json").write_text("{")
    code, _, err = _main(["report", tmp_path / "all"], capsys)
    assert code == 0
    one_line(err, "b/summary.json", "left out")
    assert "1 run(s)" in (tmp_path / "all/report.html").read_text()


@pytest.mark.parametrize("how", ["truncate", "garbage", "empty"])
@pytest.mark.parametrize("table", ["results", "paths"])
def test_corrupt_chunk_is_discarded_and_recomputed(sample_env, tmp_path, capsys, ref, how, table):
    out = tmp_path / "run"
    run_experiment(EXP, "quick", out, {"n_replicas": 40}, workers=1)
    (out / "summary.json").unlink()  # an interrupted run, one of whose chunk files is damaged
    f = out / "chunks" / table / "r00008.parquet"
    data = f.read_bytes()
    f.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"x" * 100, "empty": b""}[how])
    code, _, err = _main(["reproduce", EXP, "--out", out, *SETS, "--workers", 1], capsys)
    assert code == 0
    one_line(err, str(f), "recomputed")
    _tables_equal(out, ref)
    assert json.loads((out / "summary.json").read_text())["chunks"]["resumed"] == 9


HOLD = """
import sys, time
from noiseprobe.core.store import RunDir
with RunDir(sys.argv[1]).locked():
    print("held", flush=True)
    time.sleep(60)
"""


def test_one_process_per_run_directory(sample_env, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], env=sample_env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = _main(["reproduce", EXP, "--out", out, "--workers", 1], capsys)
        assert code == 4
        one_line(err, str(out), f"PID {holder.pid}")
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing touched
    finally:
        holder.kill()
        holder.wait()
    code, _, err = _main(["reproduce", EXP, "--out", out, "--workers", 1], capsys)  # released by its death
    assert code == 0, err


def _alive_with(marker: str) -> list[int]:
    """PIDs of live processes whose environment holds ``marker`` (our CLI and its workers)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "environ").read_bytes() and b"State:\tZ" not in (d / "status").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def test_sigterm_is_an_interruption_exit_143_and_resume_identical(sample_env, tmp_path, capsys):
    import threading

    out = tmp_path / "run"
    argv = ["reproduce", EXP, "--out", out, "--workers", 1, "--quiet", "--set", "n_replicas=8", "--set", "sleep=0.4"]
    before = signal.getsignal(signal.SIGTERM)
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()  # during the third chunk or so
    code, _, err = _main(argv, capsys)
    assert code == 143
    one_line(err, "terminated", "resume")
    assert signal.getsignal(signal.SIGTERM) is before  # restored after the command
    assert not (out / "summary.json").exists()
    assert _main(argv, capsys)[0] == 0
    run_experiment(EXP, "quick", tmp_path / "ref", {"n_replicas": 8}, workers=1)
    _tables_equal(out, tmp_path / "ref")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_ends_workers_exits_143_and_resumes_identically(sample_env, cli, tmp_path, workers):
    marker = f"NOISEPROBE_SIGTERM_TEST={os.getpid()}-{workers}"
    env = {**sample_env, marker.split("=")[0]: marker.split("=")[1]}
    out = tmp_path / "run"
    sets = ["--set", f"n_replicas={20 * workers}", "--set", "per_chunk=20"]  # one chunk per worker
    cmd = [*cli, "reproduce", EXP, "--out", str(out), "--workers", str(workers), "--quiet", *sets, "--set", "sleep=6"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "run.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0 * workers)  # chunks in flight (6 s each)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    # ended without waiting for the chunks in flight (≥ 4 s more; an interpreter holding torch takes ~1-3 s
    # to exit on a loaded machine)
    assert proc.returncode == 143 and time.time() - t0 < 4.5, err
    one_line(err, "terminated", "resume")
    deadline = time.time() + 5
    while _alive_with(marker) and time.time() < deadline:
        time.sleep(0.1)
    assert _alive_with(marker) == []  # no worker left behind
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    run_experiment(EXP, "quick", tmp_path / "ref", {"n_replicas": 20 * workers, "per_chunk": 20}, workers=1)
    _tables_equal(out, tmp_path / "ref")
