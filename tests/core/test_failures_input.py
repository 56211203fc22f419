"""Bad input and errors in workers: one line, its exit code, nothing written (docs/failures.md)."""

from __future__ import annotations

import http.server
import json
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from noiseprobe.cli import main
from noiseprobe.core import executors, runner
from noiseprobe.core.errors import ConfigError, NumericalError, RunDirError
from noiseprobe.core.runner import run_experiment

EXP, FAULTY = "sample_experiment:Walk", "sample_experiment:Faulty"


def _main(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_line(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "exc",
    [
        ConfigError("n_train", 100000, "at most 3000"),
        NumericalError("overflow"),
        RunDirError("cannot write /x: No space left on device"),
    ],
)
def test_user_errors_survive_pickling(exc):
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and str(back) == str(exc)


@pytest.mark.parametrize(
    "workers,error,code,needle",
    [
        (1, "config", 2, "n_train"),
        (1, "numerical", 3, "overflowed"),
        (2, "config", 2, "n_train"),
        pytest.param(2, "numerical", 3, "overflowed", marks=pytest.mark.slow),
    ],
)
def test_worker_errors_keep_their_meaning(sample_env, tmp_path, capsys, workers, error, code, needle):
    flag = tmp_path / "flag"
    flag.touch()
    out = tmp_path / "run"
    got, _, err = _main(
        [
            "reproduce",
            FAULTY,
            "--out",
            out,
            "--workers",
            workers,
            "--quiet",
            "--set",
            f"error={error}",
            "--set",
            f"flag={flag}",
        ],
        capsys,
    )
    assert got == code
    one_line(err, needle)


def test_bad_input_found_late_leaves_nothing_so_the_corrected_command_runs(sample_env, tmp_path, capsys):
    flag = tmp_path / "flag"
    flag.touch()
    out = tmp_path / "run"
    argv = [
        "reproduce",
        FAULTY,
        "--out",
        out,
        "--workers",
        1,
        "--quiet",
        "--set",
        "error=config",
        "--set",
        "fail_key=r00000",
    ]
    code, _, err = _main([*argv, "--set", f"flag={flag}"], capsys)  # the first chunk refuses its input
    assert code == 2 and not out.exists()
    one_line(err, "n_train")
    assert _main([*argv, "--set", "flag="], capsys)[0] == 0  # the corrected command


@pytest.mark.slow
def test_worker_errors_keep_their_meaning_under_ray(sample_env, tmp_path, capsys):
    flag = tmp_path / "flag"
    flag.touch()
    got, _, err = _main(
        [
            "reproduce",
            FAULTY,
            "--out",
            tmp_path / "run",
            "--executor",
            "ray",
            "--workers",
            2,
            "--set",
            "error=config",
            "--set",
            f"flag={flag}",
        ],
        capsys,
    )
    assert got == 2
    one_line(err, "n_train")


def test_dry_run_validates_prints_the_estimate_and_writes_nothing(sample_env, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = _main(
        ["reproduce", EXP, "--out", out, "--dry-run", "--workers", 3, "--set", "n_steps=1000"], capsys
    )
    assert code == 0 and err == ""
    # 2 arrays of per_chunk (4) x n_steps float64 + 4 KiB per replica = 80384 B per worker, 3 workers
    assert "78.5 KiB per worker × 3 = 235.5 KiB" in stdout and "per_chunk, n_steps" in stdout
    assert "nothing written" in stdout and not out.exists()


def test_memory_estimate_refuses_what_cannot_fit(sample_env, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = _main(
        [
            "reproduce",
            EXP,
            "--out",
            out,
            "--set",
            "per_chunk=1000000",
            "--set",
            "n_replicas=1000000",
            "--set",
            "n_steps=1000000",
            "--workers",
            1,
        ],
        capsys,
    )
    assert code == 2
    one_line(err, "per_chunk, n_steps", "usable")
    assert not out.exists()


def test_memory_estimate_counts_the_workers(sample_env, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "usable_memory", lambda: 200 * 1024)  # 200 KiB; 78.5 KiB per worker
    out = tmp_path / "run"
    argv = ["reproduce", EXP, "--out", out, "--set", "n_steps=1000", "--dry-run"]
    assert _main([*argv, "--workers", 2], capsys)[0] == 0
    code, _, err = _main([*argv, "--workers", 3], capsys)
    assert code == 2
    one_line(err, "78.5 KiB per worker × 3", "200.0 KiB usable")
    assert not out.exists()


@pytest.mark.parametrize(
    "argv,field",
    [
        (["--set", "seed=-1"], "seed"),
        (["--set", "seed=1e30"], "seed"),
        (["--set", "error=data", "--set", "flag=FLAG"], "n_train"),  # the data hook, before the claim
    ],
)
def test_validated_before_the_directory_is_claimed(sample_env, tmp_path, capsys, argv, field):
    flag = tmp_path / "flag"
    flag.touch()
    out = tmp_path / "run"
    code, _, err = _main(["reproduce", FAULTY, "--out", out, *[a.replace("FLAG", str(flag)) for a in argv]], capsys)
    assert code == 2
    one_line(err, field)
    assert not out.exists()


@pytest.mark.parametrize("exp_id", [":Good", "Good:", "a..b:C", "sample_experiment:", "x:1y"])
def test_malformed_experiment_ids_are_one_line(sample_env, tmp_path, capsys, exp_id):
    code, _, err = _main(["reproduce", exp_id, "--out", tmp_path / "run"], capsys)
    assert code == 2
    one_line(err, "experiment")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["user", "analyse"])
def test_a_users_experiment_keeps_its_traceback_and_stays_resumable(sample_env, tmp_path, where):
    ref = run_experiment(EXP, "quick", tmp_path / "ref", workers=1)
    flag = tmp_path / "flag"
    flag.touch()
    out = tmp_path / "run"
    args = (FAULTY, "quick", out, {"error": where, "flag": str(flag)})
    with pytest.raises(RuntimeError, match="a bug in the user's own"):  # their code: their traceback
        run_experiment(*args, workers=1)
    assert (out / "run.json").exists() and not (out / "summary.json").exists()
    flag.unlink()
    s = run_experiment(*args, workers=1)
    assert s["chunks"]["resumed"] == (1 if where == "user" else 6)
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "results.parquet"), pd.read_parquet(tmp_path / "ref/results.parquet")
    )
    assert s["metrics"] == ref["metrics"]


def test_run_experiment_accepts_numpy_overrides(sample_env, tmp_path):
    a = run_experiment(
        EXP,
        "quick",
        tmp_path / "a",
        {"n_steps": np.int64(20), "step_sd": np.float32(0.5), "seed": np.uint8(3)},
        workers=np.int64(1),
    )
    b = run_experiment(EXP, "quick", tmp_path / "b", {"n_steps": 20, "step_sd": 0.5, "seed": 3}, workers=1)
    assert a["config"] == b["config"] and type(a["config"]["n_steps"]) is int
    # the same run: the second call with plain values finds the first one's directory its own
    assert (
        run_experiment(EXP, "quick", tmp_path / "a", {"n_steps": 20, "step_sd": 0.5, "seed": 3})["chunks"]["resumed"]
        == 0
    )


def test_closed_ray_port_fails_fast_with_one_line(sample_env, tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.time()
    code, _, err = _main(
        ["reproduce", EXP, "--out", tmp_path / "run", "--executor", "ray", "--address", f"127.0.0.1:{port}"], capsys
    )
    assert code == 2 and time.time() - t0 < 30
    one_line(err, "--address", "refused", "Ray's log:")
    assert not (tmp_path / "run").exists()


class _QuietHTTP(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # what a dashboard answers
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"<html>dashboard</html>")

    def log_message(self, *args) -> None:
        pass


@contextmanager
def not_ray(kind: str) -> Iterator[int]:
    """A port on 127.0.0.1 where something that is not Ray listens: an HTTP server (a dashboard) or a
    silent TCP listener (the kernel completes the handshake from the backlog; nothing is ever sent).
    In-process, stopped when the block ends."""
    if kind == "http":
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QuietHTTP)
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        thread.start()
        try:
            yield srv.server_address[1]
        finally:
            srv.shutdown()
            srv.server_close()
            thread.join(5)
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(64)
            yield s.getsockname()[1]


def _reproduce_on(address: str, out: Path, capsys) -> tuple[int, str, float]:
    t0 = time.monotonic()
    code, _, err = _main(["reproduce", EXP, "--out", out, "--executor", "ray", "--address", address], capsys)
    return code, err, time.monotonic() - t0


@pytest.mark.parametrize("kind", ["http", "silent"])
def test_an_open_port_that_is_not_ray_is_one_line_within_the_limit(sample_env, tmp_path, capsys, monkeypatch, kind):
    monkeypatch.setattr(executors, "RAY_ANSWER_TIMEOUT", 3.0)  # the documented limit, shortened for the test
    with not_ray(kind) as port:
        code, err, secs = _reproduce_on(f"127.0.0.1:{port}", tmp_path / "run", capsys)
    assert code == 2
    line = one_line(err, "--address", f"127.0.0.1:{port}", "dashboard", "GCS", "Ray's log:")
    assert ("HTTP server" if kind == "http" else "within 3 s") in line
    # an HTTP server is recognised at once; a silent listener is given the whole limit, not more
    assert secs < 15 if kind == "http" else 3.0 <= secs < 15
    assert not (tmp_path / "run").exists()


def test_the_ray_answer_limit_is_30_s_by_default():
    import inspect

    assert executors.RAY_ANSWER_TIMEOUT == 30.0
    assert inspect.signature(executors.RayExecutor).parameters["timeout"].default is None  # = the constant
    assert inspect.signature(executors.make_executor).parameters.keys() == {"kind", "workers", "address"}


@pytest.mark.slow
def test_a_silent_listener_is_refused_after_30_s_by_default(sample_env, tmp_path, capsys):
    with not_ray("silent") as port:
        code, err, secs = _reproduce_on(f"127.0.0.1:{port}", tmp_path / "run", capsys)
    # gRPC gives up a handshake after 20 s; either way the line comes within the 30 s (+ the imports)
    assert code == 2 and 15 <= secs < 35, secs
    one_line(err, f"127.0.0.1:{port}", "did not answer as a Ray cluster within")


HEAD = """
import sys, time, ray
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
print(ray.get_runtime_context().gcs_address, flush=True)
time.sleep(300)
"""


@pytest.mark.slow
def test_a_real_ray_cluster_passes_the_probe_and_runs(sample_env, tmp_path, capsys, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the head's token would live only in its process
    head = subprocess.Popen(
        [sys.executable, "-c", HEAD],
        env={**sample_env, "RAY_AUTH_MODE": "disabled"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        address = head.stdout.readline().strip()
        assert ":" in address, address
        t0 = time.monotonic()
        executors._reach(address, timeout=10)  # answers as a Ray cluster
        assert time.monotonic() - t0 < 10
        code, out, err = _main(
            ["reproduce", EXP, "--out", tmp_path / "run", "--executor", "ray", "--address", address, "--quiet"], capsys
        )
        assert code == 0, err
        import ray

        assert not ray.is_initialized()  # the driver disconnected: the cluster's end cannot end this process
        ref = run_experiment(EXP, "quick", tmp_path / "ref", workers=1)
        assert json.loads((tmp_path / "run/summary.json").read_text())["metrics"] == ref["metrics"]
    finally:
        head.terminate()
        head.wait(60)


@pytest.mark.parametrize("address", ["nonsense", "host:", ":6379", "host:99999"])
def test_malformed_ray_address(sample_env, tmp_path, capsys, address):
    code, _, err = _main(
        ["reproduce", EXP, "--out", tmp_path / "run", "--executor", "ray", "--address", address, "--dry-run"], capsys
    )
    assert code == 2
    one_line(err, "--address")


@pytest.mark.slow
def test_unreachable_ray_host_fails_within_30_s(sample_env, tmp_path, capsys):
    t0 = time.time()
    code, _, err = _main(
        ["reproduce", EXP, "--out", tmp_path / "run", "--executor", "ray", "--address", "10.255.255.1:6379"], capsys
    )  # a non-routed address
    assert code == 2 and time.time() - t0 < 30
    one_line(err, "--address", "Ray's log:")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_ray_writes_nothing_on_the_terminal(sample_env, cli, tmp_path):
    import subprocess

    done = subprocess.run(
        [*cli, "reproduce", EXP, "--out", str(tmp_path / "run"), "--executor", "ray", "--workers", "2", "--quiet"],
        env=sample_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith("sample_experiment:Walk (quick)")


def test_repeated_list_values_are_one_line_naming_the_field(tmp_path, capsys):
    from noiseprobe.cli import main

    out = tmp_path / "run"
    code = main(["reproduce", "mbn-fig6", "--dry-run", "--out", str(out), "--set", "alphas=[0.5, 0.5]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "alphas" in err[0] and "distinct" in err[0] and not out.exists()
    assert main(["reproduce", "mbn-fig6", "--dry-run", "--out", str(out), "--set", "alphas=[1e300]"]) == 2


@pytest.mark.parametrize(
    "argv,field,allowed",
    [
        (
            ["mbn-fig6", "--set", "batch_size=100000"],
            "batch_size",
            "<= the largest data set, N = round(max(alphas)·D) = 160",
        ),
        (
            ["nin-fig2-top", "--set", "traj_points=100000", "--set", "steps=100000000", "--workers", "1"],
            "traj_points",
            "<= 10000",
        ),
    ],
)
def test_runs_far_larger_than_their_data_or_figure_are_refused_at_once(tmp_path, capsys, argv, field, allowed):
    """Issue 19's two runs that ran on for minutes: one line naming the field, exit 2, nothing written."""
    out = tmp_path / "run"
    t0 = time.monotonic()
    code, stdout, err = _main(["reproduce", *argv, "--out", out], capsys)
    assert code == 2 and stdout == "" and time.monotonic() - t0 < 10
    one_line(err, f"{field} = ", allowed)
    assert not out.exists()


def test_the_bounds_admit_what_they_should(tmp_path, capsys):
    """The largest data set of mbn-fig6's quick preset has N = 8·20 = 160 samples; traj_points up to 10⁴."""
    out = tmp_path / "run"
    assert _main(["reproduce", "mbn-fig6", "--set", "batch_size=160", "--out", out, "--dry-run"], capsys)[0] == 0
    assert _main(["reproduce", "mbn-fig6", "--set", "batch_size=161", "--out", out, "--dry-run"], capsys)[0] == 2
    argv = ["reproduce", "nin-fig2-top", "--set", "steps=100000000", "--out", out, "--dry-run"]
    assert _main([*argv, "--set", "traj_points=10000"], capsys)[0] == 0
    assert not out.exists()
