"""Run directories: atomic writes, chunk files, one process per directory, resume, self-healing.

Layout of a run directory (DESIGN.md, "Run directory")::

    .lock               the OS lock (fcntl) of the process running it; holds that process's PID
    run.json            experiment, preset, config and its hash (written first; identifies the run)
    chunks/<table>/<key>.parquet   one file per finished chunk and table (atomic)
    results.parquet     all chunks of table "results", in chunk order (written at the end)
    <table>.parquet     the same for every extra table
    *.png               figures
    summary.json        written last: its presence means the run is complete; its ``tables`` entry (the
                        manifest) records each table file's size and SHA-256 as written

Every file appears atomically (its bytes written to a temporary name in the same folder, fsync'd, then
renamed), so an interrupted run (even SIGKILL, a full disk or a file system turning read-only) leaves only
complete files and resumes where it stopped. Every OS fault becomes one :class:`RunDirError` naming the
path and the OS reason. Corrupt files heal: a chunk file that does not read is discarded (recomputed), a
summary.json that does not read (or lacks what a summary holds) is re-analysed from the chunks; a table
whose size or checksum differs from the manifest, or that is gone, makes the run unfinished (rebuilt from
its chunks, or a RunDirError when they are gone, :func:`noiseprobe.core.runner.execute`); a corrupt
run.json is never replaced.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from noiseprobe.core.errors import ConfigError, RunDirError


def jsonable(obj: Any) -> Any:
    """Plain JSON types (numpy scalars and arrays converted; non-finite floats kept as strings)."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else str(f)
    return obj


TMP_PREFIX = ".tmp-"
LOCK_NAME = ".lock"


def os_fault(action: str, path: Path | str, exc: OSError) -> RunDirError:
    """One line naming the path and the OS reason of ``exc``."""
    reason = exc.strerror or (errno.errorcode.get(exc.errno or 0) if exc.errno else None) or str(exc)
    return RunDirError(f"cannot {action} {path}: {reason}")


def _write_bytes(path: Path, data: bytes) -> None:
    """Write and fsync ``data`` (the one place a store file's bytes are written)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _rename(src: Path, dst: Path) -> None:
    """Atomically move ``src`` over ``dst`` (the one place a store file appears under its name)."""
    os.replace(src, dst)


def umask() -> int:
    """The process's umask (read from /proc where it can be, without changing it; else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes) -> None:
    """Make ``path`` hold ``data`` atomically; an OS fault raises RunDirError and leaves no temporary file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600: the file gets a normal file's mode
        finally:
            os.close(fd)
    except OSError as exc:
        raise os_fault("write", path, exc) from exc
    tmp_path = Path(tmp)
    try:
        _write_bytes(tmp_path, data)
        _rename(tmp_path, path)
    except OSError as exc:
        _discard(tmp_path)
        raise os_fault("write", path, exc) from exc
    except BaseException:
        _discard(tmp_path)
        raise


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only file system: the next run's clean_tmp removes it


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(jsonable(obj), indent=2, sort_keys=False) + "\n").encode())


def write_parquet(path: Path, df: pd.DataFrame) -> dict[str, Any]:
    """Write ``df`` atomically; return its manifest record (size and SHA-256 of the bytes written)."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    data = buf.getvalue()
    atomic_write(path, data)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; RunDirError naming the file if it cannot be read or is not one."""
    try:
        obj = json.loads(Path(path).read_text())
    except OSError as exc:
        raise os_fault("read", path, exc) from exc
    except ValueError as exc:  # invalid UTF-8 or JSON, truncated
        raise RunDirError(f"{path} is corrupt (not JSON: {exc})") from exc
    if not isinstance(obj, dict):
        raise RunDirError(f"{path} is corrupt (a JSON {type(obj).__name__}, not an object)")
    return obj


#: what reading a damaged Parquet file raises (ArrowInvalid is a ValueError; ArrowIOError an OSError)
_ARROW_ERRORS = (OSError, ValueError, pa.ArrowException)


def _parquet_fault(path: Path, exc: Exception) -> RunDirError:
    if isinstance(exc, OSError) and exc.errno is not None:
        return os_fault("read", path, exc)
    return RunDirError(f"{path} is corrupt ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")


def read_parquet(path: Path) -> pd.DataFrame:
    """The table in ``path``; RunDirError naming the file if it cannot be read or is not Parquet."""
    try:
        return pd.read_parquet(path)
    except _ARROW_ERRORS as exc:
        raise _parquet_fault(path, exc) from exc


#: what every summary.json holds, with its JSON type (what ``reproduce`` prints and ``report`` renders)
SUMMARY_FIELDS: dict[str, tuple[type, ...]] = {
    "experiment": (str,),
    "title": (str,),
    "preset": (str,),
    "seconds": (int, float),
    "config": (dict,),
    "metrics": (dict,),
    "checks": (list,),
}
CHECK_FIELDS = ("key", "claim", "verdict", "measured", "expected", "tolerance")
#: a check as summaries stored it before checks computed their own verdicts
LEGACY_CHECK_FIELDS = ("claim", "measured", "expected", "tolerance", "passed")


def _summary_fault(s: dict[str, Any]) -> str | None:
    """What makes ``s`` not a summary (a missing or mistyped field), or None."""
    for name, types in SUMMARY_FIELDS.items():
        if name not in s:
            return f"no {name!r}"
        if not isinstance(s[name], types) or isinstance(s[name], bool):
            return f"{name!r} is a JSON {type(s[name]).__name__}, not a {'/'.join(t.__name__ for t in types)}"
    for c in s["checks"]:
        if isinstance(c, dict) and "verdict" not in c and all(k in c for k in LEGACY_CHECK_FIELDS):
            if not isinstance(c["claim"], str):  # written before keyed checks: checks.stored_verdicts reads it
                return "a check's claim is not a string"
            continue
        if not (isinstance(c, dict) and all(k in c for k in CHECK_FIELDS)):
            return f"a check is not an object with {', '.join(CHECK_FIELDS)}"
        if not all(isinstance(c[k], str) for k in ("key", "claim", "verdict")):
            return "a check's key, claim or verdict is not a string"
    tables = s.get("tables", {})
    if not (
        isinstance(tables, dict)
        and all(
            isinstance(r, dict) and isinstance(r.get("bytes"), int) and isinstance(r.get("sha256"), str)
            for r in tables.values()
        )
    ):
        return "its 'tables' manifest is not {file: {bytes, sha256}}"
    return None


def read_summary(path: Path) -> dict[str, Any]:
    """The summary in ``path``; RunDirError naming the file if it does not read or lacks a summary's fields."""
    s = read_json(path)
    fault = _summary_fault(s)
    if fault:
        raise RunDirError(f"{path} is corrupt ({fault})")
    return s


def table_fault(path: Path, record: dict[str, Any] | None) -> str | None:
    """What is wrong with the table file ``path`` against its manifest ``record`` (size, SHA-256), or None.
    Without a record (a run written before the manifest) the file is only checked to read as Parquet."""
    try:
        if not path.is_file():
            return f"{path} is missing"
        if record is None:
            pq.read_metadata(path)
            return None
        size = path.stat().st_size
        if size != record["bytes"]:
            return f"{path} is damaged ({size} bytes, {record['bytes']} recorded)"
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except _ARROW_ERRORS as exc:
        return str(_parquet_fault(path, exc))
    if h.hexdigest() != record["sha256"]:
        return f"{path} is damaged (its SHA-256 differs from the recorded one)"
    return None


def config_hash(experiment: str, config: dict[str, Any]) -> str:
    blob = json.dumps({"experiment": experiment, "config": jsonable(config)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class RunDir:
    """One run directory of one experiment and config."""

    def __init__(self, path: Path, warn: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.warn = warn or (lambda msg: None)

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    # -- before anything is written ---------------------------------------------------------------
    def check_claimable(self, experiment: str, config: dict[str, Any]) -> None:
        """Raise (writing nothing) unless this run may use the directory: ConfigError when ``path`` is a
        file, is not writable, or holds other files or another run; RunDirError when run.json is corrupt."""
        p = self.path
        try:  # a parent this process may not enter makes stat() itself fail (EACCES)
            if p.exists() and not p.is_dir():
                raise ConfigError("--out", str(p), "a directory (this is a file)")
            anc = next((a for a in (p, *p.parents) if a.exists()), None)
            run_json = self.run_json.exists()
        except OSError as exc:
            raise ConfigError("--out", str(p), f"a writable location ({exc.strerror or exc})") from None
        if anc is not None and not anc.is_dir():
            raise ConfigError("--out", str(p), f"a path whose parents are directories ({anc} is a file)")
        if anc is not None and not os.access(anc, os.W_OK | os.X_OK):
            raise ConfigError("--out", str(p), f"a writable location ({anc}: {os.strerror(errno.EACCES)})")
        if run_json:
            old = read_json(self.run_json)
            if "hash" not in old:
                raise RunDirError(
                    f"{self.run_json} is corrupt (no config hash); it identifies the run and is "
                    f"never replaced: move it away or choose another --out"
                )
            if old.get("hash") != config_hash(experiment, config):
                raise ConfigError(
                    "--out",
                    str(p),
                    f"a new or empty directory, or one holding this same run; it holds "
                    f"{old.get('experiment')} (preset {old.get('preset')}) with another config",
                )
            return
        if p.is_dir():
            try:
                other = [c for c in p.iterdir() if not c.name.startswith(TMP_PREFIX) and c.name != LOCK_NAME]
            except OSError as exc:
                raise os_fault("read", p, exc) from exc
            if other:
                raise ConfigError("--out", str(p), "a new or empty directory (this one holds other files)")

    # -- one process per directory ----------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive OS lock on the directory (``.lock``, fcntl); a second process gets RunDirError
        naming the PID that holds it. Released when the block ends or the process dies."""
        lock = self.path / LOCK_NAME
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise os_fault("lock", lock, exc) from exc
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise os_fault("lock", lock, exc) from exc
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise RunDirError(
                    f"{self.path} is being run by another process (PID {holder}); wait for it "
                    f"or stop it, then run the same command again"
                ) from None
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError as exc:
                raise os_fault("write", lock, exc) from exc
            yield
        finally:
            os.close(fd)  # releases the lock; the file stays (unlinking it would race with a waiting process)

    # -- under the lock ---------------------------------------------------------------------------
    def claim(self, experiment: str, preset: str, config: dict[str, Any]) -> None:
        """Make ``path`` this run's directory, or check that it already is; never adopt a foreign one."""
        self.check_claimable(experiment, config)
        if not self.run_json.exists():
            write_json(
                self.run_json,
                {"experiment": experiment, "preset": preset, "hash": config_hash(experiment, config), "config": config},
            )

    def unclaim(self, created: bool) -> None:
        """Undo :meth:`claim` of a run that finished no chunk (under the lock): remove run.json and any
        partial chunk files, and the directory itself if this run ``created`` it."""
        try:
            shutil.rmtree(self.path / "chunks", ignore_errors=True)
            self.run_json.unlink(missing_ok=True)
            if created:
                (self.path / LOCK_NAME).unlink(missing_ok=True)
                self.path.rmdir()
        except OSError as exc:
            raise os_fault("remove", self.path, exc) from exc

    def summary(self) -> dict[str, Any] | None:
        """The finished run's summary, or None (absent; or corrupt: warned, to be re-analysed)."""
        if not self.summary_path.exists():
            return None
        try:
            return read_summary(self.summary_path)
        except RunDirError as exc:
            self.warn(f"{exc}; re-analysing from the chunks")
            return None

    def table_faults(self, summary: dict[str, Any], names: tuple[str, ...] = ()) -> list[str]:
        """What is wrong with the finished run's table files: those in the summary's manifest (size and
        SHA-256) and ``<name>.parquet`` for ``names`` (without a manifest entry: readable as Parquet; with
        no manifest at all, as in runs written before it, every ``*.parquet`` here)."""
        manifest: dict[str, Any] = summary.get("tables", {})
        files = {f"{n}.parquet" for n in names} | set(manifest)
        if "tables" not in summary:
            files |= {p.name for p in self.path.glob("*.parquet")}
        return [f for f in (table_fault(self.path / n, manifest.get(n)) for n in sorted(files)) if f]

    def manifest(self) -> dict[str, Any]:
        """Manifest records of the table files as they are now (for a run written before the manifest)."""
        out = {}
        for p in sorted(self.path.glob("*.parquet")):
            try:
                data = p.read_bytes()
            except OSError as exc:
                raise os_fault("read", p, exc) from exc
            out[p.name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        return out

    def chunk_path(self, table: str, key: str) -> Path:
        return self.path / "chunks" / table / f"{key}.parquet"

    def finished_keys(self, tables: tuple[str, ...] = ()) -> set[str]:
        """Keys of chunks whose ``results`` table is on disk (written last of a chunk's tables) and whose
        files read as Parquet; a chunk with a corrupt file is discarded (warned) so it is recomputed."""
        d = self.path / "chunks" / "results"
        keys = {p.stem for p in d.glob("*.parquet") if not p.name.startswith(TMP_PREFIX)} if d.exists() else set()
        good = set()
        for key in sorted(keys):
            files = [f for f in (self.chunk_path(t, key) for t in ("results", *tables)) if f.exists()]
            try:
                for f in files:
                    pq.read_metadata(f)
            except _ARROW_ERRORS as exc:
                self.warn(f"{_parquet_fault(f, exc)}; chunk {key} discarded and recomputed")
                self.discard_chunk(key, tables)
            else:
                good.add(key)
        return good

    def discard_chunk(self, key: str, tables: tuple[str, ...]) -> None:
        """Delete every table file of one chunk (``results`` first, so it no longer counts as finished)."""
        for t in ("results", *tables):
            f = self.chunk_path(t, key)
            try:
                f.unlink(missing_ok=True)
            except OSError as exc:
                raise os_fault("remove", f, exc) from exc

    def write_chunk(self, key: str, tables: dict[str, pd.DataFrame]) -> None:
        """Store one chunk's tables; ``results`` goes last so its presence marks the chunk finished."""
        for name in sorted(tables, key=lambda n: n == "results"):
            write_parquet(self.chunk_path(name, key), tables[name])

    def read_tables(self, keys: list[str], names: tuple[str, ...]) -> dict[str, pd.DataFrame]:
        """Concatenate every table over chunks in the given (deterministic) order. A chunk file that does
        not read is discarded (its chunk is recomputed by the next run) and RunDirError names it."""
        out = {}
        for name in ("results", *names):
            frames = []
            for k in keys:
                f = self.chunk_path(name, k)
                if not f.exists():
                    continue
                try:
                    frames.append(read_parquet(f))
                except RunDirError as exc:
                    self.discard_chunk(k, names)
                    raise RunDirError(
                        f"{exc}; chunk {k} discarded: run the same command again to recompute it"
                    ) from exc
            out[name] = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return out

    def clean_tmp(self) -> None:
        """Remove temporary files left by an interrupted write (only under the lock: never another run's)."""
        if self.path.exists():
            for p in self.path.rglob(TMP_PREFIX + "*"):
                try:
                    p.unlink(missing_ok=True)
                except OSError as exc:
                    raise os_fault("remove", p, exc) from exc
