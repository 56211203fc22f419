"""NoiseMonitor: the papers' measurements, live, inside anyone's training loop.

::

    mon = NoiseMonitor(model, loss_fn, every=50)          # loss_fn(output, targets) -> per-sample losses
    for inputs, targets in loader:
        loss = loss_fn(model(inputs), targets).mean(); loss.backward()
        mon.step((inputs, targets), optimizer)            # before optimizer.step()
        optimizer.step(); optimizer.zero_grad()
    mon.history                                           # pandas DataFrame, one row per measurement

Under DistributedDataParallel every rank calls ``mon.step`` with its own batch: tr_sigma, g_sq, b_simple
and temperature are then exact for the global batch (:mod:`noiseprobe.monitor.ddp`); curvature metrics
and top-k of C use the rank's own batch. A measurement leaves the run exactly as it was (parameters, buffers, ``.grad``, optimizer state, RNG
states, train/eval flags): it never calls ``backward`` on the parameters, restores buffers and RNG states,
and runs with autocast disabled (so products accumulate in float32 or wider). The metrics and their
formulas are listed in :mod:`noiseprobe.monitor.metrics` and docs/monitor.md; each metric is an object
that keeps its own state between measurements (:mod:`noiseprobe.monitor.metric`), each measurement a
:class:`~noiseprobe.monitor.context.Context` that computes the shared ingredients once.
"""

from __future__ import annotations

import gc
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from noiseprobe.core.errors import ConfigError, NoPerSampleGradients, NumericalError
from noiseprobe.core.memory import fmt_bytes, usable_memory
from noiseprobe.core.validation import check_choice, check_int
from noiseprobe.monitor import ddp
from noiseprobe.monitor.context import Context, Refused, TooFewSamples
from noiseprobe.monitor.inline import InlineCapture, measuring
from noiseprobe.monitor.loggers import Logger, make_loggers
from noiseprobe.monitor.metric import METRICS, Metric
from noiseprobe.monitor.metrics import DEFAULT, resolve_metrics
from noiseprobe.monitor.microbatch import DEFAULT_MICRO_BATCHES, EstimatorChoice, untouched
from noiseprobe.probes.persample import Selection, select_parameters
from noiseprobe.probes.wrappers import eager, unwrap

Forward = Callable[[nn.Module, Any], Tensor]


@contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Restore buffers (e.g. BatchNorm statistics), ``.grad``, RNG states and train/eval flags on exit."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        with untouched(model):
            yield
    finally:
        for m, t in flags:
            m.training = t


def refuse_inline(callback: str, monitor_kwargs: dict[str, Any]) -> None:
    """ConfigError at a callback's construction for ``inline=True``: a callback measures on its own pass and
    cannot hand the step's ``loss=`` to :meth:`NoiseMonitor.step` (docs/monitor.md, "Inline")."""
    if monitor_kwargs.get("inline"):
        raise ConfigError(
            "inline", True, f"False in {callback} (the no-extra-pass mode needs the loop's loss=: use a plain loop)"
        )


class NoiseMonitor:
    """Measure gradient-noise quantities every ``every`` optimizer steps on the current batch.

    ``metrics``: "default" (tr_sigma, g_sq, b_simple with its interval, temperature, top-k of C), "all",
    or a list of those, names from :data:`noiseprobe.monitor.metric.METRICS` and
    :class:`~noiseprobe.monitor.metric.Metric` objects (``["default", Sharpness(), NIWDecay(handle)]``;
    metrics needing a declaration take it in their constructor). ``forward(model, inputs)`` serves
    models that take dicts or keyword arguments (default ``model(inputs)``). ``effective_batch_size`` is
    the batch size S of the update (with gradient accumulation, micro-batch × accumulation steps); default
    the number of samples in the measured batch. ``log_dir``: CSV and Parquet logs there (plus
    "tensorboard"/"mlflow"/"wandb" in ``loggers``). ``verbose``: a status line per measurement (default:
    when stderr is a terminal).

    The monitor never stops the run it watches (``on_error="warn"``, the default): what goes wrong inside a
    measurement (non-finite losses or gradients, a batch too small for an estimator, out of memory, an
    estimated peak above the free memory, a logger's I/O failure) becomes a ``status`` in the row (NaN
    values where a metric failed) and one warning per reason; ``status`` is "ok" on a clean row.
    ``on_error="raise"`` raises instead (for tests). Bad construction arguments raise here, and an error of
    the user's own code or batch raises at the first measurement.

    ``estimator``: "auto" (per-sample gradients where they exist, else micro-batches, with one warning
    naming the module and why), "per-sample" or "micro-batch"; ``micro_batches``: m (default 8, fewer for
    batches under 16 samples). Each row's ``estimator`` and ``micro_batch_size`` say which was used
    (:mod:`noiseprobe.monitor.microbatch`, docs/monitor.md "Which estimator").

    ``params``: the parameters measured (names, modules or parameters, :func:`~noiseprobe.probes.persample.
    select_parameters`; default all trainable), for the metrics read from gradients alone
    (``Metric.gradients_only``: tr_sigma, g_sq, b_simple, temperature, top_k_c, b_simple_avg, layers).
    ``inline=True``: no extra pass; the per-sample gradients come from the loop's own forward and backward,
    hooked on the measured steps only, and ``mon.step(batch, optimizer, loss=loss)`` must pass the loss that
    was backpropagated (:mod:`noiseprobe.monitor.inline`, docs/monitor.md "Inline (no extra pass)"); rows
    gain ``loss_scale`` (c in loss = c·mean(loss_fn)) and ``grad_scale`` (a GradScaler's scale, divided out).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Tensor],
        every: int = 50,
        metrics: str | Metric | Sequence[str | Metric] = "default",
        log_dir: str | Path | None = None,
        forward: Forward | None = None,
        *,
        effective_batch_size: int | None = None,
        top_k: int = 10,
        loggers: Sequence[str] = (),
        verbose: bool | None = None,
        on_error: str = "warn",
        estimator: str = "auto",
        micro_batches: int | None = None,
        params: Selection | None = None,
        inline: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError("model", type(model).__name__, "a torch.nn.Module")
        unwrap(model)  # a model it cannot measure (FSDP-sharded) is refused here, at construction
        if not callable(loss_fn):
            raise ConfigError("loss_fn", loss_fn, "a callable loss_fn(output, targets) -> per-sample losses")
        if forward is not None and not callable(forward):
            raise ConfigError("forward", forward, "a callable forward(model, inputs) -> output, or None")
        self.model = model
        self.loss_fn = loss_fn
        self.every = check_int("every", every, lo=1)
        self.metrics = resolve_metrics(metrics)
        self.forward = forward
        self.effective_batch_size = (
            None if effective_batch_size is None else check_int("effective_batch_size", effective_batch_size, lo=1)
        )
        self.top_k = check_int("top_k", top_k, lo=1)
        self.estimator = EstimatorChoice(estimator, micro_batches)
        self.loggers: list[Logger] = make_loggers(log_dir, loggers)
        self.verbose = sys.stderr.isatty() if verbose is None else bool(verbose)
        self.steps = 0
        self.on_error = check_choice("on_error", on_error, ("warn", "raise"))
        self.group = ddp.process_group(model)
        self._rows: list[dict[str, Any]] = []
        self._columns: dict[str, list[str]] = {}  # metric name -> its columns when it last succeeded
        self._warned: set[str] = set()
        self._validated = False  # a measurement ran through: the user's code and batch are sound
        self.params = params
        check_choice("inline", inline, (True, False))
        if params is not None or inline:
            select_parameters(model, params)  # a bad selection is refused here
            extra = [m.name for m in self.metrics if not m.gradients_only]
            if extra:
                raise ConfigError(
                    "metrics",
                    ", ".join(extra),
                    f"metrics read from gradients alone with {'inline=True' if inline else 'params='} ("
                    + ", ".join(n for n, c in METRICS.items() if c.gradients_only)
                    + "): the others need passes or parameters of their own",
                )
        self.inline: InlineCapture | None = None
        if inline:
            if estimator == "micro-batch":
                raise ConfigError("estimator", estimator, '"auto" or "per-sample" with inline=True')
            if forward is not None:
                raise ConfigError("forward", forward, "None with inline=True (the model's own output is captured)")
            if self.group is not None:
                raise ConfigError("inline", True, "a single-process run (inline=False under data parallelism)")
            self.estimator = EstimatorChoice("per-sample")
            self.inline = InlineCapture(model, params)
            self.inline.arm()  # step 0 is measured

    # -- the loop --------------------------------------------------------------------------------
    def step(
        self,
        batch: tuple[Any, Any],
        optimizer: torch.optim.Optimizer | None = None,
        *,
        loss: Tensor | float | Sequence[Tensor | float] | None = None,
    ) -> dict[str, Any]:
        """Count one optimizer step; measure on ``batch`` when the count is a multiple of ``every``
        (steps 0, every, 2·every, ...). Call before ``optimizer.step()``. Returns what it measured ({} if
        nothing). ``loss``: the mean training loss of this step's batch, already computed by the loop (kept
        as a tensor, no extra forward and no device sync); the ``fluctuation`` metric compares the variance
        of these values since the previous measurement with paper 002's prediction. With ``inline=True``
        ``loss`` is required: the loss that was backpropagated (under gradient accumulation a list, one per
        micro-batch in the order of their forwards; ``fluctuation`` then sees their sum)."""
        step, self.steps = self.steps, self.steps + 1
        losses: list[Tensor | float] | None = (
            None if loss is None else list(loss) if isinstance(loss, (list, tuple)) else [loss]  # type: ignore[list-item]
        )
        seen = (
            None
            if not losses
            else torch.as_tensor(losses[0]).detach()
            if len(losses) == 1
            else torch.stack([torch.as_tensor(v).detach() for v in losses]).sum()
        )
        for metric in self.metrics:
            try:
                metric.on_step(step, seen)
            except Exception as exc:
                self._fault(fault_reason(exc) or "error", exc, metric.name)
        try:
            if step % self.every:
                return {}
            return self._measure(batch, optimizer, step, losses)
        finally:
            if self.inline is not None:  # hooks only for the step to be measured next
                if self.steps % self.every:
                    self.inline.disarm()
                else:
                    self.inline.arm()

    def measure(self, batch: tuple[Any, Any], optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
        """Measure now on ``batch`` (recorded at the current step count); with ``inline=True`` a ConfigError
        (an inline measurement is of a step the hooks recorded: ``mon.step``)."""
        if self.inline is not None:
            raise ConfigError("measure", "with inline=True", "mon.step(batch, optimizer, loss=loss)")
        return self._measure(batch, optimizer, self.steps)

    @property
    def history(self) -> pd.DataFrame:
        """One row per measurement: ``step``, ``seconds`` and one column per metric value."""
        table: pd.DataFrame = pd.DataFrame(self._rows)
        return table

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()

    # -- internals -------------------------------------------------------------------------------
    def _fault(self, reason: str, exc: BaseException | None, where: str = "") -> None:
        """Raise (``on_error="raise"``) or warn, once per reason (the first place it happened named)."""
        if self.on_error == "raise" and exc is not None:
            raise exc
        key = reason.split(" (")[0]
        if key not in self._warned:
            self._warned.add(key)
            detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
            place = f"{where}: " if where else ""
            warnings.warn(
                f"noiseprobe monitor: {place}{reason}{detail} (recorded in the status column; warned once)",
                stacklevel=4,
            )

    def estimated_peak(self, n: int) -> int:
        """Bytes a measurement allocates beyond the training step, estimated: the parameter-sized vectors the
        chosen metrics hold at their peak (each metric's ``param_vectors``: Lanczos blocks, probe blocks, a
        diagonal) and a few more (4: mean gradients, scales), the gradients of the estimator it will use
        (per-sample: one layer's N per-sample rows at a time, the largest parameter tensor's, as the Gram
        is streamed layer by layer, or every layer's where a metric keeps the factors; micro-batch: the m
        micro-batch gradients) and the N × N Gram matrix;
        activations of the extra forward and backward are those of a training step."""
        model = unwrap(self.model)
        params = [p for p in model.parameters() if p.requires_grad]
        p_count = sum(p.numel() for p in params)
        itemsize = max((p.element_size() for p in params), default=4)
        vectors = 4 + sum(m.param_vectors(self.top_k) for m in self.metrics)
        if self.estimator.expected(model) == "micro-batch":
            gradients = (self.estimator.micro_batches or DEFAULT_MICRO_BATCHES) * p_count
        elif any(m.per_sample_products for m in self.metrics) or self.group is not None:
            gradients = n * p_count  # the factors of every layer are kept (at most explicit rows)
        else:
            gradients = n * max((p.numel() for p in params), default=0)
        return itemsize * (p_count * vectors + gradients) + 8 * n * n

    def _measure(
        self,
        batch: tuple[Any, Any],
        optimizer: torch.optim.Optimizer | None,
        step: int,
        losses: list[Tensor | float] | None = None,
    ) -> dict[str, Any]:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ConfigError("batch", type(batch).__name__, "a pair (inputs, targets)")
        model = unwrap(self.model)
        t0 = time.perf_counter()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        row: dict[str, Any] = {"step": step}
        failed: dict[str, str] = {}  # metric name -> reason
        done: list[str] = []
        skip = self._memory_check(batch, device)
        if skip is not None:
            if self.on_error == "raise":
                raise MemoryError(skip)
            failed = dict.fromkeys((m.name for m in self.metrics), "memory")
            self._fault(skip, None)
        else:
            with preserved(model), torch.autocast(device.type, enabled=False), eager(), measuring():
                given = None
                if self.inline is not None:
                    try:
                        given, scales = self.inline.gradients(self.loss_fn, batch[1], losses)
                        row.update(scales)
                    except Exception as exc:
                        failed = dict.fromkeys((m.name for m in self.metrics), self._fault_reason(exc, "inline"))
                        row.update(loss_scale=math.nan, grad_scale=math.nan)
                ctx = Context(
                    model=model,
                    loss_fn=self.loss_fn,
                    inputs=batch[0],
                    targets=batch[1],
                    forward=self.forward,
                    optimizer=optimizer,
                    batch_size=self.effective_batch_size,
                    top_k=self.top_k,
                    step=step,
                    group=self.group,
                    estimator=self.estimator,
                    per_module=any(m.name == "layers" for m in self.metrics),
                    factors=any(m.per_sample_products for m in self.metrics),
                    params=self.params,
                    per_sample=given,
                )
                for metric in self.metrics:
                    if metric.name in failed:
                        continue
                    try:
                        values = metric.measure(ctx)
                    except Exception as exc:
                        reason = self._fault_reason(exc, metric.name)
                        if reason in ("non-finite", "out-of-memory"):  # the rest would fail the same way
                            failed.update({m.name: reason for m in self.metrics if m.name not in done})
                        else:
                            failed[metric.name] = reason
                        continue
                    self._columns[metric.name] = list(values)
                    row.update(values)
                    done.append(metric.name)
                if "estimator" in ctx.__dict__:  # a noise estimator was chosen (lazily, once per measurement)
                    row.update(estimator=ctx.estimator, micro_batch_size=ctx.micro_batch_size)
                del ctx  # this measurement's ingredients (per-sample gradients, operators) go now
            if "out-of-memory" in failed.values():
                _release_memory(device)
        for name in failed:
            row.update(dict.fromkeys(self._columns.get(name, ()), math.nan))
        self._validated = True
        row["status"] = status_text(failed, [m.name for m in self.metrics])
        row["seconds"] = time.perf_counter() - t0
        self._rows.append(row)
        self._log(row)
        return row

    def _fault_reason(self, exc: Exception, where: str) -> str:
        """The status of a fault inside a measurement (recorded, one warning per reason), or ``exc`` raised
        again: with ``on_error="raise"``, or an unexplained error on the first measurement (the user's own
        set-up, e.g. a malformed batch)."""
        reason = fault_reason(exc)
        if self.on_error == "raise" or (reason is None and not self._validated):
            raise exc
        reason = reason or f"error ({type(exc).__name__})"
        self._fault(reason, exc, where)
        return reason

    def _memory_check(self, batch: tuple[Any, Any], device: torch.device) -> str | None:
        """ "memory (...)" when the estimated peak exceeds the free memory of the device, else None."""
        first = batch[0]
        n = int(first.shape[0]) if isinstance(first, Tensor) and first.dim() > 0 else 0
        need = self.estimated_peak(n)
        free = available_memory(device)
        if free is not None and need > free:
            return f"memory (estimated peak {fmt_bytes(need)} above the {fmt_bytes(free)} available)"
        return None

    def _log(self, row: dict[str, Any]) -> None:
        for logger in self.loggers:
            try:
                logger.log(row)
            except Exception as exc:  # the values stay in memory (mon.history)
                if self.on_error == "raise":
                    raise
                reason = f"log {type(logger).__name__} ({type(exc).__name__})"
                row["status"] = reason if row["status"] == "ok" else f"{row['status']}; {reason}"
                self._fault(reason, exc)
        if self.verbose:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k in DEFAULT and isinstance(v, float))
            try:
                print(f"noiseprobe monitor, step {row['step']}: {shown} [{row['status']}]", file=sys.stderr)
            except (OSError, ValueError):
                pass


def fault_reason(exc: BaseException) -> str | None:
    """The status of a fault that may happen inside a measurement of a sound run, or None (a bug or bad
    input: raised at the first measurement)."""
    if isinstance(exc, (NumericalError, FloatingPointError)):
        return "non-finite"
    if isinstance(exc, TooFewSamples):
        return "too-few-samples"
    if isinstance(exc, Refused):
        return exc.status
    if isinstance(exc, NoPerSampleGradients):
        return "no per-sample gradients"
    oom = getattr(torch, "OutOfMemoryError", ())
    if isinstance(exc, MemoryError) or (oom and isinstance(exc, oom)):
        return "out-of-memory"
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in ("out of memory", "can't allocate memory")):
        return "out-of-memory"
    return None


def status_text(failed: dict[str, str], names: list[str]) -> str:
    """ "ok"; one reason when every metric failed for it; else "metric: reason, ..."."""
    if not failed:
        return "ok"
    reasons = set(failed.values())
    if len(failed) == len(names) and len(reasons) == 1:
        return reasons.pop()
    return ", ".join(f"{name}: {failed[name]}" for name in names if name in failed)


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: the CUDA device's free memory, else what the process may still allocate."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return usable_memory()


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
