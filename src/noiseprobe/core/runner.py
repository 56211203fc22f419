"""Run an experiment into a run directory: validate everything (nothing written), lock and claim the
directory, run the missing chunks on an executor (each stored atomically as it finishes), then analyse and
write the summary last.

:func:`prepare` is the validation: the experiment id, the config (typed, bounded), the data the config
names (:meth:`Experiment.check_data`), the executor arguments, the output directory and the up-front
memory estimate (:meth:`Experiment.estimate` × concurrent workers must fit in
:func:`noiseprobe.core.memory.usable_memory`). ``--dry-run`` stops there.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from noiseprobe._version import __version__
from noiseprobe.core import progress as _progress
from noiseprobe.core.checks import headline, is_ok, resolve, stored_verdicts
from noiseprobe.core.config import ExperimentConfig
from noiseprobe.core.errors import ConfigError, RunDirError
from noiseprobe.core.executors import check_executor, make_executor
from noiseprobe.core.experiment import Chunk, Experiment, RunCost
from noiseprobe.core.ids import experiment_path
from noiseprobe.core.memory import fmt_bytes, usable_memory
from noiseprobe.core.progress import progress
from noiseprobe.core.store import RunDir, jsonable, write_json, write_parquet
from noiseprobe.core.validation import check_mapping


def get_experiment(exp_id: str) -> Experiment:
    """The registered experiment ``exp_id`` or a user's ``package.module:Class`` (ConfigError if neither),
    imported by its path (:func:`noiseprobe.core.ids.experiment_path`)."""
    path = experiment_path(exp_id)
    module, _, cls = path.partition(":")
    try:
        obj = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        if path != exp_id:  # a registered experiment that does not import: the build's fault, not the input's
            raise
        raise ConfigError("experiment", exp_id, f"an importable module:Class ({exc})") from None
    if not (isinstance(obj, type) and issubclass(obj, Experiment)):
        raise ConfigError("experiment", exp_id, "a subclass of noiseprobe.core.experiment.Experiment")
    return obj()


def execute_chunk(
    path: str, config: dict[str, Any], key: str, spec: dict[str, Any]
) -> tuple[dict[str, pd.DataFrame], float]:
    """Run one chunk (in any worker process) of the experiment at ``path`` (``package.module:Class``, or a
    registered id); return its tables and its compute seconds."""
    t0 = time.perf_counter()
    exp = get_experiment(path)
    result = exp.measure(exp.parse(config), Chunk(key, spec))
    tables = result if isinstance(result, dict) else {"results": result}
    if "results" not in tables:
        raise RuntimeError(f"{path}: measure returned tables {sorted(tables)} without 'results'")
    return tables, time.perf_counter() - t0


def _versions() -> dict[str, str]:
    import torch

    return {
        "noiseprobe": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays in overrides as the Python values they stand for."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return _plain(value.tolist()) if isinstance(value, np.ndarray) else value.item()
    return value


@dataclass(frozen=True)
class Plan:
    """A validated run: everything :func:`execute` needs, checked before anything is written."""

    exp_id: str
    path: str  # package.module:Class, what the workers import
    exp: Experiment
    preset: str
    config: Any
    config_json: dict[str, Any]
    chunks: list[Chunk]
    out: Path
    executor: str
    workers: int | None
    address: str | None
    estimate: RunCost | None
    concurrent: int  # workers that run at once on this machine (0 on a remote Ray cluster)
    usable: int | None  # bytes they may use

    def describe(self) -> list[str]:
        """What ``--dry-run`` prints: the run, its estimate, and that nothing was written."""
        n = len(self.chunks)
        lines = [
            (
                f"{self.exp_id} ({self.preset}): config valid; {n} chunk{'s' * (n != 1)} on "
                f"{self.executor} executor, {self.concurrent or 'remote'} worker(s) -> {self.out}"
            )
        ]
        est = self.estimate
        if est is None:
            lines.append("estimate: not known for this experiment")
        else:
            mem = f"peak memory {fmt_bytes(est.peak_bytes)} per worker"
            if self.concurrent:
                mem += f" × {self.concurrent} = {fmt_bytes(est.peak_bytes * self.concurrent)}"
            if self.usable is not None:
                mem += f" of {fmt_bytes(self.usable)} usable"
            t = f"; time about {est.seconds:.3g} s" if est.seconds is not None else "; time not known"
            lines.append(f"estimate: {mem}{t}" + (f" (driven by {', '.join(est.drivers)})" if est.drivers else ""))
        lines.append("nothing written (--dry-run)")
        return lines


def _colliding_field(config: dict[str, Any]) -> tuple[str, Any]:
    """The list field (and its value) whose repeated or nearly equal entries give two chunks one key."""
    for name, value in config.items():
        if isinstance(value, list):
            shown = [f"{v:.6g}" if isinstance(v, float) else json.dumps(v) for v in value]
            if len(set(shown)) < len(shown):
                return name, value
    return "config", "a list field"


def _stored(config: Any) -> dict[str, Any]:
    """The config as run.json stores and hashes it (renamed fields under their old names)."""
    return config.stored() if isinstance(config, ExperimentConfig) else dict(config)


def prepare(
    exp_id: str,
    preset: str = "quick",
    out: Path | str | None = None,
    overrides: dict[str, Any] | None = None,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
) -> Plan:
    """Validate a run completely, writing nothing and starting nothing; ConfigError (or RunDirError for
    a corrupt run.json in ``out``) on the first problem. Third-party warnings raised by validation are
    not shown (its verdict is the ConfigError)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = experiment_path(exp_id)
        exp = get_experiment(exp_id)
        config = exp.config(preset, _plain(overrides or {}))
        config_json = config.to_dict() if isinstance(config, ExperimentConfig) else config
        exp.check_data(config)
        chunks = exp.chunks(config)
        sizes = tuple(getattr(config, "size_fields", ())) or ("config",)
        try:
            estimate = exp.estimate(config)
        except (OverflowError, ValueError):  # e.g. a float size so large that a count overflows
            raise ConfigError(
                ", ".join(sizes), {f: config_json.get(f) for f in sizes}, "sizes small enough to run"
            ) from None
    keys = [c.key for c in chunks]
    if len(set(keys)) != len(keys):
        raise ConfigError(
            *_colliding_field(config_json),
            "distinct values (each gives its own chunk; repeated or nearly equal values collide)",
        )
    check_executor(executor, workers, address)
    out = Path(out) if out is not None else Path("runs") / f"{exp_id.replace(':', '-')}-{preset}"
    RunDir(out).check_claimable(exp_id, _stored(config))
    concurrent = 0 if address else min(workers or 1, max(1, len(chunks)))
    usable = usable_memory()
    if estimate is not None and concurrent and usable is not None and estimate.peak_bytes * concurrent > usable:
        drivers = estimate.drivers or tuple(getattr(config, "size_fields", ())) or ("config",)
        values = {d: config_json.get(d) for d in drivers if d in config_json}
        raise ConfigError(
            ", ".join(drivers),
            values or exp_id,
            f"sizes whose estimated peak memory fits: {fmt_bytes(estimate.peak_bytes)} per worker × "
            f"{concurrent} worker(s) > {fmt_bytes(usable)} usable (min of MemAvailable and the "
            f"cgroup limit); lower them or --workers",
        )
    return Plan(
        exp_id,
        path,
        exp,
        preset,
        config,
        config_json,
        chunks,
        out,
        executor,
        workers,
        address,
        estimate,
        concurrent,
        usable,
    )


def run_experiment(
    exp_id: str,
    preset: str = "quick",
    out: Path | str | None = None,
    overrides: dict[str, Any] | None = None,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    quiet: bool = True,
    warn: Callable[[str], None] = _progress.warn,
) -> dict[str, Any]:
    """Reproduce one experiment into ``out`` and return its summary.

    Resumes an interrupted run of the same experiment and config (finished chunks are skipped; corrupt
    chunk files are recomputed, a corrupt summary re-analysed, each with one ``warn`` line); a finished
    run is returned as it is, never overwritten, once its result tables match the manifest in its summary
    (a damaged or missing table is warned and rebuilt from the chunks; RunDirError when they are gone).
    Bad arguments raise ConfigError before anything is written; a directory another process is running,
    or an OS fault, raises RunDirError.
    """
    overrides = check_mapping("overrides", overrides)
    return execute(prepare(exp_id, preset, out, overrides, executor, workers, address), quiet, warn)


def execute(plan: Plan, quiet: bool = True, warn: Callable[[str], None] = _progress.warn) -> dict[str, Any]:
    """Run a :func:`prepare`-d plan under the directory's lock (see :func:`run_experiment`)."""
    exp, out, chunks = plan.exp, plan.out, plan.chunks
    run = RunDir(out, warn)
    pool = make_executor(plan.executor, plan.workers, plan.address)  # Ray starts (or fails) before any write
    created, fresh = not out.exists(), not run.run_json.exists()
    try:
        with run.locked():
            run.claim(plan.exp_id, plan.preset, _stored(plan.config))
            finished = _intact(plan, run)
            if finished is not None:
                return {**finished, "checks": stored_verdicts(finished.get("checks", []))}
            run.clean_tmp()
            t0 = time.perf_counter()
            done = run.finished_keys(exp.tables)
            todo = [c for c in chunks if c.key not in done]
            compute = 0.0
            args = [(plan.path, plan.config_json, c.key, c.spec) for c in todo]
            results, written = pool.map(execute_chunk, args), 0
            try:
                for i, (tables, secs) in progress(results, total=len(args), desc=plan.exp_id, quiet=quiet):
                    run.write_chunk(todo[i].key, tables)
                    compute, written = compute + secs, written + 1
            except ConfigError:
                if fresh and not done and not written:  # bad input found late: leave nothing behind, so
                    run.unclaim(created)  # that the corrected command is not refused
                raise
            finally:
                results.close()  # on any error this ends the workers now (the generator's cleanup)
            pool.close()
            summary = _analyse(plan, run, t0, compute, len(chunks) - len(todo))
    finally:
        pool.close()
    plain: dict[str, Any] = jsonable(summary)
    return plain


def _intact(plan: Plan, run: RunDir) -> dict[str, Any] | None:
    """The summary of a finished run whose tables are intact (a run written before the manifest gets it
    now), else None: not finished, a corrupt summary (warned), or a damaged or missing table (warned; the
    run is re-analysed from its chunks). RunDirError when a table is damaged and chunks are gone."""
    summary = run.summary()
    if summary is None:
        return None
    faults = run.table_faults(summary, ("results", *plan.exp.tables))
    if not faults:
        if "tables" not in summary:
            summary["tables"] = run.manifest()
            write_json(run.summary_path, summary)
        return summary
    done = run.finished_keys(plan.exp.tables)
    gone = sum(c.key not in done for c in plan.chunks)
    if gone:
        raise RunDirError(
            f"{plan.out} is damaged: {faults[0]}, and {gone} of {len(plan.chunks)} of its chunks are gone, so "
            f"it cannot be rebuilt; delete {run.summary_path} and run the same command again to recompute them"
        )
    run.warn(f"{'; '.join(faults)}; rebuilding the tables from the chunks")
    return None


def _analyse(plan: Plan, run: RunDir, t0: float, compute: float, resumed: int) -> dict[str, Any]:
    """Concatenate the chunks, write the tables, evaluate (derive, checks, metrics, plot), then summary.json
    (last) with the tables' manifest."""
    exp, out = plan.exp, plan.out
    tables = run.read_tables([c.key for c in plan.chunks], exp.tables)
    manifest = {f"{name}.parquet": write_parquet(out / f"{name}.parquet", df) for name, df in tables.items()}
    metrics, raw_checks = exp.evaluate(plan.config, tables, out)
    checks = resolve(raw_checks, plan.exp_id)
    verdicts = [c.to_dict() for c in checks]
    summary = {
        "experiment": plan.exp_id,
        "title": exp.title,
        "preset": plan.preset,
        "config": plan.config_json,
        "ok": is_ok(checks),
        "headline": headline(verdicts),
        "seconds": round(time.perf_counter() - t0, 3),
        "chunk_seconds_this_session": round(compute, 3),
        "chunks": {"total": len(plan.chunks), "resumed": resumed},
        "executor": plan.executor,
        "workers": plan.workers,
        "metrics": metrics,
        "checks": verdicts,
        "figures": sorted(p.name for p in out.glob("*.png")),
        "tables": manifest,
        "versions": _versions(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(run.summary_path, summary)
    return summary


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


__all__ = ["Plan", "default_workers", "execute", "execute_chunk", "get_experiment", "prepare", "run_experiment"]
