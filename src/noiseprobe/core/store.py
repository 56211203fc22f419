"""Run directories: atomic writes, chunk files, resume.

Layout of a run directory (DESIGN.md, "Run directory")::

    run.json            experiment, preset, config and its hash (written first; identifies the run)
    chunks/<table>/<key>.parquet   one file per finished chunk and table (atomic)
    results.parquet     all chunks of table "results", in chunk order (written at the end)
    <table>.parquet     the same for every extra table
    *.png               figures
    summary.json        written last: its presence means the run is complete

Every file appears atomically (written to a temporary name in the same folder, fsync'd, then renamed), so
an interrupted run (even SIGKILL) leaves only complete files and resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.experiment import jsonable

TMP_PREFIX = ".tmp-"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then atomically rename the temporary file to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(jsonable(obj), indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda p: p.write_text(text))


def write_parquet(path: Path, df: pd.DataFrame) -> None:
    atomic_write(path, lambda p: df.to_parquet(p, index=False))


def config_hash(experiment: str, config: dict[str, Any]) -> str:
    blob = json.dumps({"experiment": experiment, "config": jsonable(config)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class RunDir:
    """One run directory of one experiment and config."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    def is_complete(self) -> bool:
        return self.summary_path.exists()

    def claim(self, experiment: str, preset: str, config: dict[str, Any]) -> None:
        """Make ``path`` this run's directory, or check that it already is; never adopt a foreign one.

        Raises ConfigError (nothing written) when the directory holds other files or another run.
        """
        h = config_hash(experiment, config)
        run_json = self.path / "run.json"
        if run_json.exists():
            old = json.loads(run_json.read_text())
            if old.get("hash") != h:
                raise ConfigError("--out", str(self.path),
                                  f"a new or empty directory, or one holding this same run; it holds "
                                  f"{old.get('experiment')} (preset {old.get('preset')}) with another config")
            return
        if self.path.exists() and any(p for p in self.path.iterdir() if not p.name.startswith(TMP_PREFIX)):
            raise ConfigError("--out", str(self.path), "a new or empty directory (this one holds other files)")
        write_json(run_json, {"experiment": experiment, "preset": preset, "hash": h, "config": config})

    def chunk_path(self, table: str, key: str) -> Path:
        return self.path / "chunks" / table / f"{key}.parquet"

    def finished_keys(self) -> set[str]:
        """Keys of chunks whose ``results`` table is on disk (written last of a chunk's tables)."""
        d = self.path / "chunks" / "results"
        return {p.stem for p in d.glob("*.parquet") if not p.name.startswith(TMP_PREFIX)} if d.exists() else set()

    def write_chunk(self, key: str, tables: dict[str, pd.DataFrame]) -> None:
        """Store one chunk's tables; ``results`` goes last so its presence marks the chunk finished."""
        for name in sorted(tables, key=lambda n: n == "results"):
            write_parquet(self.chunk_path(name, key), tables[name])

    def read_tables(self, keys: list[str], names: tuple[str, ...]) -> dict[str, pd.DataFrame]:
        """Concatenate every table over chunks in the given (deterministic) order."""
        out = {}
        for name in ("results", *names):
            frames = [pd.read_parquet(self.chunk_path(name, k)) for k in keys if self.chunk_path(name, k).exists()]
            out[name] = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return out

    def clean_tmp(self) -> None:
        """Remove temporary files left by an interrupted write."""
        if self.path.exists():
            for p in self.path.rglob(TMP_PREFIX + "*"):
                p.unlink(missing_ok=True)
