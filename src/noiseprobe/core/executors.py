"""Executors that run independent chunks: inline, a local process pool (default), or a Ray cluster.

All three call the same pure function on the same arguments, and every random number is derived from
(seed, replica index), so the executor changes only where and when a chunk runs, never its result.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_int

EXECUTORS = ("local", "ray")


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ["NUMBA_NUM_THREADS"] = str(threads)


class LocalExecutor:
    """A process pool of ``workers`` processes (forkserver); ``workers == 1`` runs inline."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = check_int("--workers", workers, lo=1, hi=4096)

    def map(self, fn: Callable[..., Any], args: Sequence[tuple]) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, fn(*args[index]))`` as each call finishes."""
        if self.workers == 1 or len(args) <= 1:
            for i, a in enumerate(args):
                yield i, fn(*a)
            return
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        ctx = mp.get_context("forkserver")
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(fn, *a): i for i, a in enumerate(args)}
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        yield futures[f], f.result()
            except BaseException:
                for f in pending:
                    f.cancel()
                raise

    def close(self) -> None:
        """Nothing to release: the pool lives only inside :meth:`map`."""


class RayExecutor:
    """Runs chunks as Ray tasks. ``address`` joins an existing cluster; otherwise a local Ray instance
    bound to the loopback interface is started (and shut down by :meth:`close`)."""

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor", "ray", "'local', or 'ray' once the extra is installed: "
                              "pip install 'noiseprobe[ray]'") from None
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            if address:
                try:
                    ray.init(address=address, log_to_driver=False)
                except (ConnectionError, ValueError, RuntimeError) as exc:
                    raise ConfigError("--address", address, f"the address of a running Ray cluster ({exc})") from None
            else:
                n = check_int("--workers", workers, lo=1, hi=4096) if workers is not None else None
                path = os.pathsep.join(p for p in sys.path if p)
                # Ray binds its servers to the node's IP address, and resolves 127.0.0.1 to an address that
                # other hosts reach, unless its cluster mode is off (its default on Windows and macOS):
                # then every server of the instance listens on the loopback interface only (tested).
                from ray._private import ray_constants
                cluster_mode, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
                try:
                    ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False,
                             runtime_env={"env_vars": {"PYTHONPATH": path}})
                finally:
                    ray_constants.ENABLE_RAY_CLUSTER = cluster_mode
                self.started = True
        self.workers = workers

    def map(self, fn: Callable[..., Any], args: Sequence[tuple]) -> Iterator[tuple[int, Any]]:
        remote = self.ray.remote(num_cpus=1)(fn)
        refs = {remote.remote(*a): i for i, a in enumerate(args)}
        pending = list(refs)
        try:
            while pending:
                done, pending = self.ray.wait(pending, num_returns=1)
                yield refs[done[0]], self.ray.get(done[0])
        except BaseException:
            for r in pending:
                self.ray.cancel(r, force=True)
            raise

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False


def make_executor(kind: str, workers: int | None = None, address: str | None = None) -> LocalExecutor | RayExecutor:
    """Build an executor; arguments are validated (ConfigError) before anything starts."""
    if kind not in EXECUTORS:
        raise ConfigError("--executor", kind, "one of " + ", ".join(EXECUTORS))
    if workers is not None:
        check_int("--workers", workers, lo=1, hi=4096)
    if address is not None and kind != "ray":
        raise ConfigError("--address", address, "only with --executor ray")
    if kind == "local":
        return LocalExecutor(workers or 1)
    return RayExecutor(workers, address)
