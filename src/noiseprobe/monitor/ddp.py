"""Data-parallel training (torch.distributed): exact cross-rank statistics and McCandlish et al.'s
two-batch estimator.

*Exact.* tr Σ, |G|² and the jackknife of B_simple need only |g_i|², r_i = g_i·s and |s|² with
s = Σ_j g_j the gradient sum over the *global* batch (:func:`~noiseprobe.monitor.gns.noise_scale_from_sums`).
Each rank all-reduces its local sum (P numbers, as DDP does with the gradient), computes its samples'
|g_i|² and g_i·s, and all-gathers those 2·N_local numbers: the result equals one process measuring the
whole global batch.

*Two-batch* (McCandlish et al. 2018, App. A): a DDP communication hook records, for each bucket, the
squared norm of the rank's local gradient before the all-reduce and of the averaged gradient after it;
summed over buckets these are |G_{B_local}|² and |G_{B_global}|², whose rank-average and the exact
relation E|G_B|² = |G|² + tr Σ/B give unbiased |G|² and tr Σ (:func:`~noiseprobe.monitor.gns.two_batch`)
at no extra backward pass. It is the estimator the large frameworks use; the monitor reports it beside the
exact per-sample value so the two can be compared.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def process_group(model: torch.nn.Module) -> Any | None:
    """The process group of a DistributedDataParallel model in an initialised world of > 1 ranks, else None."""
    if not (
        isinstance(model, torch.nn.parallel.DistributedDataParallel)
        and dist.is_available()
        and dist.is_initialized()
        and dist.get_world_size() > 1
    ):
        return None
    return model.process_group


def all_sum(t: Tensor, group: Any) -> Tensor:
    out = t.clone()
    dist.all_reduce(out, group=group)
    return out


def all_cat(t: Tensor, group: Any) -> Tensor:
    """Concatenate a 1-d tensor of any length over ranks (rank order)."""
    world = dist.get_world_size(group)
    n = torch.tensor([t.numel()], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    m = int(max(int(s) for s in sizes))
    padded = torch.zeros(m, dtype=t.dtype, device=t.device)
    padded[: t.numel()] = t
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])


class GradNormHook:
    """DDP communication hook: all-reduce (average) as DDP does, recording |local|² and |averaged|²."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.local_sq = 0.0
        self.global_sq = 0.0

    def allreduce(self, state, bucket):  # type: ignore[no-untyped-def]  # DDP rejects string annotations here
        """(state, dist.GradBucket) -> Future[Tensor]: the averaged bucket, norms recorded."""
        buf = bucket.buffer()
        self.local_sq += float(buf.double().pow(2).sum())
        world = dist.get_world_size(self.group)
        fut = dist.all_reduce(buf.div_(world), group=self.group, async_op=True).get_future()

        def done(f: torch.futures.Future[Any]) -> Tensor:
            t: Tensor = f.value()[0]
            self.global_sq += float(t.double().pow(2).sum())
            return t

        return fut.then(done)

    def take(self) -> tuple[float, float]:
        """(rank-averaged |G_local|², |G_global|²) of the last synchronised backward; resets."""
        local = all_sum(torch.tensor([self.local_sq], dtype=torch.float64), self.group)
        out = float(local) / dist.get_world_size(self.group), self.global_sq
        self.local_sq = self.global_sq = 0.0
        return out
