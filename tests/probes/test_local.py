"""Local gradient/Hessian at a layer's pre-activations and Hutchinson traces, against exact Hessians."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.probes.estimators import hutchinson_trace
from noiseprobe.probes.local import LocalObjective, consumer_module, full_hessian_trace, local_grad_hessian


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_hutchinson_is_exact_on_diagonal_and_unbiased_on_dense_matrices():
    d = torch.arange(1.0, 7.0, dtype=torch.float64)
    mean, se = hutchinson_trace(lambda v: d * v, 6, 5, gen(), dtype=torch.float64)
    assert mean == pytest.approx(21.0) and se == pytest.approx(0.0, abs=1e-12)  # vᵀDv = Σ d for v = ±1
    torch.manual_seed(1)
    a = torch.randn(8, 8, dtype=torch.float64)
    a = a + a.T
    mean, se = hutchinson_trace(lambda v: v @ a, 8, 4000, gen(2), dtype=torch.float64, block=1000)
    # Var(vᵀAv) = 2 Σ_{i≠j} A_ij² for Rademacher v: the reported SE must match it
    exact_se = float((2 * (a.pow(2).sum() - a.diag().pow(2).sum()) / 4000).sqrt())
    assert se == pytest.approx(exact_se, rel=0.1)
    assert abs(mean - float(a.trace())) < 4 * exact_se


def small_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4)).double()


def test_local_grad_and_hessian_trace_match_exact_per_sample_hessians():
    net = small_net()
    X, y = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 4, (7,))
    z = net[0](X).detach()

    def per_sample_loss(zi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:  # ℓ_i(z_i), written out by hand
        return F.cross_entropy(net[2](torch.tanh(zi))[None], yi[None])

    traces, sq = [], []
    for zi, yi in zip(z, y):
        H = torch.autograd.functional.hessian(lambda u: per_sample_loss(u, yi), zi)
        g = torch.autograd.functional.jacobian(lambda u: per_sample_loss(u, yi), zi)
        traces.append(H.trace())
        sq.append(g.pow(2).sum())
    exact_trace = float(torch.stack(traces).mean())
    exact_rms = float(torch.stack(sq).mean().sqrt())

    g_rms, tr, se = local_grad_hessian(net, "0", F.cross_entropy, X, y, n_probes=600, generator=gen(), block=300)
    assert g_rms == pytest.approx(exact_rms, rel=1e-10)
    assert 0 < se < 0.05 * abs(exact_trace)
    assert abs(tr - exact_trace) < 4 * se

    # directional curvature ⟨uᵀHu⟩ with u repeated over samples: one Hessian-vector product, exact
    u = torch.randn(6, dtype=torch.float64)
    exact_uHu = float(
        torch.stack(
            [u @ torch.autograd.functional.hessian(lambda v: per_sample_loss(v, yi), zi) @ u for zi, yi in zip(z, y)]
        ).mean()
    )
    obj = LocalObjective(net, "0", F.cross_entropy, X, y)
    assert obj.curvature(u.expand(7, 6)) == pytest.approx(exact_uHu, rel=1e-10)


def test_full_hessian_trace_matches_dense_hessian():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X, y = torch.randn(9, 3, dtype=torch.float64), torch.randint(0, 2, (9,))
    params = list(net.parameters())
    shapes = [p.shape for p in params]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        parts, o = [], 0
        for s in shapes:
            n = s.numel()
            parts.append(flat[o : o + n].reshape(s))
            o += n
        w1, b1, w2, b2 = parts
        return F.cross_entropy(torch.tanh(X @ w1.T + b1) @ w2.T + b2, y)

    exact = float(torch.autograd.functional.hessian(loss_of, flat0).trace())
    mean, se = full_hessian_trace(net, F.cross_entropy, X, y, n_probes=800, generator=gen(3), block=400)
    assert 0 < se < 0.1 * abs(exact)
    assert abs(mean - exact) < 4 * se


def test_conv_output_hessian_and_consumer_detection():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()
    X, y = torch.randn(4, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (4,))
    # ReLU has no curvature, so the Hessian at z is Jᵀ H_out J with J = diag(z > 0) W_lin: exact trace
    z = net[0](X).detach()
    logits = net(X).detach()
    p = logits.softmax(-1)
    h_out = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # CE Hessian in logits, per sample
    J = net[3].weight.double()[None] * (z.reshape(4, -1) > 0).double()[:, None, :]  # (4, 3, 32)
    exact = float(torch.einsum("nci,ncd,ndi->n", J, h_out, J).mean().detach())
    _, tr, se = local_grad_hessian(net, "0", F.cross_entropy, X, y, n_probes=600, generator=gen(), block=300)
    assert abs(tr - exact) < 4 * se
    with torch.no_grad():  # the probe builds its own graph: same draws, same estimate
        assert local_grad_hessian(net, "0", F.cross_entropy, X, y, n_probes=600, generator=gen(), block=300)[1] == tr
    assert consumer_module(net, "0", X) == "3"
    assert consumer_module(net, "3", X) is None


def test_errors():
    net = small_net()
    X, y = torch.randn(3, 5, dtype=torch.float64), torch.randint(0, 4, (3,))
    with pytest.raises(ConfigError, match="module_name"):
        local_grad_hessian(net, "7", F.cross_entropy, X, y, n_probes=2, generator=gen())
    with pytest.raises(ConfigError, match="loss_fn"):
        LocalObjective(net, "0", lambda o, t: F.cross_entropy(o, t, reduction="none"), X, y)
    with pytest.raises(ConfigError, match="n_probes"):
        hutchinson_trace(lambda v: v, 3, 0, gen())
    with pytest.raises(ConfigError, match="block"):
        hutchinson_trace(lambda v: v, 3, 4, gen(), block=0)
