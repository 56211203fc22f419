"""NoiseMonitor's estimator choice: per-sample where per-sample gradients exist, micro-batches where they do
not (BatchNorm in train mode, dropout inside a module without a rule), chosen automatically and reported;
the run left exactly as it was; b_simple_avg."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from noiseprobe import NoiseMonitor
from noiseprobe.core.errors import ConfigError, NoPerSampleGradients
from noiseprobe.monitor.gns import pooled_b_simple
from noiseprobe.monitor.microbatch import micro_batch_gradients

LOSS = nn.CrossEntropyLoss(reduction="none")


class _BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.drop(F.relu(self.bn(self.conv(x))).mean((2, 3))))


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _bn_setup(dtype=torch.float64):
    torch.manual_seed(0)
    model = _BNNet().to(dtype).train()
    x, y = torch.randn(34, 2, 5, 5, dtype=dtype), torch.randint(0, 3, (34,))
    return model, x, y


def test_batchnorm_in_train_mode_falls_back_once_with_a_warning_and_reports_it():
    model, x, y = _bn_setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = NoiseMonitor(model, LOSS, every=1, metrics=["default", "b_simple_avg"], top_k=10)
    with pytest.warns(UserWarning, match=r"model\.bn \(BatchNorm2d in training mode\).*micro-batch") as rec:
        rows = [mon.step((x, y), opt) for _ in range(3)]
    assert sum("micro-batch estimator" in str(w.message) for w in rec) == 1
    for row in rows:
        assert row["estimator"] == "micro-batch" and row["micro_batch_size"] == 4  # 34 = 8·4 + 2 dropped
    ref = micro_batch_gradients(model, LOSS, x, y)
    ns = ref.noise()
    assert rows[0]["tr_sigma"] == ns.tr_sigma and rows[0]["g_sq"] == ns.g_sq
    assert (rows[0]["b_simple_lo"], rows[0]["b_simple_hi"]) == (ns.b_simple_lo, ns.b_simple_hi)
    assert rows[0]["temperature"] == pytest.approx(0.1 * ns.tr_sigma / 34, rel=1e-12)
    lam = ref.c_eigenvalues(10, 34)
    got = np.array([rows[0][f"c_eig_{i + 1}"] for i in range(10)])
    np.testing.assert_allclose(got[:7], lam[:7], rtol=1e-10)
    assert np.isnan(got[7:]).all()
    assert list(mon.history["estimator"]) == ["micro-batch"] * 3


def test_eval_mode_uses_per_sample_gradients_and_train_mode_is_tried_again():
    model, x, y = _bn_setup()
    mon = NoiseMonitor(model, LOSS, every=1, metrics=["tr_sigma"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_row = mon.measure((x, y))
        model.eval()
        eval_row = mon.measure((x, y))
    assert (train_row["estimator"], eval_row["estimator"]) == ("micro-batch", "per-sample")
    assert eval_row["micro_batch_size"] == 1


def test_forced_estimators():
    model = _mlp()
    x, y = torch.randn(24, 4, dtype=torch.float64), torch.randint(0, 3, (24,))
    per = NoiseMonitor(model, LOSS, estimator="per-sample").measure((x, y))
    micro = NoiseMonitor(model, LOSS, estimator="micro-batch", micro_batches=6).measure((x, y))
    assert (micro["estimator"], micro["micro_batch_size"]) == ("micro-batch", 4)
    assert micro["tr_sigma"] == micro_batch_gradients(model, LOSS, x, y, 6).noise().tr_sigma
    assert per["estimator"] == "per-sample" and per["tr_sigma"] != micro["tr_sigma"]
    bn, bx, by = _bn_setup()
    with pytest.warns(UserWarning, match="no per-sample gradients"):
        row = NoiseMonitor(bn, LOSS, estimator="per-sample", metrics=["tr_sigma"]).measure((bx, by))
    assert row["status"] == "no per-sample gradients" and math.isnan(row.get("tr_sigma", math.nan))
    with pytest.raises(NoPerSampleGradients, match="BatchNorm2d in training mode"):
        NoiseMonitor(bn, LOSS, estimator="per-sample", on_error="raise").measure((bx, by))


def test_metrics_that_need_per_sample_gradients_get_a_status_under_micro_batches():
    model, x, y = _bn_setup()
    mon = NoiseMonitor(model, LOSS, metrics=["tr_sigma", "b_noise"])
    with pytest.warns(UserWarning):
        row = mon.measure((x, y))
    assert row["status"] == "b_noise: no per-sample gradients" and math.isfinite(row["tr_sigma"])
    with pytest.warns(UserWarning):
        small = mon.measure((x[:5], y[:5]))  # 5 samples: fewer than 3 micro-batches of 2
    assert "too-few-samples" in small["status"]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"estimator": "jackknife"}, "estimator"),
        ({"micro_batches": 2}, "micro_batches"),
        ({"micro_batches": 4.0}, "micro_batches"),
    ],
)
def test_bad_estimator_arguments_are_one_line_config_errors(kwargs, field):
    with pytest.raises(ConfigError) as err:
        NoiseMonitor(_mlp(), LOSS, **kwargs)
    assert err.value.field == field


def _snapshot(model, opt):
    return (
        [p.detach().clone() for p in model.parameters()],
        [b.clone() for b in model.buffers()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        torch.get_rng_state(),
        [m.training for m in model.modules()],
    )


def test_a_micro_batch_measurement_leaves_the_run_bit_for_bit_and_training_is_unchanged():
    def train(with_monitor):
        model, x, y = _bn_setup(torch.float32)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        mon = NoiseMonitor(model, LOSS, every=2) if with_monitor else None
        for _ in range(5):
            opt.zero_grad()
            LOSS(model(x), y).mean().backward()  # BatchNorm statistics and dropout: buffers and RNG move
            if mon:
                before = _snapshot(model, opt)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    mon.step((x, y), opt)
                after = _snapshot(model, opt)
                assert all(
                    all(a is b or torch.equal(a, b) for a, b in zip(u, v)) if isinstance(u, list) else torch.equal(u, v)
                    for u, v in zip(before, after)
                )
            opt.step()
        return [t.detach().clone() for t in [*model.parameters(), *model.buffers()]]

    assert all(torch.equal(a, b) for a, b in zip(train(False), train(True)))


@pytest.mark.parametrize("estimator", ["per-sample", "micro-batch"])
def test_b_simple_avg_is_the_ratio_of_sums_over_the_window(estimator):
    from noiseprobe.monitor.metrics.noise import BSimpleAvg

    model = _mlp()
    gen = torch.Generator().manual_seed(1)
    mon = NoiseMonitor(model, LOSS, metrics=["tr_sigma", "g_sq", BSimpleAvg(window=3)], estimator=estimator)
    rows = []
    for _ in range(5):
        x = torch.randn(64, 4, generator=gen, dtype=torch.float64) + 1.0
        rows.append(mon.measure((x, (x[:, 0] > 1).long() + (x[:, 1] > 1.5).long())))
    t, g = [r["tr_sigma"] for r in rows], [r["g_sq"] for r in rows]
    for k, row in enumerate(rows):
        lo = max(0, k - 2)
        assert row["b_simple_avg"] == pytest.approx(sum(t[lo : k + 1]) / sum(g[lo : k + 1]), rel=1e-12)
        assert row["b_simple_avg_lo"] <= row["b_simple_avg"] <= row["b_simple_avg_hi"]
    assert math.isnan(pooled_b_simple([])[0])
