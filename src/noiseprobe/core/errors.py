"""The two error types users see: bad input (ConfigError, exit 2) and numerical failure (NumericalError, exit 3).

Validators that raise ConfigError live in :mod:`noiseprobe.core.validation`.
"""

from __future__ import annotations

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
