"""Migration shim (removed once the one-shape contract is in core/experiment.py): the runner of this
commit calls ``run_chunk`` and ``analyse``; these compose ``measure``, ``checks``, ``metrics`` and ``plot``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from noiseprobe.core.checks import Check
from noiseprobe.core.experiment import Chunk, Experiment


class Shaped(Experiment):
    def measure(self, config: Any, chunk: Chunk) -> pd.DataFrame | dict[str, pd.DataFrame]:
        raise NotImplementedError

    def derive(self, config: Any, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        return {}

    def checks(self, config: Any, tables: dict[str, pd.DataFrame]) -> list[Check]:
        raise NotImplementedError

    def metrics(self, config: Any, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        return {}

    def plot(self, config: Any, tables: dict[str, pd.DataFrame], out: Path) -> None:
        pass

    def run_chunk(self, config: Any, chunk: Chunk) -> pd.DataFrame | dict[str, pd.DataFrame]:
        return self.measure(config, chunk)

    def evaluate(
        self, config: Any, tables: dict[str, pd.DataFrame], out: Path | None = None
    ) -> tuple[dict[str, Any], list[Check]]:
        tables = {**tables, **self.derive(config, tables)}
        checks = self.checks(config, tables)
        metrics = self.metrics(config, tables)
        if out is not None:
            self.plot(config, tables, out)
        return metrics, checks

    def analyse(self, config: Any, tables: dict[str, pd.DataFrame], out: Path) -> tuple[dict[str, Any], list[Check]]:
        return self.evaluate(config, tables, out)
