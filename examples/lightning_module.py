"""NoiseMonitor as a Lightning callback on the embedded MNIST digits (needs ``lightning``).

python examples/lightning_module.py [--epochs 2] [--out runs/monitor-lightning]
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from torch import nn

from noiseprobe.data.embedded import load_default
from noiseprobe.monitor.lightning import LightningNoiseMonitor

LOSS = nn.CrossEntropyLoss(reduction="none")


class Classifier(pl.LightningModule):
    def __init__(self, d_in: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, 64), nn.GELU(), nn.LayerNorm(64), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        return LOSS(self(batch[0]), batch[1]).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def main(argv: list[str] | None = None) -> LightningNoiseMonitor:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--out", default="runs/monitor-lightning")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    x, y, _, _ = load_default(n_train=args.n_train)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=50, shuffle=True)
    monitor = LightningNoiseMonitor(LOSS, every=5, log_dir=args.out, metrics=["tr_sigma", "g_sq", "b_simple"])
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        callbacks=[monitor],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="auto",
        default_root_dir=args.out,
    )
    trainer.fit(Classifier(x.shape[1]), loader)
    assert monitor.monitor is not None
    print(monitor.monitor.history.to_string(index=False))
    return monitor


if __name__ == "__main__":
    main()
