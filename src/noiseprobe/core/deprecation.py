"""Renamed parameters keep their old keyword names for a while (docs/conventions.md): one decorator, so the
rule and its warning line are the same everywhere."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from noiseprobe.core.errors import ConfigError

P = ParamSpec("P")
R = TypeVar("R")


def renamed_arguments(**old_to_new: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Accept the old keyword name of each renamed parameter (``@renamed_arguments(x="inputs")``): a call
    with ``x=`` runs as ``inputs=`` after one DeprecationWarning line; both names at once is a ConfigError.
    The signature (``inspect.signature``, the API reference) shows the new names only. On a constructor the
    warning names the class being built, so subclasses that inherit it are named as themselves."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        owner = fn.__qualname__.removesuffix(".__init__")
        constructor = fn.__name__ == "__init__"

        @functools.wraps(fn)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise ConfigError(old, "given", f"only one of {old} (the deprecated name) and {new}")
                    who = type(args[0]).__name__ if constructor and args else owner
                    warnings.warn(f"{who}: {old}= is deprecated; it is now {new}=", DeprecationWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return call

    return decorate


__all__ = ["renamed_arguments"]
