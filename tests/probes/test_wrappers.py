"""Wrapped models: DDP / DataParallel / torch.compile are unwrapped to the user's module; FSDP-sharded models
(FullyShardedDataParallel and fully_shard, gloo, 2 CPU processes) are refused with a one-line ConfigError
by the monitor's constructor and by the per-sample engine."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from noiseprobe import NoiseMonitor
from noiseprobe.core.errors import ConfigError
from noiseprobe.probes.persample import per_sample_gradients
from noiseprobe.probes.wrappers import unwrap

LOSS = nn.CrossEntropyLoss(reduction="none")


def test_nested_wrappers_unwrap_to_the_module() -> None:
    model = nn.Linear(3, 2)
    compiled = torch.compile(nn.DataParallel(torch.compile(model, backend="eager")), backend="eager")
    assert unwrap(compiled) is model and unwrap(model) is model


def _attempts(model: nn.Module) -> list[str]:
    x, y = torch.randn(4, 5), torch.randint(0, 2, (4,))
    found = []
    for attempt in (lambda: NoiseMonitor(model, LOSS), lambda: per_sample_gradients(model, LOSS, x, y)):
        try:
            attempt()
            found.append("no error")
        except ConfigError as err:
            found.append(str(err))
    return found


def _worker(rank: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

    torch.manual_seed(0)
    fsdp1 = FullyShardedDataParallel(nn.Sequential(nn.Linear(5, 8), nn.Linear(8, 2)), device_id=torch.device("cpu"))
    fsdp2 = nn.Sequential(nn.Linear(5, 8), nn.Linear(8, 2))
    fully_shard(fsdp2[0])
    fully_shard(fsdp2)
    fsdp2(torch.randn(3, 5)).sum().backward()  # a working FSDP2 model on CPU
    found = {"fsdp1": _attempts(fsdp1), "fsdp2": _attempts(fsdp2)}
    if rank == 0:
        with open(out, "w") as fh:
            json.dump(found, fh)
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~35 s on a loaded 2-core machine
def test_fsdp_models_are_refused_in_one_line(tmp_path) -> None:
    mp.start_processes(
        _worker, args=(str(tmp_path / "init"), str(tmp_path / "out.json")), nprocs=2, start_method="spawn"
    )
    found = json.loads((tmp_path / "out.json").read_text())
    for kind, messages in found.items():
        assert len(messages) == 2, kind
        for msg in messages:
            assert msg.startswith("model = 'FSDP-sharded (model)' is invalid") and "\n" not in msg, (kind, msg)
            assert "DistributedDataParallel" in msg
