"""The monitor never stops the run it watches (issue 18.5): each fault injected into a real training loop
becomes a status in the history row and one warning, every step runs, and the trained model and optimizer
are bit for bit those of the same loop without the monitor."""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch
from torch import nn

from noiseprobe import NoiseMonitor
from noiseprobe.core.errors import ConfigError, NumericalError
from noiseprobe.monitor import context, monitor

STEPS = 8


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 5, generator=g, dtype=torch.float64)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()


def _loss(out, y):
    return nn.functional.cross_entropy(out, y, reduction="none")


def _batches():
    x, y = _data()
    out = [(x, y)] * STEPS
    out[5] = (x[:2], y[:2])  # a last-batch-of-an-epoch sized batch in the middle
    return out


def _train(mon_factory=None):
    """The loop; returns (model, optimizer, rows measured, steps run)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mon = mon_factory(model) if mon_factory else None
    ran = 0
    for step, (x, y) in enumerate(_batches()):
        opt.zero_grad()
        loss = _loss(model(x), y).mean()
        loss.backward()
        if mon is not None:
            mon.step((x, y), opt, loss=loss)
        opt.step()
        ran = step + 1
    if mon is not None:
        mon.close()
    return model, opt, mon, ran


def _same_state(a, b):
    (ma, oa), (mb, ob) = a, b
    assert all(torch.equal(p, q) for p, q in zip(ma.state_dict().values(), mb.state_dict().values(), strict=True))
    sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]) for k in sa)


@pytest.fixture(scope="module")
def plain():
    model, opt, _, ran = _train()
    assert ran == STEPS
    return model, opt


def test_each_fault_is_a_status_and_the_run_is_unchanged(plain, tmp_path, monkeypatch):
    calls = {}

    def flaky_loss(out, y):  # the monitor's loss: non-finite at one measurement (the loop's own loss is not)
        value = _loss(out, y)
        return value * float("nan") if calls.get("nan") else value

    oom = {"step": 2}

    def raising(real):  # the per-sample engine (factors or streamed Gram) runs out of memory at one step
        def psg(model, *a, **kw):
            if torch.is_grad_enabled() and oom["step"] == -1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return real(model, *a, **kw)

        return psg

    monkeypatch.setattr(context, "per_sample_gradients", raising(context.per_sample_gradients))
    monkeypatch.setattr(context, "per_sample_grams", raising(context.per_sample_grams))
    real_mem = monitor.available_memory
    monkeypatch.setattr(monitor, "available_memory", lambda device: 1 if calls.get("tight") else real_mem(device))

    fake = types.ModuleType("mlflow")

    def log_metrics(metrics, step):
        raise ModuleNotFoundError("No module named 'mlflow.tracking'")

    fake.log_metrics = log_metrics
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    (tmp_path / "log").mkdir()

    def factory(model):
        mon = NoiseMonitor(
            model, flaky_loss, every=1, log_dir=tmp_path / "log", loggers=["mlflow"], metrics=["default", "sharpness"]
        )
        real_step = mon.step

        def step(batch, opt, loss=None):  # arm the faults that need a step number
            oom["step"] = -1 if mon.steps == 2 else 0
            calls["tight"] = mon.steps == 4
            calls["nan"] = mon.steps == 3
            return real_step(batch, opt, loss=loss)

        mon.step = step
        return mon

    with pytest.warns(UserWarning) as record:
        model, opt, mon, ran = _train(factory)
    assert ran == STEPS
    _same_state(plain, (model, opt))
    hist = mon.history
    assert list(hist["step"]) == list(range(STEPS))
    status = dict(zip(hist["step"], hist["status"], strict=True))
    assert status[2] == "out-of-memory; log MlflowLogger (ModuleNotFoundError)"
    assert status[3] == "non-finite; log MlflowLogger (ModuleNotFoundError)"
    assert status[4].startswith("memory; log")
    assert status[5].startswith("tr_sigma: too-few-samples, g_sq: too-few-samples, b_simple: too-few-samples")
    assert "top_k_c" not in status[5] and "sharpness" not in status[5]
    for s in (2, 3, 4):
        assert hist.loc[hist.step == s, ["tr_sigma", "g_sq", "sharpness"]].isna().all(axis=None)
    assert hist.loc[hist.step == 5, ["c_eig_1", "sharpness"]].notna().all(axis=None)
    assert all(status[s] == "log MlflowLogger (ModuleNotFoundError)" for s in (0, 1, 6, 7))
    # one warning per reason
    texts = [str(w.message) for w in record]
    assert len(texts) == 5, texts  # out-of-memory, non-finite, memory, too-few-samples ...
    assert sum("MlflowLogger" in t for t in texts) == 1  # ... and the logger's, once for 8 rows
    # the log directory holds every row (a failing logger does not stop the others)
    import pandas as pd

    assert list(pd.read_csv(tmp_path / "log" / "monitor.csv")["step"]) == list(range(STEPS))


def test_a_full_disk_keeps_the_rows_in_memory(plain, tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this platform")
    log = tmp_path / "log"
    log.mkdir()
    (log / "monitor.csv").symlink_to("/dev/full")  # every write: ENOSPC
    with pytest.warns(UserWarning, match="No space left on device"):
        model, opt, mon, ran = _train(lambda m: NoiseMonitor(m, _loss, every=2, log_dir=log))
    assert ran == STEPS
    _same_state(plain, (model, opt))
    assert len(mon.history) == STEPS // 2 and mon.history["tr_sigma"].notna().all()
    assert set(mon.history["status"]) == {"log CsvLogger (OSError)"}


def test_on_error_raise_restores_exceptions():
    x, y = _data()
    model = nn.Sequential(nn.Linear(5, 3)).double()
    mon = NoiseMonitor(model, lambda o, t: _loss(o, t) * float("inf"), every=1, on_error="raise")
    with pytest.raises(NumericalError, match="non-finite"):
        mon.step((x, y))
    with pytest.raises(ConfigError, match="on_error"):
        NoiseMonitor(model, _loss, on_error="ignore")


def test_the_users_own_errors_raise_at_the_first_measurement_then_become_a_status():
    x, y = _data()
    model = nn.Sequential(nn.Linear(5, 3)).double()
    broken = {"on": True}

    def loss_fn(o, t):
        if broken["on"]:
            raise TypeError("my loss takes (output, target)")
        return _loss(o, t)

    mon = NoiseMonitor(model, loss_fn, every=1)
    with pytest.raises(TypeError):
        mon.step((x, y))
    with pytest.raises(ConfigError, match="batch"):
        mon.step(x)  # structurally malformed: not a pair
    broken["on"] = False
    assert mon.step((x, y))["status"] == "ok"
    broken["on"] = True
    with pytest.warns(UserWarning, match="TypeError"):
        row = mon.step((x, y))
    assert row["status"] == ", ".join(f"{m}: error (TypeError)" for m in ("tr_sigma", "g_sq", "b_simple", "top_k_c"))
