"""One per-sample pass per measurement: Gram-only metrics stream the Gram matrices layer by layer
(`per_sample_grams`), a metric needing other products (`per_sample_products`) makes the measurement keep
factors (`per_sample_gradients`) instead, and both give the same values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from noiseprobe import NoiseMonitor
from noiseprobe.monitor import context

LOSS = nn.CrossEntropyLoss(reduction="none")


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False),
        nn.Flatten(),
        nn.Linear(16, 3),
    ).double()


@pytest.mark.parametrize("metrics", [["default"], ["layers"]])
def test_gram_metrics_stream_and_product_metrics_keep_factors(metrics, monkeypatch):
    calls = {"per_sample_grams": 0, "per_sample_gradients": 0}

    def counted(name):
        real = getattr(context, name)

        def wrapper(*a, **kw):
            calls[name] += 1
            return real(*a, **kw)

        return wrapper

    for name in calls:
        monkeypatch.setattr(context, name, counted(name))
    model = _cnn()
    x, y = torch.randn(7, 2, 4, 4, dtype=torch.float64), torch.randint(0, 3, (7,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    streamed = NoiseMonitor(model, LOSS, metrics=metrics, on_error="raise").measure((x, y), opt)
    assert calls == {"per_sample_grams": 1, "per_sample_gradients": 0}
    kept = NoiseMonitor(model, LOSS, metrics=[*metrics, "tail_index"], on_error="raise").measure((x, y), opt)
    assert calls == {"per_sample_grams": 1, "per_sample_gradients": 1}
    assert streamed["status"] == kept["status"] == "ok"
    values = {k: v for k, v in streamed.items() if isinstance(v, float) and k != "seconds"}
    assert len(values) >= 10
    for k, v in values.items():
        assert kept[k] == pytest.approx(v, rel=1e-10, abs=1e-14), k
