"""GD with the monitor's sharpness and the edge-of-stability phase statistics
(noiseprobe.monitor.edge_of_stability), against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from noiseprobe.monitor.edge_of_stability import eos_phases, gd_with_sharpness


def _regression(n: int = 50, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    y = torch.randn(n, 2, generator=g, dtype=torch.float64)
    lam = float(torch.linalg.eigvalsh(x.T @ x / n)[-1])  # Hessian of mean ½|Wx − y|² is (XᵀX/n) ⊗ I
    return x, y, lam


def _loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((out - y) ** 2).sum(1)


def test_sharpness_of_a_quadratic_and_gd_losses() -> None:
    x, y, lam = _regression()
    model = torch.nn.Linear(6, 2, bias=False, dtype=torch.float64)
    lr = 1.0 / lam
    _, sharp = gd_with_sharpness(model, _loss, x, y, lr=lr, steps=30, measure_every=10)
    assert list(sharp["step"]) == [0, 10, 20, 30]
    assert np.allclose(sharp["sharpness"], lam, rtol=1e-3)
    assert np.allclose(sharp["eos_ratio"], lr * lam / 2, rtol=1e-3)
    # GD itself: the weights after 5 steps equal an independent closed-form loop
    model2 = torch.nn.Linear(6, 2, bias=False, dtype=torch.float64)
    wk = model2.weight.detach().clone()
    losses2, _ = gd_with_sharpness(model2, _loss, x, y, lr=lr, steps=5, measure_every=5)
    for k in range(5):
        assert losses2["loss"].iloc[k] == pytest.approx(float(0.5 * ((x @ wk.T - y) ** 2).sum(1).mean()))
        wk = wk - lr * ((x @ wk.T - y).T @ x) / x.shape[0]
    torch.testing.assert_close(model2.weight.detach(), wk)


def test_gd_beyond_two_over_lr_diverges_and_stops() -> None:
    x, y, lam = _regression()
    model = torch.nn.Linear(6, 2, bias=False, dtype=torch.float64)
    losses, sharp = gd_with_sharpness(model, _loss, x, y, lr=3.0 / lam, steps=500, measure_every=5)
    last = losses["loss"].dropna()
    assert len(last) < 200 and not (abs(last.iloc[-1]) <= 1e8)  # stopped at the divergence
    assert sharp["eos_ratio"].iloc[0] == pytest.approx(1.5, rel=1e-3)


def _synthetic(k_cross: int = 400, lr: float = 0.1, amp: float = 0.04) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sharpness: dips to 10 at step 50, rises linearly to 2/lr at k_cross, then 2/lr·(1 + amp·sin); loss:
    decreasing trend with a bump every 7 steps after the crossing."""
    steps = np.arange(0, 2001, 10)
    thr = 2 / lr
    lam = np.where(steps < 50, 12 - 2 * steps / 50, 10 + (thr - 10) * (steps - 50) / (k_cross - 50))
    after = steps >= k_cross
    lam[after] = thr * (1 + amp * np.sin(steps[after] / 30.0))
    sharp = pd.DataFrame({"step": steps, "sharpness": lam, "eos_ratio": lr * lam / 2})
    k = np.arange(2001)
    loss = 1.0 / (1 + k / 100) * (1 + 0.3 * ((k % 7 == 0) & (k > k_cross)))
    return pd.DataFrame({"step": k, "loss": loss}), sharp


def test_phase_statistics_of_a_synthetic_run() -> None:
    losses, sharp = _synthetic()
    ph = eos_phases(losses, sharp, settle=100)
    assert ph.first_crossing == 400
    assert ph.sharpening_windows == sorted(ph.sharpening_windows) and len(ph.sharpening_windows) == 4
    at_cross = float(sharp.loc[sharp["step"] == 400, "sharpness"].iloc[0])
    assert ph.sharpening_factor == pytest.approx(at_cross / 10)  # from the minimum 10 to the crossing
    ratio = sharp.loc[sharp["step"] >= 500, "eos_ratio"]
    assert ph.hover_n == len(ratio)
    assert ph.hover_median == pytest.approx(float(np.median(ratio)))
    assert ph.hover_p10 == pytest.approx(float(np.quantile(ratio, 0.1)))
    assert 0.96 < ph.hover_p10 < ph.hover_median < ph.hover_p90 < 1.04
    assert ph.loss_ratio < 0.5
    assert ph.loss_rise_fraction == pytest.approx(1 / 7, abs=0.01)


def test_no_crossing_gives_nan_phases() -> None:
    losses, sharp = _synthetic()
    sharp = sharp.assign(eos_ratio=sharp["eos_ratio"] * 0.5)
    ph = eos_phases(losses, sharp, settle=0)
    assert math.isnan(ph.first_crossing) and ph.sharpening_windows == [] and ph.hover_n == 0
    assert math.isnan(ph.hover_median) and math.isnan(ph.loss_ratio)
    assert ph.max_ratio == pytest.approx(float(sharp["eos_ratio"].max()))
