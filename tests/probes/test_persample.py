"""Per-sample gradients: the factored (hooks) form against torch.func, and torch.func against plain autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.probes.factors import OuterFactor
from noiseprobe.probes.persample import (
    HookFactors,
    JacobianFactors,
    per_sample_gradients,
    supports_hooks,
)

CE = nn.CrossEntropyLoss(reduction="none")


def _mlp(bias: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 6, bias=bias), nn.Tanh(), nn.Linear(6, 4, bias=bias), nn.ReLU(), nn.Linear(4, 3)
    ).double()


def _data(n: int = 9, d: int = 5, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _autograd_rows(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Oracle: one ordinary backward pass per sample."""
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad()
        loss_fn(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad]))
    return torch.stack(rows)


@pytest.mark.parametrize("bias", [True, False])
def test_hook_factors_match_torch_func(bias: bool) -> None:
    model, (x, y) = _mlp(bias), _data()
    model[2].weight.requires_grad_(False)  # a frozen weight with a trainable bias
    fac, ref = HookFactors(model, CE, x, y), JacobianFactors(model, CE, x, y)
    j = ref.dense()
    assert fac.num_params == j.shape[1] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    torch.testing.assert_close(fac.dense(), j, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fac.gram(), j @ j.T, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fac.sq_norms(), (j * j).sum(1), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fac.sq_sum(), (j * j).sum(0), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fac.mean(), j.mean(0), rtol=1e-12, atol=1e-14)
    v, u = torch.randn(j.shape[1], 3, dtype=torch.float64), torch.randn(x.shape[0], 2, dtype=torch.float64)
    torch.testing.assert_close(fac.jvp(v), j @ v, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(fac.jvp(v[:, 0]), j @ v[:, 0], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(fac.vjp(u), j.T @ u, rtol=1e-12, atol=1e-13)


def _conv_net(groups: int = 1, bias: bool = True) -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=groups, bias=bias),
        nn.Tanh(),
        nn.Conv2d(4, 3, 2, dilation=2, bias=bias),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 3),
    ).double()


@pytest.mark.parametrize("bias", [True, False])
def test_conv_hook_factors_match_plain_autograd(bias: bool) -> None:
    model = _conv_net(bias=bias)
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(6, 2, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g)
    fac = per_sample_gradients(model, CE, x, y)
    assert isinstance(fac, HookFactors)
    j = _autograd_rows(model, CE, x, y)
    torch.testing.assert_close(fac.dense(), j, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fac.gram(), j @ j.T, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fac.sq_norms(), (j * j).sum(1), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fac.sq_sum(), (j * j).sum(0), rtol=1e-12, atol=1e-14)
    v = torch.randn(j.shape[1], 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(fac.jvp(v), j @ v, rtol=1e-12, atol=1e-13)


def test_grouped_conv_hooks_and_torch_func_match_plain_autograd() -> None:
    model = _conv_net(groups=2)
    x = torch.randn(5, 2, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    assert supports_hooks(model)
    j = _autograd_rows(model, CE, x, y)
    auto, func = per_sample_gradients(model, CE, x, y), per_sample_gradients(model, CE, x, y, "func")
    assert isinstance(auto, HookFactors) and isinstance(func, JacobianFactors)
    torch.testing.assert_close(auto.dense(), j, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(func.dense(), j, rtol=1e-12, atol=1e-14)


def test_hook_factors_match_plain_autograd_mse() -> None:
    model, (x, _) = _mlp(), _data()
    y = torch.randn(x.shape[0], 3, dtype=torch.float64)

    def mse(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((out - t) ** 2).sum(1)

    fac = per_sample_gradients(model, mse, x, y)
    assert isinstance(fac, HookFactors)
    torch.testing.assert_close(fac.dense(), _autograd_rows(model, mse, x, y), rtol=1e-12, atol=1e-14)


def test_weight_sharing_linear_stays_factored() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(6, 2)).double()
    x, y = torch.randn(5, 2, 4, dtype=torch.float64), torch.randint(0, 2, (5,))
    fac = per_sample_gradients(model, CE, x, y, "auto")
    assert isinstance(fac, HookFactors) and all(isinstance(f, OuterFactor) for _, f in fac.blocks)
    torch.testing.assert_close(fac.dense(), _autograd_rows(model, CE, x, y), rtol=1e-12, atol=1e-14)


def test_invalid_inputs_raise_config_error() -> None:
    model, (x, y) = _mlp(), _data()
    with pytest.raises(ConfigError, match="per-sample loss"):
        per_sample_gradients(model, nn.CrossEntropyLoss(), x, y, "hooks")
    with pytest.raises(ConfigError, match="per-sample loss"):
        per_sample_gradients(model, nn.CrossEntropyLoss(), x, y, "func")
    with pytest.raises(ConfigError, match="method"):
        per_sample_gradients(model, CE, x, y, "backpack")
    with pytest.raises(ConfigError, match="x, y"):
        per_sample_gradients(model, CE, x, y[:3])
    with pytest.raises(ConfigError, match="chunk_size"):
        per_sample_gradients(model, CE, x, y, "func", chunk_size=0)
