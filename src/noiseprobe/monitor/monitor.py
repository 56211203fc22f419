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
formulas are listed in :mod:`noiseprobe.monitor.metrics` and docs/monitor.md.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_int
from noiseprobe.monitor import ddp
from noiseprobe.monitor.loggers import Logger, make_loggers
from noiseprobe.monitor.metrics import DEFAULT, METRICS, Context, resolve_metrics
from noiseprobe.monitor.predictions import loss_buffer
from noiseprobe.probes.wrappers import eager, unwrap

Forward = Callable[[nn.Module, Any], Tensor]


@contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Restore buffers (e.g. BatchNorm statistics), RNG states and train/eval flags on exit."""
    flags = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    grads = [(p, p.grad) for p in model.parameters()]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, g in grads:
            p.grad = g
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


class NoiseMonitor:
    """Measure gradient-noise quantities every ``every`` optimizer steps on the current batch.

    ``metrics``: "default" (tr_sigma, g_sq, b_simple with its interval, temperature, top-k of C), "all",
    or a list of names from :data:`noiseprobe.monitor.metrics.METRICS`. ``forward(model, inputs)`` serves
    models that take dicts or keyword arguments (default ``model(inputs)``). ``effective_batch_size`` is
    the batch size S of the update (with gradient accumulation, micro-batch × accumulation steps); default
    the number of samples in the measured batch. ``log_dir``: CSV and Parquet logs there (plus
    "tensorboard"/"mlflow" in ``loggers``). ``verbose``: a status line per measurement (default: when
    stderr is a terminal).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Tensor],
        every: int = 50,
        metrics: str | Sequence[str] = "default",
        log_dir: str | Path | None = None,
        forward: Forward | None = None,
        effective_batch_size: int | None = None,
        *,
        top_k: int = 10,
        loggers: Sequence[str] = (),
        verbose: bool | None = None,
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
        self.loggers: list[Logger] = make_loggers(log_dir, loggers)
        self.verbose = sys.stderr.isatty() if verbose is None else bool(verbose)
        self.steps = 0
        self.group = ddp.process_group(model)
        self.hook: ddp.GradNormHook | None = None
        if "two_batch" in self.metrics:
            if self.group is None:
                raise ConfigError("metrics", "two_batch", "a DistributedDataParallel model in a world of >= 2 ranks")
            self.hook = ddp.GradNormHook(self.group)
            model.register_comm_hook(None, self.hook.allreduce)
        self._rows: list[dict[str, Any]] = []
        self._state: dict[str, Any] = {}  # carried between measurements (warm starts)

    # -- the loop --------------------------------------------------------------------------------
    def step(
        self,
        batch: tuple[Any, Any],
        optimizer: torch.optim.Optimizer | None = None,
        *,
        loss: Tensor | float | None = None,
    ) -> dict[str, Any]:
        """Count one optimizer step; measure on ``batch`` when the count is a multiple of ``every``
        (steps 0, every, 2·every, ...). Call before ``optimizer.step()``. Returns what it measured ({} if
        nothing). ``loss``: the mean training loss of this step's batch, already computed by the loop (kept
        as a tensor, no extra forward and no device sync); the ``fluctuation`` metric compares the variance
        of these values since the previous measurement with paper 002's prediction."""
        if loss is not None:
            self._state.setdefault("losses", loss_buffer(self.every)).append(torch.as_tensor(loss).detach())
        step, self.steps = self.steps, self.steps + 1
        if step % self.every:
            if self.hook is not None:
                self.hook.take()  # this step's norms are not measured: start the next step afresh
            return {}
        return self._measure(batch, optimizer, step)

    def measure(self, batch: tuple[Any, Any], optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
        """Measure now on ``batch`` (recorded at the current step count)."""
        return self._measure(batch, optimizer, self.steps)

    @property
    def history(self) -> pd.DataFrame:
        """One row per measurement: ``step``, ``seconds`` and one column per metric value."""
        return pd.DataFrame(self._rows)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()

    # -- internals -------------------------------------------------------------------------------
    def _measure(self, batch: tuple[Any, Any], optimizer: torch.optim.Optimizer | None, step: int) -> dict[str, Any]:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ConfigError("batch", type(batch).__name__, "a pair (inputs, targets)")
        model = unwrap(self.model)
        t0 = time.perf_counter()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with preserved(model), torch.autocast(device.type, enabled=False), eager():
            ctx = Context(
                model,
                self.loss_fn,
                batch[0],
                batch[1],
                self.forward,
                optimizer,
                self.effective_batch_size,
                self.top_k,
                self._state,
                self.group,
                self.hook,
            )
            row: dict[str, Any] = {"step": step}
            self._state["step"] = step
            for name in self.metrics:
                row.update(METRICS[name](ctx))
        row["seconds"] = time.perf_counter() - t0
        self._rows.append(row)
        for logger in self.loggers:
            logger.log(row)
        if self.verbose:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k in DEFAULT and isinstance(v, float))
            print(f"noiseprobe monitor, step {step}: {shown}", file=sys.stderr)
        return row
