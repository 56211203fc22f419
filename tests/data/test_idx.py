"""IDX reader and the paper's split/standardisation, on small IDX files written here."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from noiseprobe.core.errors import ConfigError
from noiseprobe.data.idx import (
    idx_train_size,
    load_fashion_mnist,
    load_idx_dataset,
    read_idx,
)

TYPE_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    """An IDX file written independently of the reader: magic, big-endian dims, big-endian data."""
    head = bytes([0, 0, TYPE_CODES[arr.dtype.type], arr.ndim]) + b"".join(struct.pack(">i", d) for d in arr.shape)
    body = head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(body) if gz else body)
    return path


@pytest.mark.parametrize("dtype", list(TYPE_CODES))
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, dtype, gz):
    rng = np.random.default_rng(0)
    arr = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    back = read_idx(write_idx(tmp_path / "a.idx", arr, gz))
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_read_idx_rejects_corrupt_files(tmp_path):
    good = write_idx(tmp_path / "a", np.arange(12, dtype=np.uint8).reshape(3, 4))
    (tmp_path / "short").write_bytes(good.read_bytes()[:-1])
    (tmp_path / "magic").write_bytes(b"\x01\x02" + good.read_bytes()[2:])
    for name in ("short", "magic", "missing"):
        with pytest.raises(ConfigError, match="path"):
            read_idx(tmp_path / name)


def fake_mnist(
    root: Path, n_train: int = 60, n_test: int = 40, gz: bool = True, seed: int = 0
) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    xa = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    xb = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    ya, yb = rng.integers(0, 10, n_train, dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8)
    ext = ".gz" if gz else ""
    for stem, arr in (
        ("train-images-idx3-ubyte", xa),
        ("train-labels-idx1-ubyte", ya),
        ("t10k-images-idx3-ubyte", xb),
        ("t10k-labels-idx1-ubyte", yb),
    ):
        write_idx(root / (stem + ext), arr, gz)
    return xa, ya, xb, yb


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_merged_split_and_training_standardisation(tmp_path, layout):
    root = tmp_path / "data"
    xa, ya, xb, yb = fake_mnist(root if layout == "flat" else root / "FashionMNIST" / "raw", gz=layout == "flat")
    ds = load_fashion_mnist(root, split_seed=3)
    assert ds.X_train.shape == (60, 784) and ds.X_test.shape == (40, 784)  # 60/40 of all 100
    assert ds.X_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    # training part standardised to mean 0, std 1 (global); the test part uses the training statistics
    assert abs(float(ds.X_train.double().mean())) < 1e-6 and float(
        ds.X_train.double().std(correction=0)
    ) == pytest.approx(1, abs=1e-5)
    X = np.concatenate([xa, xb]).reshape(100, -1).astype(np.float64)
    y = np.concatenate([ya, yb])
    # each standardised row maps back to exactly one raw image with the same label
    raw_test = ds.X_test.double().numpy() * float(ds.std) + float(ds.mean)
    for row, label in zip(raw_test[:5], ds.y_test[:5].numpy()):
        hit = np.flatnonzero(np.abs(X - row).max(1) < 1e-3)
        assert len(hit) == 1 and y[hit[0]] == label
    # train and test are disjoint and cover the 100 images
    idx = [
        int(np.flatnonzero(np.abs(X - r).max(1) < 1e-3)[0])
        for r in np.concatenate([ds.X_train.double().numpy(), ds.X_test.double().numpy()]) * float(ds.std)
        + float(ds.mean)
    ]
    assert sorted(idx) == list(range(100))
    # reproducible for a seed, different for another
    assert torch.equal(load_fashion_mnist(root, split_seed=3).X_train, ds.X_train)
    assert not torch.equal(load_fashion_mnist(root, split_seed=4).X_train, ds.X_train)


def test_split_options(tmp_path):
    fake_mnist(tmp_path, n_train=50, n_test=20)
    assert load_idx_dataset(tmp_path, split="train").X_train.shape[0] == 30
    off = load_idx_dataset(tmp_path, split="official", n_train=10)
    assert off.X_train.shape[0] == 10 and off.X_test.shape[0] == 20
    pix = load_idx_dataset(tmp_path, standardize="pixel")
    m = pix.X_train.double()
    assert float(m.mean(0).abs().max()) < 1e-5 and float((m.std(0, correction=0) - 1).abs().max()) < 1e-4
    var = load_idx_dataset(tmp_path, divide_by="variance")
    glob = load_idx_dataset(tmp_path)
    torch.testing.assert_close(var.X_train * float(glob.std), glob.X_train, rtol=1e-4, atol=1e-5)


def test_missing_files_name_what_is_expected_where(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_fashion_mnist(tmp_path)
    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg and "FashionMNIST/raw" in msg
    with pytest.raises(ConfigError, match="MNIST/raw"):
        load_idx_dataset(tmp_path, kind="mnist")


def _faults(good: bytes) -> dict[str, tuple[bytes, str]]:
    """Damaged versions of an IDX file (3, 4) uint8, and the fault the reader must name."""
    return {
        "magic": (b"\x01\x02" + good[2:], "wrong magic"),
        "dtype": (good[:2] + b"\x07" + good[3:], "unknown data type code 0x07"),
        "ndim0": (good[:3] + b"\x00" + good[4:], "0 dimensions"),
        "ndim_big": (good[:3] + b"\xff" + good[4:], "255 dimensions"),
        "short": (good[:-1], "does not match its header"),
        "long": (good + b"\x00", "does not match its header"),
        "negative": (good[:4] + b"\xff\xff\xff\xfd" + good[8:], "does not match its header"),
        "gzip_truncated": (gzip.compress(good)[:-10], "bad gzip stream"),
        "gzip_garbage": (b"\x1f\x8b" + b"\x00" * 30, "bad gzip stream"),
        "empty": (b"", "wrong magic"),
    }


@pytest.mark.parametrize("fault", list(_faults(b"\x00" * 20)))
def test_read_idx_names_the_file_and_its_fault(tmp_path, fault):
    good = write_idx(tmp_path / "good", np.arange(12, dtype=np.uint8).reshape(3, 4)).read_bytes()
    data, why = _faults(good)[fault]
    (tmp_path / fault).write_bytes(data)
    with pytest.raises(ConfigError) as err:
        read_idx(tmp_path / fault)
    assert str(tmp_path / fault) in str(err.value) and why in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_read_idx_checks_the_expected_shape_and_type(tmp_path):
    f = write_idx(tmp_path / "a", np.zeros((3, 4), np.float32))
    with pytest.raises(ConfigError, match="2 dimensions where 3 are expected"):
        read_idx(f, ndim=3)
    with pytest.raises(ConfigError, match="float32 where uint8 is expected"):
        read_idx(f, dtype="u1")
    assert read_idx(f, ndim=2, dtype="f4").shape == (3, 4)


def test_unreadable_idx_file(tmp_path, monkeypatch):
    f = write_idx(tmp_path / "a", np.zeros((3, 4), np.uint8))

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ConfigError, match="cannot read it: Permission denied"):
        read_idx(f)


def _dataset_fault(root: Path, fault: str) -> str:
    """Break one file of a fake MNIST in ``root``; return the file's name."""
    if fault == "count":
        write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(59, np.uint8), gz=True)
        return "train-labels-idx1-ubyte.gz"
    if fault == "label":
        write_idx(root / "t10k-labels-idx1-ubyte.gz", np.full(40, 200, np.uint8), gz=True)
        return "t10k-labels-idx1-ubyte.gz"
    if fault == "image_dtype":
        write_idx(root / "train-images-idx3-ubyte.gz", np.zeros((60, 28, 28), np.float32), gz=True)
        return "train-images-idx3-ubyte.gz"
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.zeros((40, 1), np.uint8), gz=True)
    return "t10k-labels-idx1-ubyte.gz"


@pytest.mark.parametrize(
    "fault,why",
    [
        ("count", "59 labels for the 60 images"),
        ("label", "label 200 outside the 10 classes"),
        ("image_dtype", "float32 where uint8"),
        ("label_ndim", "2 dimensions where 1"),
    ],
)
def test_dataset_checks_name_the_file(tmp_path, fault, why):
    fake_mnist(tmp_path)
    name = _dataset_fault(tmp_path, fault)
    for call in (lambda: load_fashion_mnist(tmp_path), lambda: idx_train_size(tmp_path)):
        with pytest.raises(ConfigError) as err:
            call()
        assert name in str(err.value) and why in str(err.value)


def test_idx_train_size_bounds_n_train(tmp_path):
    fake_mnist(tmp_path, n_train=50, n_test=20)
    assert idx_train_size(tmp_path) == 42 == load_idx_dataset(tmp_path).X_train.shape[0]
    assert idx_train_size(tmp_path, split="train") == 30 == load_idx_dataset(tmp_path, split="train").X_train.shape[0]
    assert idx_train_size(tmp_path, split="official") == 50
    with pytest.raises(ConfigError, match="n_train"):
        load_idx_dataset(tmp_path, n_train=43)
