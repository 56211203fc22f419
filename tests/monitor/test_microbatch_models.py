"""The micro-batch estimator on models without per-sample gradients, against Monte-Carlo ground truths that
need no per-sample definition: the covariance of training-batch gradients over random batches.

(b) a 2-layer LSTM with dropout in train mode: samples are independent, so Cov(g_S) = Σ/S and the mean of
    the monitor's tr_sigma/S over random batches is tr Cov(g_S);
(c) a ResNet-style CNN with BatchNorm2d in train mode: tr_sigma estimates b·tr Cov(g_b) at the micro-batch
    size b; b·tr Cov(g_b)/(S·tr Cov(g_S)) is BatchNorm's bias (reported in docs/monitor.md, no tolerance).

Batches are drawn with replacement from a fixed population of samples at fixed parameters. Each comparison
is held to 3 combined standard errors, with enough batches that the combined standard error is ≤ 3 % of
the value.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from noiseprobe import NoiseMonitor
from noiseprobe.monitor.gns import noise_scale

LOSS = nn.CrossEntropyLoss(reduction="none")
#: classes of the toy task (more classes spread the noise over more directions: a less skewed trace)
CLASSES = 10


class _LSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 8, num_layers=2, dropout=0.3, batch_first=True)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


class _ResNet(nn.Module):
    """conv–BN–ReLU, one residual block (conv–BN–ReLU–conv–BN + skip), global pooling, linear head."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(2, c, 3, padding=1), nn.BatchNorm2d(c)
        self.c1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.c2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.head = nn.Linear(c, CLASSES)

    def forward(self, x):
        h = F.relu(self.bn0(self.stem(x)))
        h = F.relu(h + self.bn2(self.c2(F.relu(self.bn1(self.c1(h))))))
        return self.head(h.mean((2, 3)))


def _batch_gradients(model, x, y, size, draws, gen):
    """Gradients of the mean loss of ``draws`` random batches of ``size`` samples (with replacement), (draws, P)."""
    rows = []
    for _ in range(draws):
        i = torch.randint(0, len(x), (size,), generator=gen)
        grads = torch.autograd.grad(LOSS(model(x[i]), y[i]).mean(), list(model.parameters()))
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows).double()


def _tr_cov(rows):
    """tr of the sample covariance of the rows and its jackknife SE."""
    ns = noise_scale((rows @ rows.T).numpy())
    return ns.tr_sigma, ns.tr_sigma_se


def _monitor_mean(model, x, y, s, draws, gen):
    """Mean over random batches of S samples of the monitor's tr_sigma (estimator chosen automatically),
    its SE, and the micro-batch size."""
    mon = NoiseMonitor(model, LOSS, metrics=["tr_sigma"])
    with pytest.warns(UserWarning, match="micro-batch estimator"):
        rows = []
        for q in range(draws):
            i = torch.randint(0, len(x), (s,), generator=gen)
            torch.manual_seed(10_000 + q)  # fresh dropout draws, as the training steps between measurements give
            rows.append(mon.measure((x[i], y[i])))
    assert {r["estimator"] for r in rows} == {"micro-batch"}
    v = np.array([r["tr_sigma"] for r in rows])
    return v.mean(), v.std(ddof=1) / math.sqrt(draws), rows[0]["micro_batch_size"]


def _population(shape, n=256, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=gen, dtype=torch.float64), torch.randint(0, CLASSES, (n,), generator=gen)


def test_lstm_with_dropout_micro_batch_trace_matches_monte_carlo():
    """Acceptance (b)."""
    torch.manual_seed(0)
    model = _LSTM().double().train()
    x, y = _population((3, 3))
    s, gen = 16, torch.Generator().manual_seed(1)
    mon, mon_se, b = _monitor_mean(model, x, y, s, 50, gen)
    mc, mc_se = _tr_cov(_batch_gradients(model, x, y, s, 800, gen))
    se = math.hypot(mon_se / s, mc_se)
    assert b == 2 and se <= 0.03 * mc
    assert abs(mon / s - mc) <= 3 * se, (mon / s, mc, se)


def test_resnet_with_batchnorm_micro_batch_trace_matches_monte_carlo_at_micro_batch_size():
    """Acceptance (c); the ratio b·tr Cov(g_b)/(S·tr Cov(g_S)) is BatchNorm's bias (docs/monitor.md)."""
    torch.manual_seed(0)
    model = _ResNet().double().train()
    x, y = _population((2, 6, 6))
    s, gen = 32, torch.Generator().manual_seed(2)
    mon, mon_se, b = _monitor_mean(model, x, y, s, 30, gen)
    mc_b, mc_b_se = _tr_cov(_batch_gradients(model, x, y, b, 400, gen))
    se = math.hypot(mon_se, b * mc_b_se)
    assert b == 4 and se <= 0.03 * b * mc_b
    assert abs(mon - b * mc_b) <= 3 * se, (mon, b * mc_b, se)
    mc_s, _ = _tr_cov(_batch_gradients(model, x, y, s, 200, gen))
    ratio = b * mc_b / (s * mc_s)
    assert math.isfinite(ratio) and ratio > 0
    print(f"BatchNorm bias b·trCov(g_b)/(S·trCov(g_S)) at b={b}, S={s}: {ratio:.3f}")


@pytest.mark.slow
@pytest.mark.parametrize("b", [2, 4, 8, 16])
def test_batchnorm_bias_against_micro_batch_size(b):
    """The ratio b·tr Cov(g_b)/(S·tr Cov(g_S)) at S = 64 for a range of b (the numbers in docs/monitor.md)."""
    torch.manual_seed(0)
    model = _ResNet().double().train()
    x, y = _population((2, 6, 6), n=512)
    gen = torch.Generator().manual_seed(3)
    mc_b, se_b = _tr_cov(_batch_gradients(model, x, y, b, 2000, gen))
    mc_s, se_s = _tr_cov(_batch_gradients(model, x, y, 64, 2000, gen))
    ratio = b * mc_b / (64 * mc_s)
    print(f"b={b}: ratio {ratio:.3f} ± {ratio * math.hypot(se_b / mc_b, se_s / mc_s):.3f}")
    assert math.isfinite(ratio)
