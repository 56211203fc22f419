"""NoiseMonitor in a plain PyTorch loop on the embedded MNIST digits (nothing downloaded).

    python examples/plain_loop.py [--steps 200] [--out runs/monitor-plain]

Prints B_simple (the critical-batch estimate of McCandlish et al.) with its 95 % interval as training
goes, and leaves monitor.csv / monitor.parquet in --out (``noiseprobe report --out`` draws them).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from noiseprobe import NoiseMonitor
from noiseprobe.data.embedded import load_default


def main(argv: list[str] | None = None) -> NoiseMonitor:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", default="runs/monitor-plain")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    x_train, y_train, _, _ = load_default(n_train=2000)
    model = nn.Sequential(nn.Linear(x_train.shape[1], 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss(reduction="none")  # per-sample losses: the monitor's convention

    mon = NoiseMonitor(model, loss_fn, every=args.every, log_dir=args.out, verbose=True)  # 1
    for step in range(args.steps):
        idx = torch.randint(0, len(x_train), (args.batch,))
        batch = (x_train[idx], y_train[idx])
        optimizer.zero_grad()
        loss_fn(model(batch[0]), batch[1]).mean().backward()
        mon.step(batch, optimizer)  # 2
        optimizer.step()
    mon.close()
    print(mon.history[["step", "b_simple", "b_simple_lo", "b_simple_hi", "temperature"]].to_string(index=False))
    return mon  # 3: mon.history


if __name__ == "__main__":
    main()
