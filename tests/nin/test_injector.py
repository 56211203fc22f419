"""NIN injector: the shift z → z + ε W_NI, noise laws and modes, removal, state, errors."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.nin.injector import NINSpec, attach_nins


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))


def gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shift_is_eps_times_niw_fixed_mode():
    model = mlp()
    x, idx = torch.randn(6, 5), torch.tensor([3, 0, 9, 3, 1, 7])
    h = attach_nins(model, NINSpec("0", sigma=0.7, n_nodes=2, mode="fixed"), n_train=10, generator=gen())
    h.set_sample_indices(idx)
    node = h.nodes[0]
    eps = 0.7 * node.table[idx]  # (6, 2)
    z = model[0](x)  # hooked: z + eps W
    with h.clean():
        z0 = model[0](x)
    torch.testing.assert_close(z - z0, eps @ node.weight, rtol=0, atol=1e-6)
    # the downstream network sees the shifted pre-activation
    torch.testing.assert_close(model(x), model[2](torch.relu(z0 + eps @ node.weight)))
    # the same training sample gets the same noise wherever it sits in the batch
    torch.testing.assert_close((z - z0)[0], (z - z0)[3], rtol=0, atol=1e-6)


def test_eval_clean_and_remove_restore_the_model_exactly():
    model = mlp()
    x = torch.randn(4, 5)
    ref_out = model(x).detach()
    ref_params = [p for p in model.parameters()]
    ref_keys = list(model.state_dict())
    h = attach_nins(
        model, [NINSpec("0", sigma=2.0, mode="step"), NINSpec("2", sigma=1.0, mode="step")], generator=gen()
    )
    assert not torch.equal(model(x), ref_out)
    model.eval()
    assert torch.equal(model(x), ref_out)
    model.train()
    with h.clean():
        assert torch.equal(model(x), ref_out)
    h.remove()
    assert torch.equal(model(x), ref_out)
    assert [p for p in model.parameters()] == ref_params
    assert list(model.state_dict()) == ref_keys
    assert all(id(w) not in {id(p) for p in model.parameters()} for w in h.niws)


def test_conv_feature_axis_is_channels_shared_over_locations():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU())
    h = attach_nins(model, NINSpec("0", sigma=1.5), n_train=8, generator=gen())
    x, idx = torch.randn(3, 2, 6, 6), torch.tensor([5, 2, 7])
    h.set_sample_indices(idx)
    shift = model[0](x) - model[0].__class__.forward(model[0], x)
    expected = (1.5 * h.nodes[0].table[idx]) @ h.niws[0]  # (3, 4): one value per sample and channel
    assert h.niws[0].shape == (1, 4)
    torch.testing.assert_close(shift, expected[:, :, None, None].expand_as(shift), rtol=0, atol=1e-6)


def test_linear_on_sequences_uses_last_axis_and_example_input_reads_shapes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Identity())
    h = attach_nins(model, NINSpec("1", sigma=1.0, mode="step"), generator=gen(), example_input=torch.randn(2, 4, 3))
    assert h.niws[0].shape == (1, 5)
    x = torch.randn(2, 4, 3)
    d = model(x) - model[0](x)
    assert torch.allclose(d, d[:, :1, :].expand_as(d))  # the same shift at every sequence position


@pytest.mark.parametrize("dist, kurtosis", [("normal", 3.0), ("uniform", 1.8), ("rademacher", 1.0)])
def test_noise_laws_have_zero_mean_and_variance_sigma2(dist, kurtosis):
    sigma, n = 0.3, 200_000
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    wrapper = nn.Sequential(model)
    h = attach_nins(wrapper, NINSpec("0", sigma=sigma, distribution=dist, mode="step"), generator=gen())
    with torch.no_grad():
        h.niws[0].fill_(1.0)
        eps = wrapper(torch.zeros(n, 1)).squeeze(1).double()
    se_mean = sigma / math.sqrt(n)
    se_var = sigma**2 * math.sqrt((kurtosis - 1) / n)  # Var of the sample second moment
    assert abs(eps.mean().item()) < 4 * se_mean
    assert abs(eps.pow(2).mean().item() - sigma**2) < 4 * se_var + 1e-6 * sigma**2  # float32 rounding
    if dist == "rademacher":
        assert torch.unique(eps.abs().float()).tolist() == [pytest.approx(sigma)]


def test_callable_distribution_is_scaled_by_sigma():
    calls = []

    def ones(shape, generator):
        calls.append(shape)
        return torch.ones(shape)

    model = nn.Sequential(nn.Linear(2, 3))
    h = attach_nins(model, NINSpec("0", sigma=0.5, distribution=ones, mode="step"), generator=gen())
    x = torch.randn(4, 2)
    with torch.no_grad():
        d = model(x) - model[0].__class__.forward(model[0], x)
    torch.testing.assert_close(d, (0.5 * h.niws[0]).expand(4, 3).detach())
    assert calls == [(4, 1)]


def test_modes_step_epoch_fixed():
    x, idx = torch.randn(4, 5), torch.arange(4)

    def shifts(mode: str) -> list[torch.Tensor]:
        model = mlp()
        h = attach_nins(model, NINSpec("0", sigma=1.0, mode=mode), n_train=4, generator=gen())
        h.set_sample_indices(idx)
        out = []
        with torch.no_grad():
            base = model[0].__class__.forward(model[0], x)
            out.append(model[0](x) - base)
            out.append(model[0](x) - base)
            h.new_epoch()
            out.append(model[0](x) - base)
        return out

    s = shifts("step")
    assert not torch.equal(s[0], s[1]) and not torch.equal(s[1], s[2])
    e = shifts("epoch")
    assert torch.equal(e[0], e[1]) and not torch.equal(e[1], e[2])
    f = shifts("fixed")
    assert torch.equal(f[0], f[1]) and torch.equal(f[1], f[2])


def test_niw_init_std_is_one_over_sqrt_nodes_and_overridable():
    model = nn.Sequential(nn.Linear(2, 4000))
    h = attach_nins(
        model,
        [NINSpec("0", sigma=1.0, n_nodes=4, mode="step"), NINSpec("0", sigma=1.0, mode="step", init_std=0.1)],
        generator=gen(),
    )
    for w, std in ((h.niws[0], 0.5), (h.niws[1], 0.1)):
        n = w.numel()
        var = w.detach().double().pow(2).mean().item()
        assert abs(var - std**2) < 4 * std**2 * math.sqrt(2 / n)  # Var of a normal sample variance
    assert h.niws[0].shape == (4, 4000)


def test_niw_gradient_matches_closed_form_and_optimiser_reaches_it():
    # L = Σ_i c·(z_i + ε_i W) with a linear module: ∂L/∂W = Σ_i ε_i c
    model = nn.Sequential(nn.Linear(3, 4))
    h = attach_nins(model, NINSpec("0", sigma=2.0, mode="fixed"), n_train=5, generator=gen())
    idx = torch.tensor([4, 1, 2])
    h.set_sample_indices(idx)
    c = torch.randn(4)
    (model(torch.randn(3, 3)) @ c).sum().backward()
    eps = 2.0 * h.nodes[0].table[idx]  # (3, 1)
    torch.testing.assert_close(h.niws[0].grad, eps.sum(0, keepdim=True).T @ c[None, :], rtol=1e-5, atol=1e-6)
    before = h.niws[0].detach().clone()
    torch.optim.SGD(list(model.parameters()) + list(h.parameters()), lr=0.1).step()
    torch.testing.assert_close(h.niws[0].detach(), before - 0.1 * h.niws[0].grad)


def test_state_roundtrip_with_weights_only_load():
    x, idx = torch.randn(4, 5), torch.tensor([0, 2, 1, 3])
    model = mlp()
    h = attach_nins(
        model,
        [NINSpec("0", sigma=0.4, mode="epoch"), NINSpec("2", sigma=0.2, mode="step")],
        n_train=4,
        generator=gen(1),
    )
    h.set_sigma(0, 0.9)
    h.new_epoch()
    h.new_step()
    buf = io.BytesIO()
    torch.save(h.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    h.set_sample_indices(idx)
    ref = model(x)
    h.remove()

    h2 = attach_nins(
        model,
        [NINSpec("0", sigma=0.0, mode="epoch"), NINSpec("2", sigma=0.0, mode="step")],
        n_train=4,
        generator=gen(99),
    )
    h2.load_state_dict(state)
    h2.set_sample_indices(idx)
    assert h2.sigmas == pytest.approx([0.9, 0.2]) and h2.epoch == 1 and h2.steps == 1
    torch.testing.assert_close(model(x), ref)  # same NIWs, ξ table and generator state (step-mode draw)


def test_errors_are_config_errors_naming_the_problem():
    model = mlp()
    with pytest.raises(ConfigError, match="module = 'fc9'"):
        attach_nins(model, NINSpec("fc9", sigma=1.0))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="sigma"):
            attach_nins(model, NINSpec("0", sigma=bad, mode="step"))
    with pytest.raises(ConfigError, match="n_train"):
        attach_nins(model, NINSpec("0", sigma=1.0, mode="fixed"))
    with pytest.raises(ConfigError, match="distribution"):
        attach_nins(model, NINSpec("0", sigma=1.0, distribution="cauchy", mode="step"))
    with pytest.raises(ConfigError, match="mode"):
        attach_nins(model, NINSpec("0", sigma=1.0, mode="batch"))
    h = attach_nins(model, NINSpec("0", sigma=1.0, mode="step"), generator=gen())
    with pytest.raises(ConfigError, match="sigma"):
        h.set_sigma(0, -0.1)
    h.remove()
    h = attach_nins(model, NINSpec("0", sigma=1.0, mode="epoch"), n_train=3, generator=gen())
    with pytest.raises(ConfigError, match="sample_indices"):
        model(torch.randn(2, 5))
    h.remove()


class Summed(nn.Module):
    """Outputs one number per sample: no feature axis."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).sum(-1)


def test_output_without_feature_axis_is_rejected():
    model = nn.Sequential(Summed())
    with pytest.raises(ConfigError, match="feature axis"):
        attach_nins(model, NINSpec("0", sigma=1.0, mode="step"), example_input=torch.randn(2, 3))
    with pytest.raises(ConfigError, match="out_features"):  # size not readable and no example input
        attach_nins(model, NINSpec("0", sigma=1.0, mode="step"))
    h = attach_nins(model, NINSpec("0", sigma=1.0, mode="step", features=4), generator=gen())
    with pytest.raises(ConfigError, match="feature axis"):
        model(torch.randn(2, 3))
    h.remove()


def test_handle_to_moves_state_and_keeps_the_parameters():
    model = mlp().double()
    h = attach_nins(model, NINSpec("0", sigma=1.0, mode="fixed"), n_train=4, generator=gen())
    niw = h.niws[0]
    assert niw.dtype == torch.float64  # created like the module's parameters
    h.to(torch.float32)
    assert h.niws[0] is niw and niw.dtype == torch.float32


def test_in_place_injection_keeps_gradients_and_earlier_hooks_outputs():
    """On an nn.Linear whose first forward hook is the NIN's, the NIN adds into the layer's output in place;
    otherwise out of place. Either way the loss and every gradient equal the explicit z + εW_NI
    computation, and a forward hook registered before the NIN still holds the clean z."""
    x, idx = torch.randn(6, 5), torch.tensor([3, 0, 9, 3, 1, 7])
    for earlier_hook in (False, True):
        model, seen = mlp(), []
        if earlier_hook:
            model[0].register_forward_hook(lambda _m, _a, out, seen=seen: seen.append(out))
        h = attach_nins(model, NINSpec("0", sigma=0.7, mode="fixed"), n_train=10, generator=gen())
        h.set_sample_indices(idx)
        hook = list(model[0]._forward_hooks.values())[-1]
        with h.clean():
            z = model[0](x)
        assert h._owns_output(model[0], hook, z) == (not earlier_hook)
        params = list(model.parameters()) + h.niws
        loss = model(x).square().sum()
        grads = torch.autograd.grad(loss, params)
        ref_params = [p.detach().clone().requires_grad_(True) for p in params]
        w1, b1, w2, b2, niw = ref_params
        eps = 0.7 * h.nodes[0].table[idx]
        ref = (torch.relu(x @ w1.T + b1 + eps @ niw) @ w2.T + b2).square().sum()
        torch.testing.assert_close(loss, ref)
        for g, r in zip(grads, torch.autograd.grad(ref, ref_params)):
            torch.testing.assert_close(g, r)
        if earlier_hook:  # its z is the clean one
            torch.testing.assert_close(seen[-1].detach(), x @ w1.detach().T + b1.detach())
