"""The monitor inside Lightning: measured once per optimizer step, on the step's batch, values as in a
plain loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from noiseprobe.core.errors import ConfigError


def test_lightning_callback_measures_like_the_plain_loop(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from noiseprobe.monitor.lightning import LightningNoiseMonitor

    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    loss_fn = nn.CrossEntropyLoss(reduction="none")

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
            self.seen: list[torch.Tensor] = []

        def forward(self, inputs):
            return self.net(inputs)

        def training_step(self, batch, _):
            return loss_fn(self(batch[0]), batch[1]).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Module()
    start = [p.detach().clone() for p in module.parameters()]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    cb = LightningNoiseMonitor(loss_fn, every=2, metrics=["tr_sigma", "g_sq"])
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[cb],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader)
    hist = cb.monitor.history
    assert list(hist["step"]) == [0, 2]
    # step 0 measured the first batch at the initial weights: recompute it independently
    ref = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    with torch.no_grad():
        for p, s in zip(ref.parameters(), start):
            p.copy_(s)
    rows = [
        torch.cat(
            [
                g.flatten()
                for g in torch.autograd.grad(loss_fn(ref(x[i : i + 1]), y[i : i + 1]).sum(), list(ref.parameters()))
            ]
        )
        for i in range(16)
    ]
    J = torch.stack(rows).double()
    tr = float(((J - J.mean(0)) ** 2).sum() / 15)
    assert hist["tr_sigma"].iloc[0] == pytest.approx(tr, rel=1e-5)


def test_lightning_single_tensor_batch_error_names_split():
    pytest.importorskip("lightning.pytorch")
    from noiseprobe.monitor.lightning import LightningNoiseMonitor

    cb = LightningNoiseMonitor(lambda o, t: ((o - t) ** 2).sum(1))
    with pytest.raises(ConfigError, match=r"split=lambda batch: \(batch, batch\)"):
        cb.on_train_batch_start(None, None, torch.randn(4, 3), 0)
    LightningNoiseMonitor(lambda o, t: o, split=lambda b: (b, b)).on_train_batch_start(None, None, torch.randn(4, 3), 0)


def test_callbacks_refuse_inline_at_construction():
    """The callbacks measure on their own pass and cannot hand the step's loss= to the monitor: inline=True
    is one ConfigError naming ``inline`` when the callback is built, never a failure mid-training."""
    pytest.importorskip("lightning.pytorch")
    pytest.importorskip("transformers")
    from noiseprobe.monitor.hf import TransformersNoiseMonitor
    from noiseprobe.monitor.lightning import LightningNoiseMonitor

    with pytest.raises(ConfigError, match="inline.*LightningNoiseMonitor"):
        LightningNoiseMonitor(nn.CrossEntropyLoss(reduction="none"), inline=True)
    with pytest.raises(ConfigError, match="inline.*TransformersNoiseMonitor"):
        TransformersNoiseMonitor(inline=True)
    LightningNoiseMonitor(nn.CrossEntropyLoss(reduction="none"), inline=False)  # the two-pass mode is fine
