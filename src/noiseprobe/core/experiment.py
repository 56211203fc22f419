"""The experiment contract: one reproduced figure or table of a paper, in one shape.

An experiment declares its presets (``quick``, ``full``) and a typed ``Config``, and implements

- ``chunks(config) -> list[Chunk]``: the work split into independent chunks (largest first);
- ``measure(config, chunk) -> tables``: one chunk, a pure function run in any worker on any executor
  (its tables are stored as it finishes, so an interrupted run resumes);
- ``derive(config, tables) -> tables``: optional, pure: the analysis tables shared by checks, metrics and
  figures (group means, fits, theory curves), computed once per analysis; default none;
- ``checks(config, tables) -> list[Check]``: pure (no drawing, no mutation of the tables);
- ``metrics(config, tables) -> dict``: optional, pure: the summary's headline numbers; default ``{}``;
- ``plot(config, tables, out) -> None``: figures only, written as ``out/*.png``.

:meth:`Experiment.evaluate` composes the last four exactly as the runner does (``tables`` there are the
measured tables and, after :meth:`Experiment.derive`, the derived ones).

Randomness: a chunk must derive every random number from ``config.seed`` and the *global* replica
indices it holds (``noiseprobe.core.seeding``), never from the chunk index or the worker, so that results
do not depend on chunking, worker count or executor.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from noiseprobe.core import checks as _checks
from noiseprobe.core import progress as _progress
from noiseprobe.core.config import ExperimentConfig
from noiseprobe.core.errors import ConfigError


@dataclass(frozen=True)
class RunCost:
    """Up-front cost of a run: peak memory of one worker (bytes), time (seconds, None if unknown), and
    the config fields that drive them (named in the refusal when the memory does not fit)."""

    peak_bytes: int
    seconds: float | None = None
    drivers: tuple[str, ...] = ()


#: deprecated name of :class:`RunCost` (``npb.Estimate``, before the run-cost estimate and the
#: stochastic estimate with its standard error got distinct names); kept for users' experiments
Estimate = RunCost


@dataclass(frozen=True)
class Chunk:
    """A unit of work: a JSON-serialisable ``spec`` under a unique, file-name-safe ``key``."""

    key: str
    spec: dict[str, Any] = field(default_factory=dict)


class Experiment:
    """Base class. Subclasses set ``id``, ``title``, ``presets``, ``Config`` and implement ``measure``,
    ``checks`` and ``plot`` (``chunks``, ``derive`` and ``metrics`` have defaults).

    ``presets[name]`` is a JSON-serialisable dict; it must contain ``seed``. Users override single
    fields with ``--set field=value``; an override must keep the field's JSON type (ints may become
    floats) and then pass :meth:`validate`.

    ``config`` in the methods is what :meth:`parse` returns: an instance of ``Config`` where the subclass
    declares one, else the validated dict; it is typed ``Any`` here so that each subclass annotates its own.
    """

    id: ClassVar[str]
    title: ClassVar[str]
    presets: ClassVar[dict[str, dict[str, Any]]]
    #: overrides of the quick preset under which every replica diverges: the run must still finish, its
    #: checks "not measurable" (tests/core/test_divergence.py runs each registered experiment with them)
    diverging: ClassVar[dict[str, Any] | None] = None
    #: the typed config (a frozen :class:`~noiseprobe.core.config.ExperimentConfig`); presets are its values
    Config: ClassVar[type[ExperimentConfig] | None] = None
    #: names of the extra result tables (besides ``results``) that measure may return
    tables: ClassVar[tuple[str, ...]] = ()

    def validate(self, config: dict[str, Any]) -> None:
        """Raise :class:`ConfigError` for any invalid field. Default: no extra rules."""

    def check_data(self, config: Any) -> None:
        """Raise :class:`ConfigError` for what depends on the data the config names: unreadable or corrupt
        dataset files, sizes larger than the data (``n_train``, ``pool``). Called before the run directory
        is claimed and by ``--dry-run``. Default: nothing to check."""

    def estimate(self, config: Any) -> RunCost | None:
        """Peak memory per worker and time of this config, computed from sizes before any work (None:
        unknown). Used by ``--dry-run`` and to refuse configs that cannot fit in memory."""
        return None

    def chunks(self, config: Any) -> list[Chunk]:
        """Split the work into independent chunks. Default: one chunk."""
        return [Chunk("all")]

    def measure(self, config: Any, chunk: Chunk) -> pd.DataFrame | dict[str, pd.DataFrame]:
        """Run one chunk; return the tidy ``results`` frame, or ``{"results": df, other tables...}``.
        Pure: the same config and chunk give the same tables in any process."""
        raise NotImplementedError

    def derive(self, config: Any, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """Analysis tables computed from the measured ones (pure; not stored), under names that are not
        measured tables; :meth:`checks`, :meth:`metrics` and :meth:`plot` receive both. Default: none."""
        return {}

    def checks(self, config: Any, tables: dict[str, pd.DataFrame]) -> list[_checks.Check]:
        """The paper's claims as measured checks. Pure: no figures, no changes to ``tables``."""
        raise NotImplementedError

    def metrics(self, config: Any, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
        """Headline numbers for the summary (pure). Default: none."""
        return {}

    def plot(self, config: Any, tables: dict[str, pd.DataFrame], out: Path) -> None:
        """Write the figures ``out/*.png`` (and nothing else). Default: no figures."""

    # -- provided -------------------------------------------------------------------------------
    def evaluate(
        self, config: Any, tables: dict[str, pd.DataFrame], out: Path | None = None
    ) -> tuple[dict[str, Any], list[_checks.Check]]:
        """(metrics, checks) of the measured ``tables``, and the figures in ``out`` unless it is None: the
        derived tables computed once, then checks, metrics and plot, as the runner analyses a run."""
        derived = self.derive(config, tables)
        clash = sorted(set(derived) & set(tables))
        if clash:
            raise RuntimeError(f"{self.id}: derive() returned tables {clash} that shadow measured tables")
        full = {**tables, **derived}
        checks = self.checks(config, full)
        metrics = self.metrics(config, full)
        if out is not None:
            self.plot(config, full, out)
        return metrics, checks

    def parse(self, values: dict[str, Any]) -> Any:
        """The typed config built from a JSON dict (as stored in run.json), validated."""
        if self.Config is not None:
            return self.Config.from_dict(values, context=self.id)
        self.validate(values)
        return values

    def config(self, preset: str, overrides: dict[str, Any] | None = None) -> Any:
        """The preset's config with overrides applied and validated (the typed config where declared)."""
        if preset not in self.presets:
            raise ConfigError("preset", preset, "one of " + ", ".join(self.presets))
        cfg = json.loads(json.dumps(self.presets[preset]))
        if self.Config is not None:
            return self.parse({**cfg, **self.Config.current_names(overrides or {}, warn=_progress.warn)})
        for key, value in (overrides or {}).items():
            if key not in cfg:
                raise ConfigError(f"--set {key}", value, f"a field of {self.id}: " + ", ".join(sorted(cfg)))
            cfg[key] = _coerce(f"--set {key}", value, cfg[key])
        self.validate(cfg)
        return cfg


def _coerce(name: str, value: Any, like: Any) -> Any:
    """Give ``value`` the JSON type of the preset value ``like`` or raise ConfigError."""
    if isinstance(like, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(name, value, "true or false")
    if isinstance(like, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(name, value, "an integer")
    if isinstance(like, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ConfigError(name, value, "a finite number")
    if isinstance(like, str):
        if isinstance(value, str):
            return value
        raise ConfigError(name, value, "a string")
    if isinstance(like, list):
        if isinstance(value, list) and all(type(v) in (int, float, str, bool) for v in value):
            return value
        raise ConfigError(name, value, "a JSON list such as [1, 2, 3]")
    if like is None:
        return value
    raise ConfigError(name, value, f"a value of type {type(like).__name__}")
