"""Output paths, corrupt run directories, one process per directory, SIGTERM (docs/failures.md).

Faults are injected at the store's one write call and one rename call (``store._write_bytes``,
``store._rename``), so they are real OSErrors at the places the OS would raise them.
"""

from __future__ import annotations

import errno
import hashlib
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


def _drop_capabilities() -> None:
    """In the child before exec: root without its capabilities (bounding and ambient sets emptied), so
    that file permissions bind it as they bind any user, as in a container with capabilities dropped."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP (EINVAL past the last capability: ignored)
    libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL


@pytest.mark.parametrize("mode,where", [(0o555, "readonly"), (0o000, "closed")])
def test_out_where_the_process_may_not_write_is_one_line(sample_env, cli, tmp_path, mode, where):
    """``--out`` inside a directory the process may not write (0o555) or not even enter (0o000), run as a
    real process without privileges (as root: its capabilities dropped, the directory another user's):
    one line, exit 2, nothing written."""
    root = os.geteuid() == 0
    d = tmp_path / where
    d.mkdir()
    if root:
        os.chown(d, 65534, 65534)  # nobody's: root without capabilities is "other" to it
    d.chmod(mode)
    try:
        if not root and os.access(d, os.W_OK):
            pytest.skip("not root and the directory stays writable (a file system without permissions)")
        out = d / "run"
        t0 = time.monotonic()
        done = subprocess.run(
            [*cli, "reproduce", EXP, "--out", str(out)],
            env=sample_env,
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=_drop_capabilities if root else None,
        )
        assert done.returncode == 2 and done.stdout == "", done.stderr
        one_line(done.stderr, "--out", str(out), "Permission denied")
        assert time.monotonic() - t0 < 60  # an interpreter start (torch, pandas) and the refusal
    finally:
        d.chmod(0o700)
    assert list(d.iterdir()) == []  # nothing written


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


def _without(field: str):
    return lambda s: {k: v for k, v in s.items() if k != field}


#: summary.json contents that are not a summary, and what the one line must say about each
NOT_A_SUMMARY = {
    "empty": (lambda s: "", "not JSON"),
    "truncated": (lambda s: '{"experiment": ', "not JSON"),
    "null": (lambda s: "null", "not an object"),
    "list": (lambda s: "[1, 2]", "a JSON list"),
    "no experiment": (_without("experiment"), "no 'experiment'"),
    "seconds a string": (lambda s: {**s, "seconds": "12.5"}, "'seconds' is a JSON str"),
    "checks not a list": (lambda s: {**s, "checks": {"a": 1}}, "'checks' is a JSON dict"),
    "a check without its key": (lambda s: {**s, "checks": [{"claim": "x"}]}, "a check is not an object"),
    "manifest mistyped": (lambda s: {**s, "tables": {"results.parquet": {"bytes": "9"}}}, "'tables' manifest"),
}


def _spoil_summary(run: Path, how: str) -> dict:
    before = json.loads((run / "summary.json").read_text())
    bad = NOT_A_SUMMARY[how][0](before)
    (run / "summary.json").write_text(bad if isinstance(bad, str) else json.dumps(bad))
    return before


@pytest.mark.parametrize("how", list(NOT_A_SUMMARY))
def test_report_on_what_is_not_a_summary_is_one_line(sample_env, tmp_path, capsys, ref, how):
    _spoil_summary(ref, how)
    code, out, err = _main(["report", ref], capsys)
    assert code == 4 and out == ""
    one_line(err, str(ref / "summary.json"), NOT_A_SUMMARY[how][1], "re-analyses")
    assert not (ref / "report.html").exists()


@pytest.mark.parametrize("how", ["empty", "truncated", "null", "list", "no experiment", "seconds a string"])
def test_corrupt_summary_is_reanalysed_from_the_chunks(sample_env, tmp_path, capsys, ref, how):
    before = _spoil_summary(ref, how)
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
    run_experiment(EXP, "quick", tmp_path / "all" / "c", workers=1)
    _damage(tmp_path / "all/c/results.parquet", "flipped")
    code, _, err = _main(["report", tmp_path / "all"], capsys)
    assert code == 0 and len(err.strip().splitlines()) == 2  # one warning per run left out
    assert (
        "b/summary.json" in err
        and "c/results.parquet" in err
        and "1 run(s)" in (tmp_path / "all/report.html").read_text()
    )
    (tmp_path / "all/report.html").unlink()
    (tmp_path / "all/a/summary.json").write_text("[]")
    code, _, err = _main(["report", tmp_path / "all"], capsys)  # none left: one line naming each
    assert code == 4
    one_line(err, "nothing to report", "a/summary.json", "b/summary.json", "c/results.parquet")
    assert not (tmp_path / "all/report.html").exists()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_manifest_records_each_table_as_written(sample_env, ref):
    manifest = json.loads((ref / "summary.json").read_text())["tables"]
    assert sorted(manifest) == ["paths.parquet", "results.parquet"]
    for name, rec in manifest.items():
        assert rec == {"bytes": (ref / name).stat().st_size, "sha256": _sha256(ref / name)}


def _damage(f: Path, how: str) -> None:
    data = f.read_bytes()
    if how == "deleted":
        f.unlink()
    else:  # "flipped": one byte in the middle, same size, still reads as Parquet (only the checksum sees it)
        mid = len(data) // 2
        f.write_bytes(
            {
                "truncated": data[: len(data) // 2],
                "garbage": b"x" * 100,
                "empty": b"",
                "flipped": data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :],
            }[how]
        )


DAMAGE = ["truncated", "garbage", "empty", "deleted", "flipped"]


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("table", ["results", "paths"])
def test_a_damaged_table_is_named_and_rebuilt_from_the_chunks(sample_env, tmp_path, capsys, ref, how, table):
    out = tmp_path / "run"
    run_experiment(EXP, "quick", out, {"n_replicas": 40}, workers=1)
    before = json.loads((out / "summary.json").read_text())
    f = out / f"{table}.parquet"
    _damage(f, how)
    code, stdout, err = _main(["report", out], capsys)  # named instead of rendered
    assert code == 4 and stdout == ""
    one_line(err, f"{out} is damaged", str(f), "missing" if how == "deleted" else "recorded", "re-analyses")
    assert not (out / "report.html").exists()
    code, stdout, err = _main(["reproduce", EXP, "--out", out, *SETS, "--workers", 1], capsys)
    assert code == 0 and "0 failed" in stdout
    one_line(err, str(f), "rebuilding the tables from the chunks")
    _tables_equal(out, ref)
    after = json.loads((out / "summary.json").read_text())
    assert after["checks"] == before["checks"] and after["metrics"] == before["metrics"]
    assert after["tables"][f.name] == {"bytes": f.stat().st_size, "sha256": _sha256(f)}
    code, _, err = _main(["reproduce", EXP, "--out", out, *SETS, "--workers", 1], capsys)
    assert code == 0 and err == ""  # intact again: returned as it is
    assert _main(["report", out], capsys)[0] == 0


@pytest.mark.parametrize("how", ["truncated", "deleted"])
def test_a_damaged_table_whose_chunks_are_gone_is_exit_4(sample_env, tmp_path, capsys, ref, how):
    out = tmp_path / "run"
    run_experiment(EXP, "quick", out, {"n_replicas": 40}, workers=1)
    (out / "chunks" / "results" / "r00004.parquet").unlink()
    _damage(out / "results.parquet", how)
    kept = sorted((p.name, p.stat().st_size) for p in out.rglob("*") if p.is_file() and p.name != ".lock")
    code, stdout, err = _main(["reproduce", EXP, "--out", out, *SETS, "--workers", 1], capsys)
    assert code == 4 and stdout == ""
    one_line(err, f"{out} is damaged", str(out / "results.parquet"), "1 of 10", str(out / "summary.json"))
    assert sorted((p.name, p.stat().st_size) for p in out.rglob("*") if p.is_file() and p.name != ".lock") == kept
    (out / "summary.json").unlink()  # what the line says to do: the missing chunk is recomputed
    assert _main(["reproduce", EXP, "--out", out, *SETS, "--workers", 1], capsys)[0] == 0
    _tables_equal(out, ref)


def test_a_run_written_before_the_manifest_loads_and_gets_it(sample_env, tmp_path, capsys, ref):
    s = json.loads((ref / "summary.json").read_text())
    manifest = s.pop("tables")
    (ref / "summary.json").write_text(json.dumps(s))
    assert _main(["report", ref], capsys)[0] == 0  # unverified, readable: rendered
    code, _, err = _main(["reproduce", EXP, "--out", ref, *SETS, "--workers", 1], capsys)
    assert code == 0 and err == ""
    after = json.loads((ref / "summary.json").read_text())
    assert after["tables"] == manifest and {**after, "tables": None} == {**s, "tables": None}
    del after["tables"]  # and an old run whose table does not read is named and rebuilt
    (ref / "summary.json").write_text(json.dumps(after))
    _damage(ref / "paths.parquet", "truncated")
    code, _, err = _main(["reproduce", EXP, "--out", ref, *SETS, "--workers", 1], capsys)
    assert code == 0
    one_line(err, str(ref / "paths.parquet"), "corrupt", "rebuilding")
    assert json.loads((ref / "summary.json").read_text())["tables"] == manifest


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
    argv = [
        "reproduce",
        EXP,
        "--out",
        out,
        "--workers",
        1,
        "--quiet",
        "--set",
        "n_replicas=8",
        "--set",
        "per_chunk=1",
        "--set",
        "sleep=0.4",
    ]
    before = signal.getsignal(signal.SIGTERM)

    def terminate_after_the_first_chunk() -> None:  # the handler is installed by then, however loaded the machine
        deadline = time.time() + 120
        while not list((out / "chunks").glob("results/*.parquet")) and time.time() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_after_the_first_chunk, daemon=True).start()
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
