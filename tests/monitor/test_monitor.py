"""NoiseMonitor: values against dense per-sample gradients, and a run left exactly as it was."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from noiseprobe import NoiseMonitor
from noiseprobe.core.errors import ConfigError


class Counter(nn.Module):
    """Updates a buffer on every forward (as BatchNorm's running statistics do)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return x


def _setup(dtype=torch.float64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), Counter(), nn.Dropout(0.2), nn.Linear(16, 3)).to(dtype)
    x, y = torch.randn(40, 6, dtype=dtype), torch.randint(0, 3, (40,))
    return model, x, y


def _dense(model, x, y):
    """Per-sample gradients by a loop of autograd calls (the independent reference), dropout off."""
    model.eval()
    rows = []
    for i in range(len(x)):
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))]))
    model.train()
    return torch.stack(rows).double()


def test_default_metrics_against_dense_per_sample_gradients():
    model, x, y = _setup()
    model.eval()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1}, {"params": model[4].parameters(), "lr": 0.02}])
    mon = NoiseMonitor(model, nn.CrossEntropyLoss(reduction="none"), every=1, effective_batch_size=32, top_k=3)
    row = mon.step((x, y), opt)
    J = _dense(model, x, y)
    n = len(x)
    gbar = J.mean(0)
    tr = float(((J - gbar) ** 2).sum() / (n - 1))
    assert row["tr_sigma"] == pytest.approx(tr, rel=1e-10)
    assert row["g_sq"] == pytest.approx(float(gbar @ gbar) - tr / n, rel=1e-10)
    assert row["b_simple"] == pytest.approx(tr / (float(gbar @ gbar) - tr / n), rel=1e-10)
    assert row["b_simple_lo"] <= row["b_simple"] <= row["b_simple_hi"]
    p0 = sum(p.numel() for p in model[0].parameters())
    diag = ((J - gbar) ** 2).sum(0) / (n - 1)
    assert row["temperature"] == pytest.approx(
        (0.1 * float(diag[:p0].sum()) + 0.02 * float(diag[p0:].sum())) / 32, rel=1e-10
    )
    C = (J - gbar).T @ (J - gbar) / n / 32
    lam = torch.linalg.eigvalsh(C).flip(0)[:3]
    assert [row[f"c_eig_{i}"] for i in (1, 2, 3)] == pytest.approx(lam.tolist(), rel=1e-8)


def _snapshot(model, opt):
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "flags": [m.training for m in model.modules()],
        "opt": {k: {n: v.clone() if torch.is_tensor(v) else v for n, v in s.items()} for k, s in opt.state.items()},
        "rng": torch.get_rng_state(),
    }


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(u, v) for u, v in zip(a, b))
    return a == b


def test_a_measurement_leaves_the_run_bit_for_bit_as_it_was():
    model, x, y = _setup(torch.float32)
    model[3].eval()  # mixed train/eval flags must survive
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss(reduction="none")
    for _ in range(2):  # optimizer state exists
        loss_fn(model(x), y).mean().backward()
        opt.step()
    loss_fn(model(x), y).mean().backward()  # .grad populated, step pending
    before = _snapshot(model, opt)
    mon = NoiseMonitor(model, loss_fn, every=1)
    assert mon.step((x, y), opt)
    assert _equal(before, _snapshot(model, opt))


def test_training_with_the_monitor_is_identical_to_training_without():
    def train(with_monitor):
        model, x, y = _setup(torch.float32)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        mon = NoiseMonitor(model, nn.CrossEntropyLoss(reduction="none"), every=2) if with_monitor else None
        for _ in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()  # dropout draws from the global RNG
            if mon:
                mon.step((x, y), opt)
            opt.step()
        return [p.detach().clone() for p in model.parameters()], mon

    plain, _ = train(False)
    watched, mon = train(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))
    assert list(mon.history["step"]) == [0, 2, 4]


def test_every_counts_optimizer_steps_and_measure_measures_now():
    model, x, y = _setup()
    mon = NoiseMonitor(model, nn.CrossEntropyLoss(reduction="none"), every=3, metrics=["tr_sigma"])
    got = [bool(mon.step((x, y))) for _ in range(7)]
    assert got == [True, False, False, True, False, False, True]
    assert mon.measure((x, y))["step"] == 7
    assert set(mon.history.columns) == {
        "step",
        "tr_sigma",
        "tr_sigma_se",
        "estimator",
        "micro_batch_size",
        "status",
        "seconds",
    }
    assert set(mon.history["status"]) == {"ok"}


def test_logs_csv_and_parquet(tmp_path):
    model, x, y = _setup()
    mon = NoiseMonitor(model, nn.CrossEntropyLoss(reduction="none"), every=1, log_dir=tmp_path, metrics=["g_sq"])
    for _ in range(3):
        mon.step((x, y))
    mon.close()
    csv, pq = pd.read_csv(tmp_path / "monitor.csv"), pd.read_parquet(tmp_path / "monitor.parquet")
    assert list(csv["step"]) == list(pq["step"]) == [0, 1, 2]
    np.testing.assert_allclose(csv["g_sq"], mon.history["g_sq"], rtol=1e-12)


def test_tensorboard_logger(tmp_path):
    pytest.importorskip("tensorboard")
    model, x, y = _setup()
    mon = NoiseMonitor(model, nn.CrossEntropyLoss(reduction="none"), every=1, log_dir=tmp_path, loggers=["tensorboard"])
    mon.step((x, y))
    mon.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"every": 0}, "every"),
        ({"metrics": ["nope"]}, "metrics"),
        ({"metrics": []}, "metrics"),
        ({"metrics": [3]}, "metrics"),
        ({"metrics": ["default", "tr_sigma"]}, "metrics"),  # a name twice
        ({"metrics": ["niw_decay"]}, "metrics"),  # needs NIWDecay(handle)
        ({"effective_batch_size": 0}, "effective_batch_size"),
        ({"loggers": ["nope"]}, "loggers"),
    ],
)
def test_bad_arguments_are_one_line_config_errors(kwargs, field):
    model, _, _ = _setup()
    with pytest.raises(ConfigError) as err:
        NoiseMonitor(model, nn.CrossEntropyLoss(reduction="none"), **kwargs)
    assert err.value.field == field


def test_report_draws_a_monitor_log_directory(tmp_path):
    from noiseprobe.core.report import write_report

    model, x, y = _setup()
    mon = NoiseMonitor(
        model,
        nn.CrossEntropyLoss(reduction="none"),
        every=1,
        log_dir=tmp_path / "mon",
        metrics=["tr_sigma", "g_sq", "b_simple", "top_k_c"],
        top_k=2,
    )
    for _ in range(3):
        mon.step((x, y))
    page = write_report(tmp_path).read_text()
    assert page.count("<img") == 3 and "monitor: mon" in page and "3 measurements" in page


def test_tail_index_of_projections_gaussian_vs_heavy_tailed():
    """Per-sample losses ½|w − z_i|² (a Linear map of a constant input): g_i = w − z_i, so projections are
    as Gaussian or as heavy-tailed as z. Gaussian z: the test does not reject Gaussianity; Student-t(3) z:
    tail index 3 within its SE, and Gaussianity rejected."""
    from noiseprobe.monitor.metrics import heavy_tails as metrics

    def run(sample):
        torch.manual_seed(0)
        model = nn.Linear(1, 4, bias=False).double()
        mon = NoiseMonitor(model, lambda out, z: 0.5 * ((out - z) ** 2).sum(1), every=1, metrics=["tail_index"])
        for _ in range(metrics.TAIL_MIN // (64 * metrics.TAIL_DIRECTIONS) + 3):
            row = mon.measure((torch.ones(64, 1, dtype=torch.float64), sample((64, 4)).double()))
        return row

    gauss = run(lambda shape: torch.randn(shape))
    heavy = run(lambda shape: torch.distributions.StudentT(3.0).sample(shape))
    assert gauss["tail_samples"] >= metrics.TAIL_MIN
    assert gauss["tail_normal_p"] > 1e-3 > heavy["tail_normal_p"]
    assert abs(heavy["tail_mle"] - 3.0) <= 4 * heavy["tail_mle_se"]
    assert gauss["tail_mle"] > heavy["tail_mle"] + 4 * heavy["tail_mle_se"]


def test_under_autocast_the_measurement_accumulates_in_float32():
    model, x, y = _setup(torch.float32)
    model.eval()
    loss = nn.CrossEntropyLoss(reduction="none")
    plain = NoiseMonitor(model, loss, every=1).measure((x, y))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = NoiseMonitor(model, loss, every=1).measure((x, y))
    for key in ("tr_sigma", "g_sq", "b_simple", "c_eig_1"):
        assert mixed[key] == pytest.approx(plain[key], rel=1e-6), key


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_runs_on_the_model_device(device):
    model, x, y = _setup(torch.float32)
    model.eval()
    row = NoiseMonitor(
        model.to(device), nn.CrossEntropyLoss(reduction="none"), every=1, metrics=["tr_sigma", "sharpness"]
    ).measure((x.to(device), y.to(device)))
    assert row["tr_sigma"] > 0 and row["sharpness"] > 0


def test_temperature_with_one_learning_rate_equals_lr_tr_sigma_over_s():
    model, x, y = _setup()
    model.eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    row = NoiseMonitor(model, nn.CrossEntropyLoss(reduction="none"), every=1, effective_batch_size=16).step((x, y), opt)
    J = _dense(model, x, y)
    tr = float(((J - J.mean(0)) ** 2).sum() / (len(x) - 1))
    assert row["temperature"] == pytest.approx(0.3 * tr / 16, rel=1e-10)


def test_mlflow_logger_sends_finite_values_by_step(monkeypatch):
    """The MLflow logger against a stand-in module (mlflow is an optional extra, not installed for the tests)."""
    import sys
    import types

    calls = []
    fake = types.ModuleType("mlflow")
    fake.log_metrics = lambda metrics, step: calls.append((step, metrics))
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    model, x, y = _setup()
    mon = NoiseMonitor(model, nn.CrossEntropyLoss(reduction="none"), every=2, metrics=["tr_sigma"], loggers=["mlflow"])
    for _ in range(3):
        mon.step((x, y))
    assert [s for s, _ in calls] == [0, 2]
    assert calls[0][1]["noiseprobe.tr_sigma"] == pytest.approx(mon.history["tr_sigma"].iloc[0])


def test_mlflow_missing_is_a_config_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import fails
    model, _, _ = _setup()
    with pytest.raises(ConfigError, match="mlflow"):
        NoiseMonitor(model, nn.CrossEntropyLoss(reduction="none"), loggers=["mlflow"])


def test_logs_append_one_row_at_a_time_and_honour_the_umask(tmp_path):
    """The CSV is appended per row (complete while the monitor runs), the Parquet file written in row groups
    (complete after close, equal to the history); every log file and figure gets a normal file's mode."""
    import os
    import stat

    import pyarrow.parquet as pq

    from noiseprobe.core.report import write_report
    from noiseprobe.monitor import loggers

    old = os.umask(0o027)
    try:
        model, x, y = _setup()
        mon = NoiseMonitor(
            model, nn.CrossEntropyLoss(reduction="none"), every=1, log_dir=tmp_path, metrics=["tr_sigma"]
        )
        n = loggers.PARQUET_ROWS + 6
        for i in range(n):
            mon.step((x[: 8 + i % 5], y[: 8 + i % 5]))
            assert len(pd.read_csv(tmp_path / "monitor.csv")) == i + 1
        assert f"{n} measurements" in write_report(tmp_path).read_text()  # mid-run: the report reads the CSV
        mon.close()
        meta = pq.ParquetFile(tmp_path / "monitor.parquet").metadata
        assert meta.num_rows == n and meta.num_row_groups == 2
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "monitor.parquet"), mon.history)
        write_report(tmp_path)
        files = [p for p in tmp_path.iterdir() if p.suffix in (".csv", ".parquet", ".png", ".html")]
        assert {p.suffix for p in files} == {".csv", ".parquet", ".png", ".html"}
        for p in files:
            assert stat.S_IMODE(p.stat().st_mode) == 0o640, p.name
    finally:
        os.umask(old)


def test_a_new_column_widens_the_logs(tmp_path):
    """A column first seen late (a metric that failed before, more eigenvalues) rewrites the CSV header and
    the Parquet schema once; earlier rows read as NaN there."""
    model, x, y = _setup()
    mon = NoiseMonitor(
        model, nn.CrossEntropyLoss(reduction="none"), every=1, log_dir=tmp_path, metrics=["top_k_c"], top_k=4
    )
    mon.step((x[:3], y[:3]))  # 2 eigenvalues of C
    mon.step((x, y))  # 4
    mon.close()
    for frame in (pd.read_csv(tmp_path / "monitor.csv"), pd.read_parquet(tmp_path / "monitor.parquet")):
        assert frame["c_eig_4"].isna().tolist() == [True, False]
        assert frame["c_eig_1"].tolist() == pytest.approx(mon.history["c_eig_1"].tolist())


def test_sequence_first_refusal_names_only_what_the_monitor_offers():
    model = nn.Linear(4, 3).double()
    x, y = torch.randn(2, 5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))  # (T, N, F)
    mon = NoiseMonitor(model, nn.CrossEntropyLoss(reduction="none"), forward=lambda m, b: m(b[0]).mean(0))
    with pytest.raises(ConfigError, match="batch of N = 5 on axis 0") as err:
        mon.step(((x,), y))
    assert "method" not in str(err.value) and "batch-first" in str(err.value)


def test_wandb_logger_offline(tmp_path, monkeypatch):
    """W&B in its offline mode (no network): values land in the run under noiseprobe/<column>."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    model, x, y = _setup()
    mon = NoiseMonitor(model, nn.CrossEntropyLoss(reduction="none"), every=1, metrics=["tr_sigma"], loggers=["wandb"])
    run = mon.loggers[0].run
    for _ in range(2):
        mon.step((x, y))
    assert run.summary["noiseprobe/tr_sigma"] == pytest.approx(mon.history["tr_sigma"].iloc[-1])
    assert run.summary["noiseprobe/step"] == 1
    mon.close()
    assert wandb.run is None  # the run the logger started is finished
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


def test_memory_estimate_counts_what_the_chosen_metrics_hold() -> None:
    """The pre-measurement memory estimate sums the chosen metrics' parameter-sized vectors: the default
    (Gram-based noise metrics) holds a few, Lanczos-based curvature metrics their Krylov blocks; it no longer
    charges every monitor for Lanczos (which refused GPT-2 small's default measurement on 24 GiB)."""
    import noiseprobe as npb

    model = nn.Linear(100, 10)  # P = 1010 float32 parameters
    loss = nn.CrossEntropyLoss(reduction="none")
    p_bytes = 1010 * 4
    rows = 8 * 1000 * 4  # one layer's per-sample rows at a time: N × the largest parameter tensor (weight)
    default = npb.NoiseMonitor(model, loss, verbose=False).estimated_peak(8)
    assert default == p_bytes * (4 + 1) + rows + 8 * 64  # of the 5 default metrics temperature holds one vector
    curv = npb.NoiseMonitor(model, loss, metrics=["sharpness", "top_k_h"], top_k=3, verbose=False).estimated_peak(8)
    # top_k_h keeps every layer's factors (N per-sample rows of every parameter at most)
    assert curv == p_bytes * (4 + 2 * (1 + 10 + 7) + 2 * (3 + 10 + 7)) + 8 * p_bytes + 8 * 64
    kept = npb.NoiseMonitor(model, loss, metrics=["tr_sigma", "tail_index"], verbose=False).estimated_peak(8)
    assert kept == p_bytes * (4 + 1) + 8 * p_bytes + 8 * 64  # tail_index keeps every layer's factors
    micro = npb.NoiseMonitor(model, loss, estimator="micro-batch", micro_batches=4, verbose=False)
    assert micro.estimated_peak(8) == p_bytes * (4 + 1) + 4 * p_bytes + 8 * 64  # the m micro-batch gradients
