"""An embedding's explicit per-sample rows (ids scatter-added per chunk of output rows) equal the one-hot
product Σ_t one-hot(id_it) R_itᵀ, alone and summed with a tied head's float factor, over several chunks."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from noiseprobe.probes import factors
from noiseprobe.probes.factors import Layout, OuterFactor


def _dense(ids: torch.Tensor, right: torch.Tensor, v: int) -> torch.Tensor:
    return torch.einsum("ntv,ntk->nvk", F.one_hot(ids, v).double(), right)


@pytest.mark.parametrize("chunk", [1 << 24, 40])  # one chunk; 5 rows of K = 8 per chunk (several chunks)
def test_ids_rows_and_tied_sum_equal_the_one_hot_product(chunk: int, monkeypatch) -> None:
    monkeypatch.setattr(factors, "CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    n, t, v, k = 3, 7, 13, 8
    ids = torch.randint(0, v, (n, t), generator=g)
    ids[0, :3] = 4  # a repeated id within one sample
    right = torch.randn(n, t, k, generator=g, dtype=torch.float64)
    layout = Layout(v, k, True, False)
    emb = OuterFactor(ids, right, layout)
    dense = _dense(ids, right, v)
    assert torch.allclose(emb.rows(), dense.reshape(n, -1), rtol=1e-12, atol=1e-12)
    head = OuterFactor(
        torch.randn(n, 5, v, generator=g, dtype=torch.float64),
        torch.randn(n, 5, k, generator=g, dtype=torch.float64),
        layout,
    )
    tied = OuterFactor.cat([emb, head])
    total = dense + torch.einsum("ntv,ntk->nvk", head.left, head.right)
    flat = total.reshape(n, -1)
    assert torch.allclose(tied.rows(), flat, rtol=1e-12, atol=1e-12)
    assert torch.allclose(tied.gram(), flat @ flat.T, rtol=1e-12, atol=1e-12)
    assert torch.allclose(tied.sq_norms(), (flat**2).sum(1), rtol=1e-12, atol=1e-12)
