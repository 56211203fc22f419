"""Batch sharpness and the EoSS ratio (Andreyev & Beneventano, arXiv 2412.20553) against dense float64
Hessians of a small model's batch loss (torch.func.hessian), and the Monte Carlo engine against the exact
average over every batch."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from noiseprobe.monitor.metrics.curvature import BATCH_SHARPNESS_WINDOW
from noiseprobe.monitor.monitor import NoiseMonitor
from noiseprobe.monitor.stochastic_stability import (
    batch_sharpness_samples,
    eoss_summary,
    expected_batch_sharpness,
    random_batches,
    sgd_with_batch_sharpness,
)


def _loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((out - y) ** 2).sum(1)


def _setup(n: int = 12) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    return model, torch.randn(n, 3, dtype=torch.float64), torch.randn(n, 2, dtype=torch.float64)


def _dense(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, H) of the batch's mean loss by torch.func on the flat parameter vector."""
    names = [k for k, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    shapes, flat = [p.shape for p in params], torch.cat([p.reshape(-1) for p in params])

    def loss(f: torch.Tensor) -> torch.Tensor:
        parts, i = [], 0
        for s in shapes:
            k = math.prod(s)
            parts.append(f[i : i + k].reshape(s))
            i += k
        return _loss(torch.func.functional_call(model, dict(zip(names, parts, strict=True)), (x,)), y).mean()

    return torch.func.grad(loss)(flat), torch.func.hessian(loss)(flat)


def test_batch_sharpness_and_eoss_ratio_match_dense_hessian_under_sgd() -> None:
    model, x, y = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    mon = NoiseMonitor(model, _loss, every=1, metrics=["batch_sharpness", "eoss_ratio"], verbose=False)
    for _ in range(3):
        g, h = _dense(model, x, y)
        want = float(g @ h @ g / (g @ g))
        opt.zero_grad()
        _loss(model(x), y).mean().backward()
        row = mon.step((x, y), opt)
        assert row["batch_sharpness"] == pytest.approx(want, rel=1e-10, abs=0)
        assert row["status"] == "ok"
        # for plain SGD the EoSS ratio is η·batch_sharpness/2
        assert row["eoss_ratio"] == pytest.approx(0.3 * want / 2, rel=1e-10, abs=0)
        opt.step()


def test_eoss_ratio_under_adam_matches_dense_preconditioned_quotient() -> None:
    model, x, y = _setup()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.99))
    mon = NoiseMonitor(model, _loss, every=1, metrics=["eoss_ratio"], verbose=False)
    first = mon.step((x, y), opt)  # before Adam's first step: no preconditioner
    assert math.isnan(first["eoss_ratio"]) and first["status"] == "ok"
    for _ in range(2):
        opt.zero_grad()
        _loss(model(x), y).mean().backward()
        opt.step()
    g, h = _dense(model, x, y)
    # Cohen et al. 2022's threshold: s = lr (1 − β₁)/(2 + 2β₁) / P, P = (1 − β₁ᵗ)(√v̂ + ε), v̂ = v/(1 − β₂ᵗ)
    s = []
    for p in model.parameters():
        st = opt.state[p]
        t = float(st["step"])
        precond = (1 - 0.8**t) * ((st["exp_avg_sq"] / (1 - 0.99**t)).sqrt() + 1e-8)
        s.append((0.01 * 0.2 / 3.6 / precond).reshape(-1))
    v = torch.cat(s) * g
    row = mon.step((x, y), opt)
    assert row["eoss_ratio"] == pytest.approx(float(v @ h @ v / (g @ v)), rel=1e-10, abs=0)


def test_running_mean_and_se_over_the_window() -> None:
    model, x, y = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    mon = NoiseMonitor(model, _loss, every=1, metrics=["batch_sharpness"], verbose=False)
    for k in range(BATCH_SHARPNESS_WINDOW + 5):
        idx = torch.arange(k % 3, 12, 2)  # alternating batches: values that differ
        opt.zero_grad()
        _loss(model(x[idx]), y[idx]).mean().backward()
        row = mon.step((x[idx], y[idx]), opt)
        opt.step()
    vals = mon.history["batch_sharpness"].to_numpy()[-BATCH_SHARPNESS_WINDOW:]
    assert row["batch_sharpness_mean"] == pytest.approx(vals.mean(), rel=1e-12)
    assert row["batch_sharpness_se"] == pytest.approx(vals.std(ddof=1) / len(vals) ** 0.5, rel=1e-12)
    assert math.isnan(mon.history["batch_sharpness_se"].iloc[0])  # one value: no standard error


def test_micro_batch_is_refused_with_a_status() -> None:
    model, x, y = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    mon = NoiseMonitor(
        model, _loss, every=1, metrics=["batch_sharpness", "eoss_ratio", "g_sq"], effective_batch_size=48, verbose=False
    )
    with pytest.warns(UserWarning, match="accumulation micro-batch"):
        row = mon.step((x, y), opt)
    assert math.isnan(row.get("batch_sharpness", math.nan)) and math.isnan(row.get("eoss_ratio", math.nan))
    assert row["status"] == "batch_sharpness: accumulation micro-batch, eoss_ratio: accumulation micro-batch"
    assert math.isfinite(row["g_sq"])  # the other metrics are measured
    same = NoiseMonitor(model, _loss, every=1, metrics=["batch_sharpness"], effective_batch_size=12, verbose=False)
    assert math.isfinite(same.step((x, y), opt)["batch_sharpness"])


def test_engine_samples_match_dense_and_mc_mean_matches_exact_average() -> None:
    model, x, y = _setup(n=7)
    batches = torch.tensor(list(itertools.combinations(range(7), 3)))  # all 35 batches of 3
    got = batch_sharpness_samples(model, _loss, x, y, batches, block=8)
    for row, v in zip(batches[::7], got[::7], strict=True):
        g, h = _dense(model, x[row], y[row])
        assert float(v) == pytest.approx(float(g @ h @ g / (g @ g)), rel=1e-10, abs=0)
    exact = float(got.mean())
    est = expected_batch_sharpness(model, _loss, x, y, batch_size=3, gen=torch.Generator().manual_seed(0))
    assert est.se <= 0.02 * abs(est.mean) and est.n >= 32
    assert abs(est.mean - exact) <= 4 * est.se
    full = expected_batch_sharpness(model, _loss, x, y, batch_size=7, gen=torch.Generator())
    g, h = _dense(model, x, y)
    assert full.se == 0 and full.mean == pytest.approx(float(g @ h @ g / (g @ g)), rel=1e-10)
    idx = random_batches(7, 3, 50, torch.Generator().manual_seed(1))
    assert all(len(set(r.tolist())) == 3 for r in idx)


def test_training_loop_and_summary() -> None:
    model, x, y = _setup(n=40)
    losses, meas = sgd_with_batch_sharpness(
        model,
        _loss,
        x,
        y,
        lr=0.5,
        batch_size=8,
        steps=20,
        measure_every=5,
        gen=torch.Generator().manual_seed(0),
        mc_gen=torch.Generator().manual_seed(1),
    )
    # measuring does not move the trajectory: the losses are those of a run measured once
    model2, _, _ = _setup(n=40)
    losses2, _ = sgd_with_batch_sharpness(
        model2,
        _loss,
        x,
        y,
        lr=0.5,
        batch_size=8,
        steps=20,
        measure_every=20,
        gen=torch.Generator().manual_seed(0),
        mc_gen=torch.Generator().manual_seed(2),
    )
    assert np.array_equal(losses["loss"].to_numpy(), losses2["loss"].to_numpy())
    assert len(losses) == 20 and list(meas["step"]) == [0, 5, 10, 15, 20]
    assert (meas["batch_sharpness_se"] <= 0.02 * meas["batch_sharpness"].abs() + 1e-15).all()
    # λ_max of the full batch bounds its own directional curvature: check against a dense Hessian at the end
    g, h = _dense(model, x, y)
    assert float(meas["lambda_max"].iloc[-1]) == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]), rel=2e-3)
    summary = eoss_summary(
        meas.assign(batch_sharpness=[0.5, 2.1, 4.0, 4.4, 1.0], lambda_max=2.0), lr=0.5, band=(0.85, 1.15)
    )
    # ratios η·bs/2 = 0.125, 0.525, 1.0, 1.1, 0.25: first ≥ 1 at step 10, 2 of the 3 from there in band
    assert summary.first_crossing == 10 and summary.n_after == 3
    assert summary.in_band_fraction == pytest.approx(2 / 3)
    assert summary.median_lambda_ratio == pytest.approx(0.5)
    assert np.isnan(eoss_summary(meas.assign(full_loss=math.inf), lr=0.5, band=(0.85, 1.15)).first_crossing)


def test_batch_sharpness_on_a_cnn_with_batchnorm_in_train_mode_matches_double_backward() -> None:
    """A user's model as it trains (Conv2d + BatchNorm2d with batch statistics, cross-entropy on integer
    labels): against gᵀHg/gᵀg by two plain autograd passes on the same batch, and the run left as it was."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)
    ).double()
    x, y = torch.randn(10, 1, 6, 6, dtype=torch.float64), torch.randint(0, 4, (10,))
    ce = nn.CrossEntropyLoss(reduction="none")
    params = list(model.parameters())
    g = torch.autograd.grad(ce(model(x), y).mean(), params, create_graph=True)
    gd = [t.detach() for t in g]
    hg = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, gd, strict=True)), params)
    want = float(sum((a * b).sum() for a, b in zip(gd, hg, strict=True)) / sum((a * a).sum() for a in gd))
    stats = model[1].running_mean.clone()
    mon = NoiseMonitor(model, ce, every=1, metrics=["batch_sharpness"], verbose=False)
    row = mon.step((x, y), torch.optim.SGD(model.parameters(), lr=0.1))
    assert row["batch_sharpness"] == pytest.approx(want, rel=1e-10, abs=0)
    assert model.training and torch.equal(model[1].running_mean, stats)
