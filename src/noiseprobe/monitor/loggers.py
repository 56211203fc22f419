"""Where the monitor's measurements go: CSV and Parquet always (with a log directory), TensorBoard,
MLflow and Weights & Biases as extras. Each logger takes one row (a dict of step, values and status) per
measurement, in O(1) time per row (except the rare row that brings a new column: the CSV is then
rewritten once with the wider header, the Parquet file once with the wider schema).

What a crash keeps: ``monitor.csv`` has every row as soon as it is measured (each row is appended and
the file closed); ``monitor.parquet`` is written as row groups of up to ``PARQUET_ROWS`` rows and is a
readable file once the monitor is closed (``mon.close()``, the callbacks' end of training, or interpreter
exit) -- after a crash read the CSV (``noiseprobe report`` does). Files honour the umask like any file.
"""

from __future__ import annotations

import csv
import math
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from noiseprobe.core.errors import ConfigError

EXTRAS = ("tensorboard", "mlflow", "wandb")
#: rows per Parquet row group (the rows a crash loses from monitor.parquet, never from monitor.csv)
PARQUET_ROWS = 64


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    """The finite float values of a row, without the step."""
    return {k: v for k, v in row.items() if k != "step" and isinstance(v, float) and math.isfinite(v)}


class Logger:
    def log(self, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release (default: nothing to do)."""


class CsvLogger(Logger):
    """``monitor.csv``: one appended line per measurement, readable while training runs."""

    def __init__(self, log_dir: Path) -> None:
        self.path = log_dir / "monitor.csv"
        self.columns: list[str] | None = None

    def log(self, row: dict[str, Any]) -> None:
        new = [] if self.columns is None else [c for c in row if c not in self.columns]
        if self.columns is None or new:
            old = pd.read_csv(self.path) if self.columns is not None else pd.DataFrame()
            self.columns = (self.columns or []) + (new or list(row))
            pd.concat([old, pd.DataFrame([row])], ignore_index=True)[self.columns].to_csv(self.path, index=False)
            return
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow([row.get(c, "") for c in self.columns])


class _ParquetSink:
    """The open ParquetWriter of one file and the rows not yet written (closed at exit if not before)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: pq.ParquetWriter | None = None
        self.buffer: list[dict[str, Any]] = []

    def flush(self) -> None:
        if not self.buffer:
            return
        table = pa.Table.from_pandas(pd.DataFrame(self.buffer), preserve_index=False)
        self.buffer = []
        if self.writer is not None:
            schema = self.writer.schema
            if set(table.column_names) <= set(schema.names):
                missing = [n for n in schema.names if n not in table.column_names]
                for n in missing:
                    table = table.append_column(schema.field(n), pa.nulls(len(table), schema.field(n).type))
                try:
                    self.writer.write_table(table.select(schema.names).cast(schema))
                    return
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                    pass
            # a new column or type: rewrite once with the wider schema
            self.writer.close()
            old = pq.read_table(self.path).to_pandas()
            table = pa.Table.from_pandas(pd.concat([old, table.to_pandas()], ignore_index=True), preserve_index=False)
        self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ParquetLogger(Logger):
    """``monitor.parquet`` (the table ``noiseprobe report`` reads): row groups appended with a pyarrow
    ParquetWriter every ``PARQUET_ROWS`` rows; complete once closed."""

    def __init__(self, log_dir: Path) -> None:
        self.sink = _ParquetSink(log_dir / "monitor.parquet")
        self._finalizer = weakref.finalize(self, self.sink.close)

    def log(self, row: dict[str, Any]) -> None:
        self.sink.buffer.append(row)
        if len(self.sink.buffer) >= PARQUET_ROWS:
            self.sink.flush()

    def close(self) -> None:
        self.sink.close()


class TensorBoardLogger(Logger):
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        for k, v in _scalars(row).items():
            self.writer.add_scalar(f"noiseprobe/{k}", v, row["step"])

    def close(self) -> None:
        self.writer.close()


class MlflowLogger(Logger):
    def __init__(self) -> None:
        import mlflow

        self.mlflow = mlflow

    def log(self, row: dict[str, Any]) -> None:
        self.mlflow.log_metrics({f"noiseprobe.{k}": v for k, v in _scalars(row).items()}, step=row["step"])


class WandbLogger(Logger):
    """Into the active W&B run (``wandb.init`` called by the user), else a run of project "noiseprobe"
    started here (in ``log_dir`` if given) and finished at close. Values are ``noiseprobe/<column>``
    against their own step axis ``noiseprobe/step`` (the user's own ``wandb.log`` steps are untouched)."""

    def __init__(self, log_dir: Path | None) -> None:
        import wandb

        active = wandb.run
        self.own = active is None
        self.run = wandb.init(project="noiseprobe", dir=str(log_dir) if log_dir else None) if active is None else active
        self.run.define_metric("noiseprobe/step")
        self.run.define_metric("noiseprobe/*", step_metric="noiseprobe/step")

    def log(self, row: dict[str, Any]) -> None:
        values = {f"noiseprobe/{k}": v for k, v in _scalars(row).items()}
        self.run.log({"noiseprobe/step": row["step"], **values})

    def close(self) -> None:
        if self.own:
            self.run.finish()


def make_loggers(log_dir: str | Path | None, extras: Sequence[str]) -> list[Logger]:
    """CSV + Parquet in ``log_dir`` (if given) and the named extras."""
    bad = [e for e in extras if e not in EXTRAS]
    if bad or isinstance(extras, str):
        raise ConfigError("loggers", extras, "a list of names from " + ", ".join(EXTRAS))
    out: list[Logger] = []
    path = None if log_dir is None else Path(log_dir)
    if path is not None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError("log_dir", str(path), f"a writable directory ({exc.strerror})") from None
        out += [CsvLogger(path), ParquetLogger(path)]
    if "tensorboard" in extras:
        if path is None:
            raise ConfigError("loggers", "tensorboard", "only with a log_dir")
        out.append(TensorBoardLogger(path))
    for name, make in (("mlflow", MlflowLogger), ("wandb", lambda: WandbLogger(path))):
        if name in extras:
            try:
                out.append(make())
            except ImportError:
                raise ConfigError("loggers", name, f"installed {name} (pip install {name})") from None
    return out
