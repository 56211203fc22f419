"""Experiment ids as import paths, without core knowing any experiment.

An experiment is named by a registered id (``sl-fig2``; ``noiseprobe list``) or by the import path of a
user's class, ``package.module:Class``. The registry of ids lives above core, in
:mod:`noiseprobe.experiments`; the package root hands core its lookup with :func:`set_registry` when
``noiseprobe`` is imported (in every process that imports any part of the package, workers included), so
core imports nothing above it (docs/architecture.md). The runner resolves an id once, before a run, and
hands its workers the path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from noiseprobe.core.errors import ConfigError

_registry: list[Callable[[], Mapping[str, str]]] = []


def set_registry(paths: Callable[[], Mapping[str, str]]) -> None:
    """Install the lookup of registered ids: ``paths()`` returns id -> ``package.module:Class`` (called
    only when an id is resolved, so the registry is imported on first use)."""
    _registry[:] = [paths]


def registered() -> Mapping[str, str]:
    """Registered id -> ``package.module:Class`` (empty when no registry is installed)."""
    return _registry[0]() if _registry else {}


def experiment_path(exp_id: object) -> str:
    """The ``package.module:Class`` path of a registered id, or ``exp_id`` itself when it is such a path;
    ConfigError naming ``experiment`` otherwise."""
    if not isinstance(exp_id, str):
        raise ConfigError("experiment", exp_id, "an experiment id (see `noiseprobe list`) or module:Class")
    paths = registered()
    if exp_id in paths:
        return paths[exp_id]
    if ":" not in exp_id:
        raise ConfigError("experiment", exp_id, "one of " + ", ".join(paths) + " (see `noiseprobe list`)")
    module, _, cls = exp_id.partition(":")
    if not (module and cls.isidentifier() and all(p.isidentifier() for p in module.split("."))):
        raise ConfigError(
            "experiment",
            exp_id,
            "a registered id (see `noiseprobe list`) or package.module:Class naming your own Experiment",
        )
    return exp_id


__all__ = ["experiment_path", "registered", "set_registry"]
