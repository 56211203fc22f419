"""Run an experiment into a run directory: validate, claim the directory, run the missing chunks on an
executor (each stored atomically as it finishes), then analyse and write the summary last."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from noiseprobe import __version__
from noiseprobe.core.checks import Check, headline, is_ok, resolve
from noiseprobe.core.config import ExperimentConfig
from noiseprobe.core.executors import make_executor
from noiseprobe.core.experiment import Chunk, Experiment, jsonable
from noiseprobe.core.progress import progress
from noiseprobe.core.store import RunDir, write_json, write_parquet


def execute_chunk(exp_id: str, config: dict[str, Any], key: str, spec: dict[str, Any]) -> tuple[dict[str, pd.DataFrame], float]:
    """Run one chunk (in any worker process); return its tables and its compute seconds."""
    from noiseprobe import experiments

    t0 = time.perf_counter()
    exp = experiments.get(exp_id)
    result = exp.run_chunk(exp.parse(config), Chunk(key, spec))
    tables = result if isinstance(result, dict) else {"results": result}
    if "results" not in tables:
        raise RuntimeError(f"{exp_id}: run_chunk returned tables {sorted(tables)} without 'results'")
    return tables, time.perf_counter() - t0


def _versions() -> dict[str, str]:
    import torch

    return {"noiseprobe": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "pandas": pd.__version__, "torch": torch.__version__, "platform": platform.platform()}


def run_experiment(exp_id: str, preset: str = "quick", out: Path | str | None = None,
                   overrides: dict[str, Any] | None = None, executor: str = "local",
                   workers: int | None = None, address: str | None = None, quiet: bool = True) -> dict[str, Any]:
    """Reproduce one experiment into ``out`` and return its summary.

    Resumes an interrupted run of the same experiment and config (finished chunks are skipped); a
    finished run is returned as it is, never overwritten. Bad arguments raise ConfigError before
    anything is written.
    """
    from noiseprobe import experiments

    exp: Experiment = experiments.get(exp_id)
    config = exp.config(preset, overrides)
    config_json = config.to_dict() if isinstance(config, ExperimentConfig) else config
    chunks = exp.chunks(config)
    keys = [c.key for c in chunks]
    if len(set(keys)) != len(keys):
        raise RuntimeError(f"{exp_id}: chunk keys are not unique")
    out = Path(out) if out is not None else Path("runs") / f"{exp_id}-{preset}"
    run = RunDir(out)
    pool = make_executor(executor, workers, address)  # validated before the directory is touched
    try:
        run.claim(exp_id, preset, config_json)
        if run.is_complete():
            import json

            return json.loads(run.summary_path.read_text())
        run.clean_tmp()
        t0 = time.perf_counter()
        done = run.finished_keys()
        todo = [c for c in chunks if c.key not in done]
        compute = 0.0
        args = [(exp_id, config_json, c.key, c.spec) for c in todo]
        for i, (tables, secs) in progress(pool.map(execute_chunk, args), total=len(args),
                                          desc=exp_id, quiet=quiet):
            run.write_chunk(todo[i].key, tables)
            compute += secs
    finally:
        pool.close()
    tables = run.read_tables(keys, exp.tables)
    for name, df in tables.items():
        write_parquet(out / f"{name}.parquet", df)
    metrics, raw_checks = exp.analyse(config, tables, out)
    checks = resolve([c if isinstance(c, Check) else c.upgrade() for c in raw_checks], exp_id)
    verdicts = [c.to_dict() for c in checks]
    summary = {
        "experiment": exp_id, "title": exp.title, "preset": preset, "config": config_json,
        "ok": is_ok(checks), "headline": headline(verdicts),
        "seconds": round(time.perf_counter() - t0, 3), "chunk_seconds_this_session": round(compute, 3),
        "chunks": {"total": len(chunks), "resumed": len(chunks) - len(todo)},
        "executor": executor, "workers": workers, "metrics": metrics,
        "checks": verdicts,
        "figures": sorted(p.name for p in out.glob("*.png")),
        "versions": _versions(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(run.summary_path, summary)
    return jsonable(summary)


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


__all__ = ["run_experiment", "execute_chunk", "default_workers"]
