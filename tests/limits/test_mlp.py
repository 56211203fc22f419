"""MLPLoss: forward against torch.nn, exact Hessian diagonal against the dense autograd Hessian."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.limits import losses as Ls
from noiseprobe.limits.mlp import MLPLoss

ARCHS = [
    ((3, 4, 2), "tanh", True),
    ((3, 5, 4, 2), "tanh", True),
    ((2, 3, 3, 3, 1), "tanh", False),
    ((3, 4, 3, 2), "relu", True),
    ((3, 4, 1), "linear", False),
    ((4, 3), "tanh", True),
]


def _data(sizes: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(7, sizes[0], generator=gen, dtype=torch.float64),
        torch.randn(7, sizes[-1], generator=gen, dtype=torch.float64),
    )


@pytest.mark.parametrize("sizes, activation, bias", ARCHS)
def test_forward_matches_torch_nn(sizes: tuple[int, ...], activation: str, bias: bool) -> None:
    X, y = _data(sizes, 0)
    loss = MLPLoss(sizes, X, y, activation, bias)
    w = torch.randn(loss.d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    act = {"tanh": nn.Tanh, "relu": nn.ReLU, "linear": nn.Identity}[activation]
    mods: list[nn.Module] = []
    for (W, b), (i, o) in zip(loss.layers(w), itertools.pairwise(sizes)):
        lin = nn.Linear(i, o, bias=bias, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(W)
            if bias:
                lin.bias.copy_(b)
        mods += [lin, act()]
    f = nn.Sequential(*mods[:-1])(X)
    assert torch.allclose(loss(w), 0.5 * ((f - y) ** 2).sum(-1).mean(), atol=1e-14)


@pytest.mark.parametrize("sizes, activation, bias", ARCHS)
def test_hessian_diagonal_is_exact(sizes: tuple[int, ...], activation: str, bias: bool) -> None:
    X, y = _data(sizes, 2)
    loss = MLPLoss(sizes, X, y, activation, bias)
    w = torch.randn(2, 3, loss.d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    dense = Ls.hessian(loss, w).diagonal(dim1=-2, dim2=-1)
    assert torch.allclose(loss.hessian_diagonal(w), dense, rtol=1e-12, atol=1e-12)


def test_invalid_configuration_raises() -> None:
    X, y = _data((3, 2), 0)
    with pytest.raises(ConfigError):
        MLPLoss((3,), X, y)
    with pytest.raises(ConfigError):
        MLPLoss((3, 4, 1), X, y)  # y has 2 outputs
    with pytest.raises(ConfigError):
        MLPLoss((3, 4, 2), X, y, activation="gelu")
    with pytest.raises(ConfigError):
        MLPLoss((3, 4, 2), X, y)(torch.zeros(5, dtype=torch.float64))
