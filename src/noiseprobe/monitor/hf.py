"""NoiseMonitor as a ``transformers`` TrainerCallback (needs ``transformers``).

The Trainer hands callbacks no batch, so a *probe batch* is drawn once, at the start of training, from
the Trainer's training dataloader (its first batch, or ``probe_batches`` batches concatenated) and every
measurement uses it: the quantities then change only because the weights do. Measured in
``on_pre_optimizer_step`` (before each optimizer step, after gradient clipping), every ``every`` steps.
The batch size in the formulas is the Trainer's per-device batch × gradient accumulation × world size.

``loss_fn(output, batch)`` gets the model output and the batch dict; the default is the causal-LM loss
per sequence, :func:`noiseprobe.monitor.hf.causal_lm_losses`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback

from noiseprobe.monitor.monitor import NoiseMonitor, refuse_inline
from noiseprobe.probes.sample_losses import model_output, token_mean


def causal_lm_losses(output: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-sequence losses ℓ_i whose mean is the Trainer's token-mean loss: with m_it = [label ≠ −100]
    after the one-token shift, ℓ_i = N Σ_t m_it ℓ_it / Σ_{j,t} m_jt (docs/monitor.md)."""
    logits = model_output(output)
    labels = batch["labels"][:, 1:]
    tok = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="none"
    ).view(labels.shape)
    return token_mean(tok, labels != -100)


def _forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
    return model(**{k: v for k, v in batch.items() if k != "labels"})


class TransformersNoiseMonitor(TrainerCallback):
    """Measure with :class:`NoiseMonitor` inside ``transformers.Trainer.train``; ``.monitor.history``."""

    def __init__(
        self,
        every: int = 50,
        loss_fn: Callable[[Any, Any], torch.Tensor] = causal_lm_losses,
        probe_batches: int = 1,
        **monitor_kwargs: Any,
    ) -> None:
        refuse_inline("TransformersNoiseMonitor", monitor_kwargs)
        self.every, self.loss_fn, self.probe_batches, self.kwargs = every, loss_fn, probe_batches, monitor_kwargs
        self.monitor: NoiseMonitor | None = None
        self._probe: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: torch.nn.Module | None = None,
        train_dataloader: Any = None,
        **kwargs: Any,
    ) -> None:
        batches = []
        for batch in train_dataloader:
            batches.append(batch)
            if len(batches) == self.probe_batches:
                break
        probe = {k: torch.cat([b[k] for b in batches]).to(args.device) for k in batches[0]}
        self._probe = (probe, probe)
        size = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
        self.kwargs.setdefault("effective_batch_size", size)
        assert model is not None  # transformers' Trainer passes the model to on_train_begin
        self.monitor = NoiseMonitor(model, self.loss_fn, every=self.every, forward=_forward, **self.kwargs)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        assert self.monitor is not None and self._probe is not None
        self.monitor.step(self._probe, getattr(optimizer, "optimizer", optimizer))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()
