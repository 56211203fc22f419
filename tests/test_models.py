"""The reference models: shapes, causality and padding invariance of the GPT decoder, tied head."""

from __future__ import annotations

import pytest
import torch

from noiseprobe.core.errors import ConfigError
from noiseprobe.models import GPT, GPTConfig, small_cnn, small_resnet, token_batch


def test_gpt_is_causal_ignores_padding_and_ties_head() -> None:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab=30, width=16, heads=2, layers=2, T=10)
    model = GPT(cfg)
    assert model.head.weight is model.tok.weight
    ids, targets, mask = token_batch(cfg, 6, seed=1)
    assert (mask[:, 0] == 1).all() and (mask == 0).any() and (targets[mask == 0] == 0).all()
    out = model(ids, mask)
    assert out.shape == (6, 10, 30)
    changed = ids.clone()
    changed[mask == 0] = 5  # padding tokens do not reach real tokens
    torch.testing.assert_close(model(changed, mask)[mask == 1], out[mask == 1])
    later = ids.clone()
    later[:, 6:] = 3  # nor do later tokens reach earlier ones
    torch.testing.assert_close(model(later, mask)[:, :6], out[:, :6])
    assert not torch.allclose(model(later, mask)[:, 6:][mask[:, 6:] == 1], out[:, 6:][mask[:, 6:] == 1])
    with pytest.raises(ConfigError, match="heads"):
        GPTConfig(width=10, heads=3)
    with pytest.raises(ConfigError, match="ids"):
        model(torch.zeros(1, 11, dtype=torch.long))


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_cnn_and_resnet_shapes(dim: int) -> None:
    x = torch.randn(2, 3, *([7] * dim))
    assert small_cnn(dim)(x).shape == (2, 5)
    assert small_resnet(blocks=2)(torch.randn(2, 3, 6, 6)).shape == (2, 5)


def test_resnet18_layout() -> None:
    """11,173,962 parameters at width 64 and 10 classes: the count of the CIFAR ResNet-18 (torchvision's
    layout with a 3×3 stem and no max-pool); GroupNorm keeps the count; logits (N, classes)."""
    from noiseprobe.models import resnet18

    for norm in ("batch", "group"):
        model = resnet18(norm=norm)
        assert sum(p.numel() for p in model.parameters()) == 11_173_962
    small = resnet18(width=4, classes=3, norm="group")
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ConfigError, match="norm"):
        resnet18(norm="layer")
