"""Data-parallel training (gloo, 2 CPU processes): the monitor's tr Σ, |G|², B_simple and temperature
equal one process measuring the global batch; the two-batch estimator is unbiased for the exact values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from noiseprobe import NoiseMonitor
from noiseprobe.monitor.metrics import TwoBatch

LOSS = nn.CrossEntropyLoss(reduction="none")
WORLD, N_GLOBAL, STEPS = 2, 32, 300


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()


def _model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def _worker(rank: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=WORLD)
    x, y = _data()
    model = nn.parallel.DistributedDataParallel(_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights fixed: every step samples the same law
    exact = NoiseMonitor(model, LOSS, every=10**9, metrics=["tr_sigma", "g_sq", "b_simple", "temperature"])
    local = slice(rank * N_GLOBAL // WORLD, (rank + 1) * N_GLOBAL // WORLD)
    first = exact.measure((x[:N_GLOBAL][local], y[:N_GLOBAL][local]), opt)
    micro = NoiseMonitor(
        model, LOSS, metrics=["tr_sigma", "g_sq", "b_simple", "temperature"], estimator="micro-batch", micro_batches=4
    ).measure((x[:N_GLOBAL][local], y[:N_GLOBAL][local]), opt)
    mon = NoiseMonitor(model, LOSS, every=1, metrics=[TwoBatch(model)])
    gen = torch.Generator().manual_seed(100 + rank)
    rows = []
    for _ in range(STEPS):
        idx = torch.randint(0, len(x), (N_GLOBAL // WORLD,), generator=gen)
        opt.zero_grad()
        LOSS(model(x[idx]), y[idx]).mean().backward()
        rows.append(mon.step((x[idx], y[idx]), opt))
        opt.step()
    if rank == 0:
        with open(out, "w") as fh:
            json.dump({"first": first, "micro": micro, "rows": rows}, fh)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_result(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(str(d / "init"), str(d / "out.json")), nprocs=WORLD, start_method="spawn")
    return json.loads((d / "out.json").read_text())


def test_exact_statistics_equal_one_process_on_the_global_batch(ddp_result):
    x, y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ref = NoiseMonitor(model, LOSS, every=1, metrics=["tr_sigma", "g_sq", "b_simple", "temperature"]).measure(
        (x[:N_GLOBAL], y[:N_GLOBAL]), opt
    )
    for key in ("tr_sigma", "g_sq", "b_simple", "b_simple_lo", "b_simple_hi", "tr_sigma_se", "g_sq_se"):
        assert ddp_result["first"][key] == pytest.approx(ref[key], rel=1e-9), key
    assert ddp_result["first"]["temperature"] == pytest.approx(ref["temperature"], rel=1e-9, nan_ok=True)


def test_micro_batch_statistics_equal_one_process_on_the_global_batch(ddp_result):
    """4 micro-batches per rank: the estimates of one process splitting the global batch into 8 (rank order)."""
    x, y = _data()
    model = _model()
    ref = NoiseMonitor(model, LOSS, metrics=["tr_sigma", "g_sq", "b_simple"], estimator="micro-batch", micro_batches=8)
    ref = ref.measure((x[:N_GLOBAL], y[:N_GLOBAL]))
    assert ddp_result["micro"]["micro_batch_size"] == ref["micro_batch_size"] == N_GLOBAL // 8
    for key in ("tr_sigma", "g_sq", "b_simple", "b_simple_lo", "b_simple_hi", "tr_sigma_se", "g_sq_se"):
        assert ddp_result["micro"][key] == pytest.approx(ref[key], rel=1e-9), key


def test_two_batch_estimator_is_unbiased(ddp_result):
    x, y = _data()
    model = _model()
    J = torch.stack(
        [
            torch.cat(
                [
                    g.flatten()
                    for g in torch.autograd.grad(
                        LOSS(model(x[i : i + 1]), y[i : i + 1]).sum(), list(model.parameters())
                    )
                ]
            )
            for i in range(len(x))
        ]
    )
    mean = J.mean(0)
    g_sq, tr = float(mean @ mean), float(((J - mean) ** 2).sum(1).mean())  # population over the data set
    est = {k: np.array([r[f"two_batch_{k}"] for r in ddp_result["rows"]]) for k in ("g_sq", "tr_sigma")}
    for k, true in (("g_sq", g_sq), ("tr_sigma", tr)):
        v = est[k]
        assert abs(v.mean() - true) <= 4 * v.std(ddof=1) / math.sqrt(len(v)), (k, v.mean(), true)
