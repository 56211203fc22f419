"""Per-replica streams do not depend on which other replicas are drawn alongside."""

from __future__ import annotations

import numpy as np

from noiseprobe.core.seeding import ReplicaStreams, torch_generator


def test_streams_independent_of_grouping():
    full = ReplicaStreams(3, range(10)).normal((4, 2))
    part = ReplicaStreams(3, [7, 2]).normal((4, 2))
    np.testing.assert_array_equal(part, full[[7, 2]])


def test_streams_differ_between_replicas_seeds_and_uses():
    a = ReplicaStreams(3, [0, 1]).normal((1000,))
    assert abs(np.corrcoef(a)[0, 1]) < 0.15
    assert not np.array_equal(ReplicaStreams(4, [0]).normal((5,)), ReplicaStreams(3, [0]).normal((5,)))
    assert not np.array_equal(ReplicaStreams(3, [0], stream=1).normal((5,)), ReplicaStreams(3, [0]).normal((5,)))


def test_torch_generator_reproducible():
    import torch

    x = torch.randn(5, generator=torch_generator(1, 2))
    y = torch.randn(5, generator=torch_generator(1, 2))
    z = torch.randn(5, generator=torch_generator(1, 3))
    assert torch.equal(x, y) and not torch.equal(x, z)
