"""The one error type users see for bad input, and small validators that raise it."""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any


class ConfigError(ValueError):
    """Invalid argument or configuration value.

    The message is one line naming the field, the value and what is allowed; the CLI prints it and
    exits with status 2.
    """

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field} = {value!r} is invalid: allowed {allowed}")


class NumericalError(ArithmeticError):
    """A computation on valid input produced non-finite numbers (overflow, a singular system, NaN).

    Distinct from :class:`ConfigError` (the input was bad): the CLI prints one line and exits with
    :data:`NUMERICAL_EXIT` (3).
    """


#: exit status of the CLI for bad input (ConfigError) and for a numerical failure (NumericalError)
CONFIG_EXIT, NUMERICAL_EXIT = 2, 3


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_real(field: str, value: Any, *, lo: float | None = None, hi: float | None = None,
               lo_open: bool = False, hi_open: bool = False) -> float:
    """Return ``float(value)`` if it is a finite real in the stated range, else raise ConfigError."""
    lo_s = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
    hi_s = "" if hi is None else (f"< {hi}" if hi_open else f"<= {hi}")
    allowed = "a finite number" + (" " + " and ".join(s for s in (lo_s, hi_s) if s) if lo_s or hi_s else "")
    if not _is_real(value):
        raise ConfigError(field, value, allowed)
    v = float(value)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ConfigError(field, value, allowed)
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ConfigError(field, value, allowed)
    return v


def check_int(field: str, value: Any, *, lo: int | None = None, hi: int | None = None) -> int:
    """Return ``value`` as an int if it is an integer (Python or NumPy) in [lo, hi], else raise ConfigError."""
    rng = " ".join(s for s in ((f">= {lo}" if lo is not None else ""), (f"<= {hi}" if hi is not None else "")) if s)
    allowed = "an integer" + (" " + rng.replace(" <=", " and <=") if rng else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(field, value, allowed)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(field, value, allowed)
    return int(value)


def check_choice(field: str, value: Any, choices: Collection[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise ConfigError."""
    if value not in choices:
        raise ConfigError(field, value, "one of " + ", ".join(repr(c) for c in choices))
    return value
