"""Where the monitor's measurements go: CSV and Parquet always (with a log directory), TensorBoard and
MLflow as extras. Each logger takes one row (a dict of step and values) per measurement."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.store import write_parquet

EXTRAS = ("tensorboard", "mlflow")


class Logger:
    def log(self, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release (default: nothing to do)."""


class CsvParquetLogger(Logger):
    """``monitor.csv`` appended per measurement (readable while training runs) and ``monitor.parquet``
    rewritten atomically from all rows (the table ``noiseprobe report`` reads)."""

    def __init__(self, log_dir: Path) -> None:
        self.dir = log_dir
        self.rows: list[dict[str, Any]] = []
        self.csv_path, self.parquet_path = log_dir / "monitor.csv", log_dir / "monitor.parquet"
        self._columns: list[str] | None = None

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        frame = pd.DataFrame(self.rows)
        if self._columns != list(frame.columns):  # new columns: rewrite the CSV with the full header
            self._columns = list(frame.columns)
            frame.to_csv(self.csv_path, index=False)
        else:
            with open(self.csv_path, "a", newline="") as fh:
                csv.writer(fh).writerow([row.get(c, "") for c in self._columns])
        write_parquet(self.parquet_path, frame)


class TensorBoardLogger(Logger):
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        for k, v in row.items():
            if k != "step" and isinstance(v, float) and math.isfinite(v):
                self.writer.add_scalar(f"noiseprobe/{k}", v, row["step"])

    def close(self) -> None:
        self.writer.close()


class MlflowLogger(Logger):
    def __init__(self) -> None:
        import mlflow

        self.mlflow = mlflow

    def log(self, row: dict[str, Any]) -> None:
        self.mlflow.log_metrics(
            {f"noiseprobe.{k}": v for k, v in row.items() if k != "step" and isinstance(v, float) and math.isfinite(v)},
            step=row["step"],
        )


def make_loggers(log_dir: str | Path | None, extras: Sequence[str]) -> list[Logger]:
    """CSV + Parquet in ``log_dir`` (if given) and the named extras."""
    bad = [e for e in extras if e not in EXTRAS]
    if bad or isinstance(extras, str):
        raise ConfigError("loggers", extras, "a list of names from " + ", ".join(EXTRAS))
    out: list[Logger] = []
    if log_dir is not None:
        path = Path(log_dir)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError("log_dir", str(path), f"a writable directory ({exc.strerror})") from None
        out.append(CsvParquetLogger(path))
    if "tensorboard" in extras:
        if log_dir is None:
            raise ConfigError("loggers", "tensorboard", "only with a log_dir")
        out.append(TensorBoardLogger(Path(log_dir)))
    if "mlflow" in extras:
        try:
            out.append(MlflowLogger())
        except ImportError:
            raise ConfigError("loggers", "mlflow", "installed mlflow (pip install mlflow)") from None
    return out
