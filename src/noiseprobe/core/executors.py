"""Executors that run independent chunks: inline, a local process pool (default), or a Ray cluster.

All three call the same pure function on the same arguments, and every random number is derived from
(seed, replica index), so the executor changes only where and when a chunk runs, never its result.
Errors keep their meaning on every executor: a ConfigError, NumericalError or RunDirError raised in a
worker reaches the caller as itself (one line), as with one worker. When the caller is interrupted
(SIGINT, SIGTERM, an error) the workers are ended at once, not after their current chunk.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from noiseprobe.core.errors import ConfigError, NumericalError, RunDirError
from noiseprobe.core.validation import check_int

EXECUTORS = ("local", "ray")
#: errors that are one line for the user, re-raised as themselves when a Ray task raised them
USER_ERRORS = (ConfigError, NumericalError, RunDirError)
#: where the driver's Ray output goes, one file per user (Ray's own session logs: ``<tmp>/ray/session_latest/logs``)
RAY_LOG = Path(tempfile.gettempdir()) / f"noiseprobe-ray-{getattr(os, 'getuid', lambda: 0)()}.log"
#: seconds to wait for a TCP connection to a Ray cluster's address before calling it unreachable
CONNECT_TIMEOUT = 5.0
#: seconds within which ``--address`` must answer as a Ray cluster (TCP connect, then a gRPC call of the
#: cluster's GCS, or of its Ray Client server for ``ray://``) before ``ray.init`` is called at all
RAY_ANSWER_TIMEOUT = 30.0


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ["NUMBA_NUM_THREADS"] = str(threads)


class LocalExecutor:
    """A process pool of ``workers`` processes (forkserver); ``workers == 1`` runs inline."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = check_int("--workers", workers, lo=1, hi=4096)

    def map(self, fn: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> Generator[tuple[int, Any], None, None]:
        """Yield ``(index, fn(*args[index]))`` as each call finishes."""
        if self.workers == 1 or len(args) <= 1:
            for i, a in enumerate(args):
                yield i, fn(*a)
            return
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        ctx = mp.get_context("forkserver")
        pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,))
        futures = {pool.submit(fn, *a): i for i, a in enumerate(args)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield futures[f], f.result()
        except BaseException:
            _terminate(pool)
            raise
        pool.shutdown(wait=True)

    def close(self) -> None:
        """Nothing to release: the pool lives only inside :meth:`map`."""


def _terminate(pool: ProcessPoolExecutor) -> None:
    """End the pool's workers now (SIGTERM, then SIGKILL after 5 s): an interrupted run must not wait for
    the chunks in flight, whose results would be discarded anyway."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        p.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join(1)


def parse_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a Ray address ``[ray://]host:port``; None for ``auto``/``local``; else ConfigError."""
    if address in ("auto", "local"):
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("--address", address, "HOST:PORT (or ray://HOST:PORT, auto) of a running Ray cluster")
    return host, int(port)


def _not_ray(address: str, reason: str) -> ConfigError:
    _ray_logger().error("no Ray cluster at %s: %s", address, reason)
    return ConfigError("--address", address, f"the address of a running Ray cluster ({reason}; Ray's log: {RAY_LOG})")


def _reach(address: str, timeout: float | None = None) -> None:
    """Raise a one-line ConfigError unless ``address`` answers as a Ray cluster within ``timeout`` seconds
    (default :data:`RAY_ANSWER_TIMEOUT`): ``ray.init`` itself retries without limit on a closed port, an
    HTTP server (a dashboard's port, the usual mistake) or a silent listener.

    First a TCP connection (at most :data:`CONNECT_TIMEOUT`), then one gRPC call that only Ray answers,
    ``NodeInfoGcsService/GetClusterId`` (the first call ``ray.init`` makes to the GCS) or, for ``ray://``,
    the Ray Client server's ``ClusterInfo`` ping. Any reply from the service (also a refusal such as
    UNAUTHENTICATED) shows that Ray is there; UNAVAILABLE (the peer does not speak gRPC: an HTTP/1 server),
    UNIMPLEMENTED (another gRPC service) and no reply within the time left are refused. ``ray.init`` connects
    to a loopback host under the node's own IP address: that address is probed too."""
    hp = parse_address(address)
    if hp is None:
        return
    limit = RAY_ANSWER_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + limit
    client = address.startswith("ray://")
    fault = _answers(*hp, client, deadline, limit)
    if fault is None and not client:
        from ray._private.services import resolve_ip_for_localhost

        host = resolve_ip_for_localhost(hp[0])
        if host != hp[0]:
            fault = _answers(host, hp[1], client, deadline, limit)
            if fault is not None:
                fault = f"Ray connects to {hp[0]} as the node's address {host}, and {fault}"
    if fault is not None:
        raise _not_ray(address, fault)


def _answers(host: str, port: int, client: bool, deadline: float, limit: float) -> str | None:
    """Why ``host:port`` does not answer as a Ray GCS (or Ray Client server) before ``deadline``, or None."""
    try:
        socket.create_connection(
            (host, port), timeout=max(0.1, min(CONNECT_TIMEOUT, deadline - time.monotonic()))
        ).close()
    except OSError as exc:
        return f"connecting to {host}:{port}: {'timed out' if isinstance(exc, TimeoutError) else exc.strerror or exc}"
    import importlib

    import grpc

    pb: Any = importlib.import_module(f"ray.core.generated.{'ray_client_pb2' if client else 'gcs_service_pb2'}")
    method, request = (
        ("/ray.rpc.RayletDriver/ClusterInfo", pb.ClusterInfoRequest(type=pb.ClusterInfoType.PING))
        if client
        else ("/ray.rpc.NodeInfoGcsService/GetClusterId", pb.GetClusterIdRequest())
    )
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with grpc.insecure_channel(target) as channel:  # bytes in, bytes out: the reply's content is not needed
        call = channel.unary_unary(method).future(
            request.SerializeToString(), timeout=max(0.1, deadline - time.monotonic())
        )
        try:
            call.result()  # waits in short slices: SIGINT / SIGTERM are not held up
            return None
        except grpc.RpcError as exc:
            code, detail = exc.code(), (exc.details() or "").splitlines()[0] if exc.details() else ""
        finally:
            call.cancel()
    if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED):
        return None  # Ray answered (e.g. UNAUTHENTICATED without its token): ray.init reports what follows
    server = "Ray Client server (default port 10001)" if client else "GCS (default port 6379; `ray status` prints it)"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or "timed out" in detail:  # (gRPC's own 20 s handshake limit)
        waited = min(limit, limit - (deadline - time.monotonic()))
        what = f"{host}:{port} accepts connections but did not answer as a Ray cluster within {waited:.0f} s"
    elif code == grpc.StatusCode.UNIMPLEMENTED:
        what = f"{host}:{port} is a gRPC service that is not Ray's"
    elif "HTTP/2" in detail:  # gRPC's "Failed parsing HTTP/2": an HTTP/1 reply to its preface
        what = f"{host}:{port} answers, but not in gRPC as a Ray cluster does: it looks like an HTTP server"
    elif "refused" in detail:
        return f"connecting to {host}:{port}: Connection refused"
    else:
        what = f"{host}:{port} answers, but not as a Ray cluster ({detail or code.name})"
    return (
        f"{what}; the likely cause is a dashboard (Ray's: port 8265) or other service on that port: give the {server}"
    )


def _ray_logger() -> logging.Logger:
    """Ray's Python loggers, writing to :data:`RAY_LOG` only (never the terminal)."""
    handler = logging.FileHandler(RAY_LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("ray", "noiseprobe.ray"):
        log = logging.getLogger(name)
        for h in list(log.handlers):
            log.removeHandler(h)
            h.close()
        log.addHandler(handler)
        log.propagate = False
    return logging.getLogger("noiseprobe.ray")


@contextmanager
def _output_to_log() -> Iterator[None]:
    """Send this process's stdout/stderr (the file descriptors, where Ray's C++ core prints, and Python's
    streams) to :data:`RAY_LOG`; Ray's loggers write there too, before and after (``ray.init`` resets them)."""
    _ray_logger()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    fd = os.open(RAY_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        with open(RAY_LOG, "a") as log, redirect_stdout(log), redirect_stderr(log):
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)
        _ray_logger()


class RayExecutor:
    """Runs chunks as Ray tasks. ``address`` joins an existing cluster; otherwise a local Ray instance
    bound to the loopback interface is started (and shut down by :meth:`close`). Ray's output goes to
    :data:`RAY_LOG`, never the terminal. An ``address`` that does not answer as a Ray cluster within
    ``timeout`` seconds (default :data:`RAY_ANSWER_TIMEOUT`) is a one-line ConfigError (:func:`_reach`)."""

    def __init__(self, workers: int | None = None, address: str | None = None, timeout: float | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "--executor", "ray", "'local', or 'ray' once the extra is installed: pip install 'noiseprobe[ray]'"
            ) from None
        self.ray = ray
        self.started = False  # Ray initialised by this executor: close() disconnects (and stops a local one)
        if not ray.is_initialized():
            if address:
                _reach(address, timeout)
                try:
                    with _output_to_log():
                        ray.init(address=address, log_to_driver=False, configure_logging=False)
                except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
                    _ray_logger().error("ray.init(address=%r) failed: %s", address, exc)
                    raise ConfigError(
                        "--address",
                        address,
                        f"the address of a running Ray cluster "
                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                        f"Ray's log: {RAY_LOG})",
                    ) from None
                self.started = True  # a driver left connected dies with the cluster (Ray exits the process)
            else:
                n = check_int("--workers", workers, lo=1, hi=4096) if workers is not None else None
                path = os.pathsep.join(p for p in sys.path if p)
                # Ray binds its servers to the node's IP address, and resolves 127.0.0.1 to an address that
                # other hosts reach, unless its cluster mode is off (its default on Windows and macOS):
                # then every server of the instance listens on the loopback interface only (tested).
                from ray._private import ray_constants

                cluster_mode, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
                try:
                    with _output_to_log():
                        ray.init(
                            num_cpus=n,
                            include_dashboard=False,
                            runtime_env={"env_vars": {"PYTHONPATH": path}},
                            log_to_driver=False,
                            configure_logging=False,
                        )
                finally:
                    ray_constants.ENABLE_RAY_CLUSTER = cluster_mode
                self.started = True
        self.workers = workers

    def map(self, fn: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> Generator[tuple[int, Any], None, None]:
        remote = self.ray.remote(num_cpus=1)(fn)
        refs = {remote.remote(*a): i for i, a in enumerate(args)}
        pending = list(refs)
        try:
            while pending:
                done, pending = self.ray.wait(pending, num_returns=1)
                try:
                    value = self.ray.get(done[0])
                except self.ray.exceptions.RayTaskError as exc:
                    if isinstance(exc.cause, USER_ERRORS):  # its one line, as with a local worker
                        raise exc.cause from None
                    raise
                yield refs[done[0]], value
        except BaseException:
            for r in pending:
                self.ray.cancel(r, force=True)
            raise

    def close(self) -> None:
        if self.started:
            with _output_to_log():
                self.ray.shutdown()
            self.started = False


def check_executor(kind: str, workers: int | None = None, address: str | None = None) -> None:
    """Validate executor arguments (ConfigError) without starting anything."""
    if kind not in EXECUTORS:
        raise ConfigError("--executor", kind, "one of " + ", ".join(EXECUTORS))
    if workers is not None:
        check_int("--workers", workers, lo=1, hi=4096)
    if address is not None:
        if kind != "ray":
            raise ConfigError("--address", address, "only with --executor ray")
        parse_address(address)


def make_executor(kind: str, workers: int | None = None, address: str | None = None) -> LocalExecutor | RayExecutor:
    """Build an executor; arguments are validated (ConfigError) before anything starts."""
    check_executor(kind, workers, address)
    if kind == "local":
        return LocalExecutor(workers or 1)
    return RayExecutor(workers, address)
