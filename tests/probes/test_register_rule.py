"""``register_rule``: a user's rule for a user's module type, registered without editing the package."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

import noiseprobe as npb
from noiseprobe.core.errors import ConfigError
from noiseprobe.probes.factors import Factor, RowsFactor
from noiseprobe.probes.persample import per_sample_gradients
from noiseprobe.probes.rules import rule_for
from noiseprobe.probes.rules.base import Call, Named, Rule, batch_leading
from tests.probes.oracle import assert_products, func_rows


class Scale(nn.Module):
    """y = x ∘ s + b, a per-feature scale and shift on (N, T, d) tokens."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.s, self.b = nn.Parameter(torch.randn(d)), nn.Parameter(torch.randn(d))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.s + self.b


calls: list[str] = []


@npb.register_rule(Scale)
class ScaleRule(Rule[Scale]):
    """∇_s ℓ_i = Σ_t g_it ∘ x_it, ∇_b ℓ_i = Σ_t g_it."""

    def factor(self, module: Scale, call: Call, params: Named, n: int) -> Factor:
        calls.append(call.name)
        x, g = batch_leading(call, call.input, n), call.grads[0]
        rows = {"s": (g * x).reshape(n, -1, x.shape[-1]).sum(1), "b": g.reshape(n, -1, g.shape[-1]).sum(1)}
        return RowsFactor(torch.cat([rows[name] for name, _ in params], 1))


def test_a_registered_user_rule_gives_the_dense_per_sample_gradients() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), Scale(4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(7, 5, 6, dtype=torch.float64), torch.randn(7, 5, 3, dtype=torch.float64)

    def per_sample(out: Tensor, t: Tensor) -> Tensor:
        return ((out - t) ** 2).mean((1, 2))

    assert isinstance(rule_for(model[1]), ScaleRule)
    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no vmap fall-back warning: the rule handles Scale
        fac = per_sample_gradients(model, per_sample, x, y)
    assert calls == ["model.1"]
    j = func_rows(model, lambda call, xi, yi: per_sample(call(xi[None]), yi[None]).sum(), x, y)
    assert_products(fac, j, rtol=1e-10, atol=1e-12)


def test_register_rule_refuses_a_second_rule_and_non_module_types() -> None:
    with pytest.raises(ConfigError, match=r"^register_rule = 'Linear' .*LinearRule"):
        npb.register_rule(nn.Linear)(ScaleRule)
    with pytest.raises(ConfigError, match=r"^register_rule = 'Scale'"):
        npb.register_rule(Scale)(ScaleRule)
    with pytest.raises(ConfigError, match="nn.Module subclasses"):
        npb.register_rule(int)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="nn.Module subclasses"):
        npb.register_rule(nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="subclass of .*Rule"):
        npb.register_rule(type("Fresh", (nn.Module,), {}))(object)  # type: ignore[type-var]
