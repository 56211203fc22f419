"""Typed experiment configs: a frozen dataclass per experiment whose fields carry their bounds.

Declare fields with :func:`param`; the type comes from the annotation (``int``, ``float``, ``bool``,
``str``, ``list[int]``, ``list[float]``, ``list[str]``, ``list[list[float]]``, ``X | None``, ``Literal[...]``)::

    @dataclass(frozen=True, kw_only=True)
    class WalkConfig(ExperimentConfig):
        n_steps: int = param(lo=1, hi=10**6, help="steps per walk")
        step_sd: float = param(lo=0.0)

        def check(self) -> None:            # rules between fields (optional)
            ...

Building one (``WalkConfig.from_dict(d)``) checks every field and raises
:class:`~noiseprobe.core.errors.ConfigError` naming the field, the value and what is allowed. Values keep
their JSON form (lists stay lists, ints in a float field become floats), so ``to_dict()`` is what
``run.json`` stores and hashes. Fields are read as typed attributes, ``cfg.field``.

A renamed field keeps its old name as an alias: ``renamed = {"S": "batch_size"}`` (old -> new). Old
names are accepted by :meth:`ExperimentConfig.from_dict` (old run.json files load) and by ``--set`` with
a one-line deprecation warning (:meth:`ExperimentConfig.current_names`); :meth:`ExperimentConfig.stored`
writes the field under its old name, so run.json and the config hash of a run do not change with the
rename.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, TypeVar, Union

from noiseprobe.core.errors import ConfigError

T = TypeVar("T", bound="ExperimentConfig")
_MISSING = dataclasses.MISSING


def param(
    default: Any = _MISSING,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    choices: tuple[Any, ...] | None = None,
    min_len: int | None = None,
    max_len: int | None = None,
    help: str = "",
) -> Any:
    """A config field with bounds. For list fields ``lo``/``hi``/``choices`` bound every item."""
    meta = {
        "lo": lo,
        "hi": hi,
        "lo_open": lo_open,
        "hi_open": hi_open,
        "choices": choices,
        "min_len": min_len,
        "max_len": max_len,
        "help": help,
    }
    if default is _MISSING:
        return field(metadata=meta)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _range_text(m: dict[str, Any]) -> str:
    parts = []
    if m.get("lo") is not None:
        parts.append(f"{'>' if m['lo_open'] else '>='} {m['lo']:g}")
    if m.get("hi") is not None:
        parts.append(f"{'<' if m['hi_open'] else '<='} {m['hi']:g}")
    return " and ".join(parts)


def _scalar(name: str, value: Any, tp: Any, m: dict[str, Any], what: str) -> Any:
    """Check one scalar against its type and bounds; return it in JSON form."""
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[0]):
            return value
        raise ConfigError(name, value, what + "one of " + ", ".join(repr(c) for c in choices))
    rng = _range_text(m)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(name, value, what + "true or false")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(
                name,
                value,
                what
                + "a string"
                + (" (one of " + ", ".join(map(repr, m["choices"])) + ")" if m.get("choices") else ""),
            )
        out: Any = value
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(name, value, what + "an integer" + (" " + rng if rng else ""))
        out = int(value)
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            raise ConfigError(name, value, what + "a finite number" + (" " + rng if rng else ""))
        out = float(value)
    else:  # pragma: no cover - a config author's mistake
        raise TypeError(f"config field {name}: unsupported type {tp!r}")
    lo, hi = m.get("lo"), m.get("hi")
    if tp in (int, float) and (
        (lo is not None and (out < lo or (m["lo_open"] and out == lo)))
        or (hi is not None and (out > hi or (m["hi_open"] and out == hi)))
    ):
        raise ConfigError(name, value, what + ("an integer " if tp is int else "a number ") + rng)
    if m.get("choices") is not None and out not in m["choices"]:
        raise ConfigError(name, value, what + "one of " + ", ".join(repr(c) for c in m["choices"]))
    return out


def _coerce(name: str, value: Any, tp: Any, m: dict[str, Any]) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None and type(None) in args:
            return None
        return _coerce(name, value, inner[0], m)
    if origin is list:
        (item,) = args
        nested = typing.get_origin(item) is list
        n_txt = ""
        if m.get("min_len") is not None or m.get("max_len") is not None:
            n_txt = (
                f" of {m.get('min_len') or 0}"
                + (f" to {m['max_len']}" if m.get("max_len") is not None else " or more")
                + " items"
            )
        kind = "a list of lists of numbers" if nested else f"a list{n_txt} of {_type_word(item)}"
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, value, kind + " such as " + ("[[1, 2], [3, 4]]" if nested else "[1, 2, 3]"))
        if (m.get("min_len") is not None and len(value) < m["min_len"]) or (
            m.get("max_len") is not None and len(value) > m["max_len"]
        ):
            raise ConfigError(name, value, kind)
        if nested:
            (inner_t,) = typing.get_args(item)
            out = [
                [_scalar(name, v, inner_t, m, "items: ") for v in row]
                if isinstance(row, (list, tuple))
                else _raise(name, value, kind)
                for row in value
            ]
            return out
        return [_scalar(name, v, item, m, "items: ") for v in value]
    return _scalar(name, value, tp, m, "")


def _raise(name: str, value: Any, allowed: str) -> Any:
    raise ConfigError(name, value, allowed)


def _type_word(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(tp, str(tp))


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """Base of every experiment's config: a frozen dataclass; every experiment has a ``seed``."""

    seed: int = param(0, lo=0, hi=2**63 - 1, help="root seed; replica r draws from (seed, r)")

    #: names of the fields a memory or time estimate grows with (for messages); set by subclasses
    size_fields: ClassVar[tuple[str, ...]] = ()
    #: old field names still accepted, old -> new (see the module docstring); set by subclasses
    renamed: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name], dict(f.metadata)))
        self.check()

    def check(self) -> None:
        """Rules between fields; raise ConfigError. Default: none."""

    @classmethod
    def from_dict(cls: type[T], values: dict[str, Any], *, context: str = "") -> T:
        """Build and validate from a JSON dict; unknown fields are refused, missing ones take defaults, old
        names of renamed fields are read as the new ones."""
        values = cls.current_names(values)
        names = [f.name for f in fields(cls)]
        for key, value in values.items():
            if key not in names:
                raise ConfigError(key, value, f"a field of {context or cls.__name__}: " + ", ".join(sorted(names)))
        try:
            return cls(**values)
        except TypeError as exc:  # a required field without a value
            raise ConfigError(context or cls.__name__, values, f"every required field ({exc})") from None

    @classmethod
    def current_names(cls, values: dict[str, Any], *, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
        """``values`` with old names of renamed fields replaced by the current ones; ``warn`` gets one line
        per old name used. ConfigError when a field is given under both names."""
        out = dict(values)
        for old, new in cls.renamed.items():
            if old in out:
                if new in out:
                    raise ConfigError(old, out[old], f"only one of {old} (the deprecated name) and {new}")
                out[new] = out.pop(old)
                if warn is not None:
                    warn(f"config field {old} is deprecated; it is now {new} (--set {new}=...)")
        return out

    def stored(self) -> dict[str, Any]:
        """The JSON that run.json stores and hashes: :meth:`to_dict` with renamed fields under their old
        names, so that a rename keeps every run's hash."""
        back = {new: old for old, new in self.renamed.items()}
        return {back.get(k, k): v for k, v in self.to_dict().items()}

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(field, type, allowed/help) rows for docs and ``--help``."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in fields(cls):
            m = dict(f.metadata)
            allowed = " ".join(s for s in (_range_text(m), m.get("help", "")) if s)
            rows.append((f.name, getattr(hints[f.name], "__name__", str(hints[f.name])), allowed))
        return rows


__all__ = ["ExperimentConfig", "param"]
