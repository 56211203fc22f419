"""One vocabulary on the user-facing surface (issue 17.5): the public signatures (everything in
``noiseprobe.__all__`` and the public methods of exported classes) and the config fields of every
registered experiment use the project's names, never a synonym from the committed list below, and the
confusable parameters of public constructors are keyword-only (docs/conventions.md)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import noiseprobe as npb
from noiseprobe import experiments

#: synonym -> the project's name (docs/conventions.md)
SYNONYMS = {
    "S": "batch_size",
    "bs": "batch_size",
    "batchsize": "batch_size",
    "eta": "lr",
    "learning_rate": "lr",
    "noise_std": "sigma",
    "std": "sigma",
}
#: a model's data are (inputs, targets); a design matrix's (X, y): a lowercase x beside y is neither
DATA_PAIR = ("x", "y")

#: (where, name) still to be renamed by a branch at work now; remove an entry when its branch lands
PENDING: dict[tuple[str, str], str] = {}
#: (class, parameter) of public constructors that must be keyword-only
KEYWORD_ONLY = [("GradientNoise", "batch_size"), ("NoiseMonitor", "effective_batch_size")]
PENDING_KEYWORD_ONLY: dict[tuple[str, str], str] = {}


def _signatures() -> Iterator[tuple[str, list[str]]]:
    def one(where: str, fn: Callable[..., Any]) -> Iterator[tuple[str, list[str]]]:
        try:
            yield where, list(inspect.signature(fn).parameters)
        except (TypeError, ValueError):  # a builtin without a signature
            return

    for name in npb.__all__:
        obj = getattr(npb, name)
        if inspect.isclass(obj):
            yield from one(name, obj)
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and callable(member):
                    yield from one(f"{name}.{attr}", member)
        elif callable(obj):
            yield from one(name, obj)


def _violations(where: str, names: list[str]) -> list[tuple[str, str]]:
    found = [(where, n) for n in names if n in SYNONYMS]
    if all(n in names for n in DATA_PAIR):
        found.append((where, ", ".join(DATA_PAIR)))
    return found


def _surface() -> list[tuple[str, list[str]]]:
    configs = [
        (exp_id, [f for f in Config.__dataclass_fields__])
        for exp_id in experiments.REGISTRY
        if (Config := experiments.get(exp_id).Config) is not None
    ]
    return list(_signatures()) + configs


def test_public_names_use_the_vocabulary() -> None:
    surface = _surface()
    assert len(surface) > 80  # the walk reaches the API and every experiment's config
    found = [v for where, names in surface for v in _violations(where, names) if v not in PENDING]
    assert not found, "synonyms on the public surface (use " + str(SYNONYMS) + "): " + str(found)


def test_pending_exceptions_are_still_real() -> None:
    """An entry of PENDING that no longer occurs must be removed (the list only shrinks)."""
    found = {v for where, names in _surface() for v in _violations(where, names)}
    assert not (set(PENDING) - found), f"fixed, remove from PENDING: {sorted(set(PENDING) - found)}"


def test_the_walk_finds_a_synonym() -> None:
    assert _violations("f", ["model", "x", "y", "learning_rate"]) == [("f", "learning_rate"), ("f", "x, y")]
    assert _violations("g", ["X", "y", "lr", "batch_size", "sigma"]) == []


@pytest.mark.parametrize(("cls", "param"), KEYWORD_ONLY)
def test_confusable_constructor_parameters_are_keyword_only(cls: str, param: str) -> None:
    kind = inspect.signature(getattr(npb, cls)).parameters[param].kind
    if (cls, param) in PENDING_KEYWORD_ONLY:
        assert kind is not inspect.Parameter.KEYWORD_ONLY, f"done: remove ({cls}, {param}) from the pending list"
        return
    assert kind is inspect.Parameter.KEYWORD_ONLY
