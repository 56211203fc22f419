"""NoiseMonitor as a PyTorch Lightning callback (needs ``lightning``; ``pip install 'noiseprobe[lightning]'``).

::

    trainer = lightning.Trainer(callbacks=[LightningNoiseMonitor(loss_fn, every=50, log_dir="runs/mon")])

The batch is captured in ``on_train_batch_start`` and measured in ``on_before_optimizer_step`` (once per
optimizer step, before it). It must be ``(inputs, targets)``, or give ``split(batch) -> (inputs,
targets)``. With ``accumulate_grad_batches = k`` the measured batch is the last micro-batch and the batch
size in the formulas is k × its size (unless ``effective_batch_size`` is given).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch

from noiseprobe.core.errors import ConfigError
from noiseprobe.monitor.monitor import NoiseMonitor, refuse_inline


class LightningNoiseMonitor(pl.Callback):
    """Measure with :class:`NoiseMonitor` inside ``lightning.Trainer.fit``; ``.monitor.history`` afterwards."""

    def __init__(
        self,
        loss_fn: Callable[[Any, Any], torch.Tensor],
        every: int = 50,
        split: Callable[[Any], tuple[Any, Any]] | None = None,
        **monitor_kwargs: Any,
    ) -> None:
        refuse_inline("LightningNoiseMonitor", monitor_kwargs)
        self.loss_fn, self.every, self.split, self.kwargs = loss_fn, every, split, monitor_kwargs
        self.monitor: NoiseMonitor | None = None
        self._batch: Any = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.monitor = NoiseMonitor(pl_module, self.loss_fn, every=self.every, **self.kwargs)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.split is None and not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ConfigError(
                "batch",
                f"a {type(batch).__name__}" + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""),
                "a pair (inputs, targets), or LightningNoiseMonitor(split=...) making one from the batch, e.g. "
                "split=lambda batch: (batch, batch) for a single tensor",
            )
        self._batch = self.split(batch) if self.split is not None else batch

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        assert self.monitor is not None
        k = trainer.accumulate_grad_batches
        if self.monitor.effective_batch_size is None and k > 1:
            self.monitor.effective_batch_size = k * len(self._batch[1])
        self.monitor.step(self._batch, optimizer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is not None:
            self.monitor.close()
