"""Per-replica random streams derived from (experiment seed, global replica index).

Every replica owns an independent stream, so results do not depend on how replicas are chunked,
on the worker count or on the executor. Simulators draw noise in *blocks* of steps per replica and
stack them, which keeps the per-replica Python overhead at one call per block.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def seed_sequence(seed: int, replica: int, stream: int = 0) -> np.random.SeedSequence:
    """The SeedSequence of one replica; ``stream`` separates independent uses within a replica."""
    return np.random.SeedSequence(entropy=int(seed), spawn_key=(int(replica), int(stream)))


def replica_generators(seed: int, replicas: Sequence[int], stream: int = 0) -> list[np.random.Generator]:
    """One NumPy Generator (PCG64) per replica index."""
    return [np.random.default_rng(seed_sequence(seed, r, stream)) for r in replicas]


def torch_generator(seed: int, replica: int, stream: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch Generator for one replica, seeded from its SeedSequence."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed_sequence(seed, replica, stream).generate_state(1, np.uint64)[0] >> np.uint64(1)))
    return g


class ReplicaStreams:
    """Batched draws from per-replica generators: every method returns an array of shape (R, *shape)."""

    def __init__(self, seed: int, replicas: Sequence[int], stream: int = 0) -> None:
        self.replicas = list(replicas)
        self.gens = replica_generators(seed, self.replicas, stream)

    def __len__(self) -> int:
        return len(self.gens)

    def normal(self, shape: tuple[int, ...] = (), dtype: type = np.float64) -> np.ndarray:
        return np.stack([g.standard_normal(shape, dtype=dtype) for g in self.gens])

    def uniform(self, shape: tuple[int, ...] = ()) -> np.ndarray:
        return np.stack([g.random(shape) for g in self.gens])

    def integers(self, high: int, shape: tuple[int, ...] = ()) -> np.ndarray:
        return np.stack([g.integers(0, high, size=shape) for g in self.gens])

    def permutations(self, n: int, count: int) -> np.ndarray:
        """``count`` independent permutations of range(n) per replica: shape (R, count, n)."""
        return np.stack([np.stack([g.permutation(n) for _ in range(count)]) for g in self.gens])

    def chisquare(self, df: float, shape: tuple[int, ...] = ()) -> np.ndarray:
        return np.stack([g.chisquare(df, size=shape) for g in self.gens])
