"""The error types users see: bad input (ConfigError, exit 2), numerical failure (NumericalError, exit 3)
and a run directory or output path that cannot be used (RunDirError, exit 4).

Each prints as one line; each survives pickling, so an error raised in a worker process (process pool or
Ray) reaches the user exactly as it would with ``--workers 1``. Validators that raise ConfigError live in
:mod:`noiseprobe.core.validation`.
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

    def __reduce__(self) -> tuple[Any, ...]:  # rebuilt from its three fields in the receiving process
        return (type(self), (self.field, self.value, self.allowed))


class NoPerSampleGradients(ConfigError):
    """Per-sample gradients are not defined or not reachable at a module: ``module`` (its path, e.g.
    "model.layer1.0.bn1") and ``reason`` (e.g. "BatchNorm2d in training mode"). Batch statistics make
    samples interact; random draws in training mode (dropout inside a module without a layer rule) or an
    autograd.Function without a vmap rule cannot be replayed sample by sample. A ConfigError for the
    per-sample-gradient probes; the monitor catches it and falls back to its micro-batch estimator.
    """

    @property
    def module(self) -> str:
        return self.field

    @property
    def reason(self) -> str:
        return str(self.value)


class NumericalError(ArithmeticError):
    """A computation on valid input produced non-finite numbers (overflow, a singular system, NaN).

    Distinct from :class:`ConfigError` (the input was bad): the CLI prints one line and exits with
    :data:`NUMERICAL_EXIT` (3).
    """


class RunDirError(OSError):
    """A run directory or output file that cannot be used: an OS fault while reading or writing it (the
    message names the path and the OS reason), a corrupt file that identifies a run, or another process
    holding the run. What is on disk is kept; the CLI prints one line and exits with :data:`RUNDIR_EXIT` (4).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self),))


#: exit status of the CLI for bad input (ConfigError), a numerical failure (NumericalError) and an unusable
#: run directory or output path (RunDirError); 130/143 after SIGINT/SIGTERM (finished chunks kept)
CONFIG_EXIT, NUMERICAL_EXIT, RUNDIR_EXIT = 2, 3, 4
