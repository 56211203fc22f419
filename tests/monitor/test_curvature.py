"""Monitor curvature metrics against dense float64 Hessians: sharpness and the edge-of-stability ratio for
SGD / Nesterov / Adam / per-group learning rates, top-k of H and its overlap with C, B_noise."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from noiseprobe import NoiseMonitor

LOSS = nn.CrossEntropyLoss(reduction="none")


def _setup():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,))
    return model, x, y


def _dense_hessian(model, x, y):
    params = list(model.parameters())
    flat = torch.cat([p.detach().flatten() for p in params])

    def f(v):
        chunks, o = {}, 0
        for name, p in model.named_parameters():
            chunks[name] = v[o : o + p.numel()].view_as(p)
            o += p.numel()
        return LOSS(torch.func.functional_call(model, chunks, (x,)), y).mean()

    return torch.autograd.functional.hessian(f, flat)


def _dense_j(model, x, y):
    rows = [
        torch.cat(
            [
                g.flatten()
                for g in torch.autograd.grad(LOSS(model(x[i : i + 1]), y[i : i + 1]).sum(), list(model.parameters()))
            ]
        )
        for i in range(len(x))
    ]
    return torch.stack(rows)


@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam", "groups", "none"])
def test_sharpness_and_eos_ratio(kind):
    model, x, y = _setup()
    H = _dense_hessian(model, x, y)
    n0 = sum(p.numel() for p in model[0].parameters())
    if kind == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
        s = torch.full((H.shape[0],), 0.1 / (2 + 2 * 0.5), dtype=torch.float64)
    elif kind == "nesterov":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5, nesterov=True)
        s = torch.full((H.shape[0],), 0.1 * 2.0 / 3.0, dtype=torch.float64)
    elif kind == "groups":
        opt = torch.optim.SGD(
            [{"params": model[0].parameters(), "lr": 0.1}, {"params": model[2].parameters(), "lr": 0.4}]
        )
        s = torch.cat([torch.full((n0,), 0.05), torch.full((H.shape[0] - n0,), 0.2)]).double()
    elif kind == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.99))
        for _ in range(3):  # state for the preconditioner
            opt.zero_grad()
            LOSS(model(x), y).mean().backward()
            opt.step()
        H = _dense_hessian(model, x, y)
        v = torch.cat([opt.state[p]["exp_avg_sq"].flatten() for p in model.parameters()])
        t = 3
        P = (1 - 0.9**t) * ((v / (1 - 0.99**t)).sqrt() + 1e-8)
        s = 0.01 * 0.1 / 3.8 / P
    else:
        opt = None
    row = NoiseMonitor(model, LOSS, every=1, metrics=["sharpness"]).step((x, y), opt)
    lam_h = float(torch.linalg.eigvalsh(H)[-1])
    if kind == "none":
        assert row["sharpness"] == pytest.approx(lam_h, rel=2e-2)
        return
    ratio = float(torch.linalg.eigvalsh(s.sqrt()[:, None] * H * s.sqrt()[None, :])[-1])
    assert row["eos_ratio"] == pytest.approx(ratio, rel=2e-2)
    if kind in ("sgd", "nesterov"):
        assert row["sharpness"] == pytest.approx(lam_h, rel=2e-2)


def test_warm_start_needs_few_products_after_small_steps():
    model, x, y = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = NoiseMonitor(model, LOSS, every=5, metrics=["sharpness"])
    for _ in range(26):
        opt.zero_grad()
        LOSS(model(x), y).mean().backward()
        mon.step((x, y), opt)
        opt.step()
    hvps = list(mon.history["sharpness_hvps"])
    assert max(hvps[1:]) <= 10 < hvps[0] or hvps[0] <= 10
    lam = float(torch.linalg.eigvalsh(_dense_hessian(model, x, y))[-1])
    assert mon.measure((x, y))["sharpness"] == pytest.approx(lam, rel=2e-2)


def test_top_k_h_and_overlap_with_c():
    model, x, y = _setup()
    H = _dense_hessian(model, x, y)
    J = _dense_j(model, x, y)
    Jc = J - J.mean(0)
    lam_h, vec_h = torch.linalg.eigh(H)
    lam_c, vec_c = torch.linalg.eigh(Jc.T @ Jc)
    k = 3
    row = NoiseMonitor(model, LOSS, every=1, metrics=["top_k_h"], top_k=k).step((x, y))
    assert [row[f"h_eig_{i}"] for i in (1, 2, 3)] == pytest.approx(lam_h.flip(0)[:k].tolist(), rel=2e-2, abs=1e-6)
    overlap = float(((vec_c[:, -k:].T @ vec_h[:, -k:]) ** 2).sum()) / k
    assert row["overlap_ch"] == pytest.approx(overlap, abs=0.03)


def test_b_noise_against_dense_trace():
    model, x, y = _setup()
    H = _dense_hessian(model, x, y)
    J = _dense_j(model, x, y)
    n = len(x)
    Jc = J - J.mean(0)
    exact = float(torch.trace(H @ Jc.T @ Jc)) / (n - 1)
    mon = NoiseMonitor(model, LOSS, every=1, metrics=["b_noise"])
    rows = [mon.measure((x, y)) for _ in range(40)]  # fresh probes each call: unbiased around the exact trace
    est = torch.tensor([r["tr_h_sigma"] for r in rows], dtype=torch.float64)
    assert abs(float(est.mean()) - exact) <= 4 * float(est.std()) / 40**0.5
    # the reported SE is the spread of one call's estimate
    assert float(est.std()) == pytest.approx(float(torch.tensor([r["tr_h_sigma_se"] for r in rows]).mean()), rel=0.5)
    gbar = J.mean(0)
    for row in rows[:3]:
        assert row["g_h_g"] == pytest.approx(float(gbar @ H @ gbar) - row["tr_h_sigma"] / n, rel=1e-8)
        expect = row["tr_h_sigma"] / row["g_h_g"] if row["g_h_g"] > 0 else float("nan")
        assert row["b_noise"] == pytest.approx(expect, rel=1e-12, nan_ok=True)


def test_sharpness_on_a_groupnorm_cnn():
    """GroupNorm's batched double backward fails in torch (a size mismatch): the Hessian products fall back
    to one backward pass per vector, and the sharpness of a GroupNorm CNN (SGD, λ_max(H)) and a stack of
    Hessian products equal the dense float64 Hessian's."""
    from noiseprobe.probes.operators import Hessian

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3)
    ).double()
    x, y = torch.randn(6, 2, 4, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    H = _dense_hessian(model, x, y)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    row = NoiseMonitor(model, LOSS, every=1, metrics=["sharpness"], on_error="raise").step((x, y), opt)
    assert row["status"] == "ok"
    assert row["sharpness"] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=2e-2)
    v = torch.randn(H.shape[0], 3, dtype=torch.float64)
    torch.testing.assert_close(Hessian(model, LOSS, x, y).mv(v), H @ v, rtol=1e-10, atol=1e-12)
