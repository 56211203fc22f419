"""The :class:`Metric` contract and the registry of metric names.

A metric is an object: ``measure(ctx)`` returns named values from one measurement's
:class:`~noiseprobe.monitor.context.Context`; whatever it carries between measurements (warm starts,
pools, buffers, declared noises) are its own attributes. ``on_step`` sees every ``mon.step`` (measured
or not). A class registered with :func:`register_metric` can be named by a string in
``NoiseMonitor(metrics=...)``; metrics that need a declaration (a NIN handle, a label-noise σ, a DDP
model) are passed as objects::

    NoiseMonitor(model, loss_fn, metrics=["default", Sharpness(), NIWDecay(handle), LabelNoiseReg(sigma=0.1)])

One object serves one monitor (its state is that monitor's run).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar, TypeVar

from torch import Tensor

from noiseprobe.core.errors import ConfigError
from noiseprobe.monitor.context import Context


class Metric(abc.ABC):
    """One named family of values measured by the monitor (its columns in ``mon.history``)."""

    #: the registered name (and the string users write in ``metrics=``)
    name: ClassVar[str]
    #: in "all" (False for metrics that need a declaration or a setting "all" cannot guess)
    in_all: ClassVar[bool] = True
    #: the constructor arguments a string cannot supply ("" if none): then the name alone is refused
    needs: ClassVar[str] = ""
    #: uses per-sample products beyond the Gram matrix (``ctx.grads``): the measurement then keeps the
    #: per-sample factors instead of streaming the Gram layer by layer (a wrong False costs one more pass)
    per_sample_products: ClassVar[bool] = False
    #: reads only the per-sample (or micro-batch) gradients of the measured parameters, no extra pass of its
    #: own: measurable with ``inline=True`` and on a parameter subset (``params=``)
    gradients_only: ClassVar[bool] = False

    def param_vectors(self, top_k: int) -> int:
        """Parameter-sized vectors this metric holds at its peak (the monitor's memory estimate): none for a
        metric that reads only the Gram matrix of the gradients (``gradients_only``: the measurement's own
        per-sample or micro-batch gradients are counted once, by the monitor), else one (a mean gradient, a
        diagonal); Krylov and probe blocks for the curvature metrics."""
        return 0 if self.gradients_only and not self.per_sample_products else 1

    @abc.abstractmethod
    def measure(self, ctx: Context) -> dict[str, float]:
        """The values of this metric on one measurement."""

    def on_step(self, step: int, loss: Tensor | None) -> None:  # noqa: B027  (a no-op default, by design)
        """Called at every ``mon.step`` (measured or not) before any measurement, with the step's detached
        mean training loss when the loop passed ``loss=``."""


#: registered name -> metric class (in registration order: the order of "all")
METRICS: dict[str, type[Metric]] = {}
#: what "default" stands for
DEFAULT: tuple[str, ...] = ("tr_sigma", "g_sq", "b_simple", "temperature", "top_k_c")

M = TypeVar("M", bound=type[Metric])


def register_metric(cls: M) -> M:
    """Class decorator: make ``cls.name`` a metric name users can write in ``metrics=``."""
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__}: a registered metric needs a class attribute name: str")
    if name in METRICS and METRICS[name] is not cls:
        raise ValueError(f"metric name {name!r} is registered by {METRICS[name].__name__} already")
    METRICS[name] = cls
    return cls


def _named(name: str) -> list[Metric]:
    if name == "default":
        return [METRICS[n]() for n in DEFAULT]
    if name == "all":
        return [cls() for cls in METRICS.values() if cls.in_all]
    cls = METRICS.get(name)
    if cls is None:
        raise ConfigError("metrics", name, '"default", "all", a Metric object or a name from ' + ", ".join(METRICS))
    if cls.needs:
        raise ConfigError("metrics", name, f"the object {cls.__name__}({cls.needs})")
    return [cls()]


def resolve_metrics(spec: str | Metric | Sequence[str | Metric]) -> list[Metric]:
    """The metric objects of ``metrics=``: "default", "all", registered names (instantiated with default
    arguments) and :class:`Metric` objects (used as given), in order; a name twice is a ConfigError."""
    items = [spec] if isinstance(spec, (str, Metric)) else spec
    if not isinstance(items, Sequence) or not items:
        raise ConfigError("metrics", spec, '"default", "all", or a non-empty list of metric names and Metric objects')
    out: list[Metric] = []
    for item in items:
        if isinstance(item, Metric):
            out.append(item)
        elif isinstance(item, str):
            out.extend(_named(item))
        else:
            raise ConfigError("metrics", item, "a metric name or a Metric object")
    names = [m.name for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError("metrics", spec, f"each metric once (repeated: {', '.join(dup)})")
    return out
