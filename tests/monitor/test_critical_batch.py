"""Steps-to-target training and the critical-batch fit (noiseprobe.monitor.critical_batch) against
independent computations: closed forms, a plain nn.Module SGD loop, per-sample gradients by autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.seeding import torch_generator
from noiseprobe.monitor.critical_batch import (
    BLOCK_STEPS,
    STREAM_BATCHES,
    STREAM_PROBE,
    fit_critical_batch,
    geometric_steps,
    noise_scale_during,
    step_average,
    steps_to_target,
    train_to_target,
)


def _data(n: int = 60, d: int = 5, c: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, c, generator=g)).argmax(1)
    return x, y


def test_geometric_steps() -> None:
    s = geometric_steps(1000, 1.1)
    assert s[0] == 0 and s[-1] == 1000 and np.all(np.diff(s) > 0)
    assert list(s[:11]) == list(range(11))  # every step while the gap is < 1
    inner = s[(s > 20) & (s < 1000)]
    assert np.all(inner[1:] / inner[:-1] <= 1.1 + 1 / inner[:-1])  # ratio ≤ 1.1 up to rounding


def test_steps_to_target_exact_on_a_power_law() -> None:
    steps = np.array([0, 1, 2, 4, 8, 16, 32])
    loss = np.where(steps > 0, 3.0 * np.maximum(steps, 1) ** -0.5, 5.0)  # log-log linear after step 0
    assert steps_to_target(steps, loss, 3.0 * 10**-0.5) == pytest.approx(10.0, rel=1e-12)
    assert steps_to_target(steps, loss, 4.0) == pytest.approx(0.5)  # linear from step 0
    assert math.isnan(steps_to_target(steps, loss, 0.1))
    assert steps_to_target(steps, loss, 6.0) == 0.0


def test_step_average_is_the_trapezoid_integral() -> None:
    s = np.array([0, 2, 5, 10, 20])
    assert step_average(s, s.astype(float), 10) == pytest.approx(5.0)  # ∫₀¹⁰ s ds / 10
    assert step_average(s[:4], s[:4].astype(float), 12) == pytest.approx((50 + 20) / 12)  # held after the last
    assert step_average(s, np.array([1.0, np.nan, 1.0, 1.0, 1.0]), 10) == pytest.approx(1.0)
    assert math.isnan(step_average(s, np.full(5, np.nan), 10))


def test_fit_recovers_an_exact_hyperbola() -> None:
    b = np.array([2, 4, 8, 16, 32, 64, 128, 256.0])
    s_min, b_crit = 40.0, 23.0
    fit = fit_critical_batch(b, s_min * (1 + b_crit / b))
    assert fit.s_min == pytest.approx(s_min, rel=1e-8) and fit.b_crit == pytest.approx(b_crit, rel=1e-8)
    assert fit.e_min == pytest.approx(s_min * b_crit, rel=1e-8)
    assert fit.rms_log_residual < 1e-8
    s, e = s_min * (1 + b_crit / b), b * s_min * (1 + b_crit / b)  # their eq. 2.11/2.12 relation
    assert np.allclose((s / fit.s_min - 1) * (e / fit.e_min - 1), 1.0)
    assert math.isnan(fit_critical_batch(b[:2], s[:2]).b_crit)


def test_fit_standard_error_matches_the_scatter() -> None:
    """Multiplicative noise on S: the reported SE of log B_crit matches the spread of the estimates."""
    rng = np.random.default_rng(0)
    b = np.geomspace(4, 1024, 9)
    truth = 30 * (1 + 80 / b)
    fits = [fit_critical_batch(b, truth * np.exp(0.1 * rng.standard_normal(b.size))) for _ in range(400)]
    est = np.log([f.b_crit for f in fits])
    se = np.array([f.log_b_crit_se for f in fits])
    assert abs(est.mean() - math.log(80)) < 4 * est.std() / 20
    assert 0.8 < est.std() / np.sqrt(np.mean(se**2)) < 1.25


def test_batched_sgd_equals_a_plain_loop() -> None:
    """Each replica of the population follows torch.optim.SGD on the same with-replacement minibatches."""
    x, y = _data()
    lrs, replicas, steps, bsz = [0.05, 0.2, 0.5], [7, 8, 9], 5, 6
    run = train_to_target(
        x,
        y,
        hidden=[4],
        batch_size=bsz,
        lrs=lrs,
        replicas=replicas,
        init_replica=3,
        seed=11,
        target=1e-9,
        max_steps=steps,
    )
    assert run.outcome["steps_to_target"].isna().all() and (run.outcome["last_step"] == steps).all()
    n_w = len(run.ensemble.weights)
    for k, (lr, r) in enumerate(zip(lrs, replicas, strict=True)):
        model, _ = run.ensemble.member(k)
        first = run.snapshots[0]
        lins = [m for m in model if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for m, lin in enumerate(lins):
                lin.weight.copy_(first[m][k].T)
                lin.bias.copy_(first[n_w + m][k])
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        idx = torch.randint(0, x.shape[0], (BLOCK_STEPS, bsz), generator=torch_generator(11, r, STREAM_BATCHES))
        for t in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx[t]]), y[idx[t]]).backward()
            opt.step()
        last = run.snapshots[steps]
        for m, lin in enumerate(lins):
            torch.testing.assert_close(lin.weight.detach(), last[m][k].T, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(lin.bias.detach(), last[n_w + m][k], rtol=1e-5, atol=1e-6)
    # every replica of one seed starts from the same network
    assert torch.equal(run.snapshots[0][0][0], run.snapshots[0][0][2])


def test_fastest_replica_does_not_depend_on_its_companions() -> None:
    x, y = _data()
    common = dict(hidden=[8], batch_size=8, init_replica=0, seed=3, target=0.5, max_steps=400)
    alone = train_to_target(x, y, lrs=[0.5], replicas=[2], **common).outcome
    group = train_to_target(x, y, lrs=[0.05, 0.1, 0.5], replicas=[0, 1, 2], **common).outcome
    assert np.isfinite(alone["steps_to_target"].iloc[0])
    assert group["steps_to_target"].idxmin() == 2
    assert group["steps_to_target"].iloc[2] == pytest.approx(alone["steps_to_target"].iloc[0], rel=1e-5)


def test_divergence_is_recorded_not_raised() -> None:
    x, y = _data()
    run = train_to_target(
        x,
        y,
        hidden=[8],
        batch_size=8,
        lrs=[1e4, 0.1],
        replicas=[0, 1],
        init_replica=0,
        seed=0,
        target=1e-6,
        max_steps=60,
    )
    o = run.outcome
    assert bool(o["diverged"].iloc[0]) and not bool(o["diverged"].iloc[1])
    assert o["steps_to_target"].isna().all()
    rec = run.records
    assert rec.loc[rec["lr"] == 1e4, "train_loss"].isna().iloc[-1]
    assert rec.loc[rec["lr"] == 0.1, "train_loss"].notna().all()
    with pytest.raises(ConfigError, match="lrs"):
        train_to_target(
            x, y, hidden=[8], batch_size=8, lrs=[0.1], replicas=[0, 1], init_replica=0, seed=0, target=0.1, max_steps=5
        )


def test_noise_scale_during_equals_per_sample_autograd() -> None:
    """The monitor's B_simple on a snapshot equals tr Σ/|G|² from per-sample gradients by autograd."""
    x, y = _data(n=40)
    run = train_to_target(
        x,
        y,
        hidden=[4],
        batch_size=8,
        lrs=[0.3],
        replicas=[5],
        init_replica=0,
        seed=2,
        target=1e-9,
        max_steps=3,
        snapshot_ratio=2.0,
    )
    got = noise_scale_during(run, 0, x, y, until=3, probe_samples=20, seed=2, replica=5, metrics=["b_simple"])
    assert list(got["step"]) == sorted(run.snapshots)
    gen = torch_generator(2, 5, STREAM_PROBE)
    n_w = len(run.ensemble.weights)
    for step, b_simple in zip(got["step"], got["b_simple"], strict=True):
        pick = torch.randperm(40, generator=gen)[:20]
        snap = run.snapshots[int(step)]
        w = [snap[m][0].clone().double().requires_grad_(True) for m in range(2 * n_w)]
        rows = []
        for i in pick:
            h = torch.relu(x[i].double() @ w[0] + w[2])
            loss = torch.nn.functional.cross_entropy((h @ w[1] + w[3])[None], y[i][None])
            rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, w)]))
        g = torch.stack(rows)
        tr = float(((g - g.mean(0)) ** 2).sum() / 19)
        g_sq = float(g.mean(0) @ g.mean(0)) - tr / 20
        assert b_simple == pytest.approx(tr / g_sq, rel=1e-4)
