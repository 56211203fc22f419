"""Run directories: results, resume after SIGKILL, no overwrite, executors agree."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from noiseprobe import experiments
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.executors import RayExecutor
from noiseprobe.core.runner import run_experiment

EXP = "sample_experiment:Walk"


def test_run_directory_contract(sample_env, tmp_path):
    s = run_experiment(EXP, "quick", tmp_path / "run", workers=1)
    run = tmp_path / "run"
    assert {"experiment", "preset", "config", "seconds", "metrics", "checks"} <= set(s)
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["checks"][0].keys() >= {
        "key",
        "claim",
        "kind",
        "measured",
        "expected",
        "tolerance",
        "se",
        "verdict",
        "passed",
    }
    assert len(pd.read_parquet(run / "results.parquet")) == 24
    assert len(pd.read_parquet(run / "paths.parquet")) == 24 * 5
    assert (run / "finals.png").stat().st_size > 1000


def test_finished_run_is_not_overwritten_and_foreign_dirs_refused(sample_env, tmp_path):
    out = tmp_path / "run"
    run_experiment(EXP, "quick", out, workers=1)
    before = (out / "summary.json").read_bytes()
    again = run_experiment(EXP, "quick", out, workers=1)
    assert (out / "summary.json").read_bytes() == before and again["chunks"]["resumed"] == 0
    with pytest.raises(ConfigError, match="--out"):
        run_experiment(EXP, "quick", out, {"n_steps": 51}, workers=1)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--out"):
        run_experiment(EXP, "quick", other, workers=1)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("kill_after_chunks", [1, 3])
def test_sigkill_then_resume_gives_identical_results(sample_env, cli, tmp_path, kill_after_chunks):
    ref = tmp_path / "ref"
    run_experiment(EXP, "quick", ref, {"n_replicas": 40}, workers=1)
    out = tmp_path / "killed"
    cmd = [
        *cli,
        "reproduce",
        EXP,
        "--out",
        str(out),
        "--workers",
        "1",
        "--quiet",
        "--set",
        "n_replicas=40",
        "--set",
        "sleep=0.15",
    ]
    proc = subprocess.Popen(cmd, env=sample_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    chunk_dir = out / "chunks" / "results"
    deadline = time.time() + 60
    while time.time() < deadline:
        if chunk_dir.exists() and len(list(chunk_dir.glob("r*.parquet"))) >= kill_after_chunks:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    finished = len(list(chunk_dir.glob("r*.parquet")))
    assert 1 <= finished < 10
    done = subprocess.run(cmd, env=sample_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chunks"]["resumed"] >= finished
    for table in ("results", "paths"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(out / f"{table}.parquet"), pd.read_parquet(ref / f"{table}.parquet")
        )
    assert not list(out.rglob(".tmp-*"))


def test_chunking_and_workers_do_not_change_results(sample_env, tmp_path):
    a = run_experiment(EXP, "quick", tmp_path / "a", {"per_chunk": 24}, workers=1)
    b = run_experiment(EXP, "quick", tmp_path / "b", {"per_chunk": 5}, workers=2)
    assert a["chunks"]["total"] == 1 and b["chunks"]["total"] == 5
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "a/results.parquet"), pd.read_parquet(tmp_path / "b/results.parquet")
    )


def test_ray_executor_matches_local(sample_env, tmp_path):
    run_experiment(EXP, "quick", tmp_path / "local", workers=1)
    s = run_experiment(EXP, "quick", tmp_path / "ray", executor="ray", workers=2)
    assert s["executor"] == "ray"
    for table in ("results", "paths"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / f"local/{table}.parquet"), pd.read_parquet(tmp_path / f"ray/{table}.parquet")
        )
    import ray

    assert not ray.is_initialized()  # the local instance we started was shut down


def _listening() -> set[str]:
    """Local "ADDRESS:PORT" (hex, as the kernel lists them) of every listening TCP socket on this host."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                found.add(fields[1])
    return found


# 127.0.0.1, ::ffff:127.0.0.1 and ::1 in the byte order of /proc/net/tcp[6]
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_local_ray_instance_listens_on_loopback_only():
    before = _listening()
    ex = RayExecutor(workers=1)
    try:
        assert [v for _, v in ex.map(lambda x: -x, [(-3,)])] == [3]  # a worker is up too
        opened = _listening() - before
    finally:
        ex.close()
    assert opened, "the Ray instance opened no listening socket?"
    assert {a for a in opened if a.split(":")[0] not in LOOPBACK} == set()


def test_core_resolves_ids_through_the_registry_it_is_handed(tmp_path):
    """Core imports nothing above it: importing the runner and the report loads no experiment or monitor
    module; an id is resolved through the registry the package root installed (``core/ids.py``), and the
    workers get the ``module:Class`` path while run.json keeps the id."""
    code = (
        "import sys, noiseprobe.core.runner as r, noiseprobe.core.report\n"
        "above = lambda: sorted({m.split('.')[1] for m in sys.modules if m.split('.')[:2] in "
        "(['noiseprobe', 'experiments'], ['noiseprobe', 'monitor'])})\n"
        "print(above()); plan = r.prepare('nin-table1', out=sys.argv[1]); print(above(), plan.path)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "[]" and "'experiments'" in out[1], out
    module, cls, _ = experiments.REGISTRY["nin-table1"]
    assert out[1].endswith(f"] noiseprobe.experiments.{module}:{cls}"), out
    assert not (tmp_path / "run").exists()
    from noiseprobe.core.ids import experiment_path

    assert experiment_path("sample_experiment:Walk") == "sample_experiment:Walk"
    with pytest.raises(ConfigError, match="see `noiseprobe list`"):
        experiment_path("no-such-id")
