"""Reader for the IDX files of MNIST / Fashion-MNIST, and the NIN paper's split (App. B).

The user supplies the four standard files (gzipped or not), either flat in ``data_dir`` or in
torchvision's layout ``data_dir/FashionMNIST/raw/`` (``data_dir/MNIST/raw/`` for MNIST)::

    train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]

Split (reference §2 ambiguity 3), ``split=``:

* ``"merged"`` (default, the paper's "FMNIST contains 70,000 images ... 60/40 training/validation
  split"): all 70,000 images, permuted with ``split_seed``, 42,000 train / 28,000 validation;
* ``"train"``: the 60,000 official training images only, 36,000 / 24,000;
* ``"official"``: the official 60,000 / 10,000 split, no permutation of the test set.

Standardisation by the training part's statistics as in :func:`noiseprobe.data.embedded.standardise`.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_choice, check_int
from noiseprobe.data.embedded import Dataset, random_split, standardise

_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
FOLDERS = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in one IDX file (gzip detected from the file's magic bytes)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("path", str(path), "an existing IDX file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ConfigError("path", str(path), "an IDX file (magic 0x0000, type byte 0x08-0x0E)")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ConfigError("path", str(path), f"an IDX file whose data size matches its header {dims} "
                                             f"({expected} bytes; found {len(raw) - offset})")
    return np.frombuffer(raw, dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def find_idx_files(data_dir: str | Path, kind: str = "fashion-mnist") -> dict[str, Path]:
    """Paths of the four IDX files in ``data_dir`` or ``data_dir/<Folder>/raw``; ConfigError if missing."""
    check_choice("kind", kind, tuple(FOLDERS))
    root = Path(data_dir)
    dirs = [root, root / FOLDERS[kind] / "raw"]
    found: dict[str, Path] = {}
    for key, stem in FILES.items():
        for d in dirs:
            hit = next((d / (stem + ext) for ext in (".gz", "") if (d / (stem + ext)).is_file()), None)
            if hit is not None:
                found[key] = hit
                break
    missing = [FILES[k] for k in FILES if k not in found]
    if missing:
        raise ConfigError("data_dir", str(root), f"a folder holding {', '.join(s + '[.gz]' for s in missing)} "
                                                 f"(flat, or under {FOLDERS[kind]}/raw/); nothing is downloaded")
    return found


def load_idx_dataset(data_dir: str | Path, kind: str = "fashion-mnist", split_seed: int = 0, *,
                     split: str = "merged", train_fraction: float = 0.6, n_train: int | None = None,
                     standardize: str = "global", divide_by: str = "std") -> Dataset:
    """MNIST or Fashion-MNIST from IDX files, split and standardised (module docstring)."""
    check_choice("split", split, ("merged", "train", "official"))
    f = find_idx_files(data_dir, kind)
    Xa, ya = read_idx(f["train_images"]), read_idx(f["train_labels"])
    Xb, yb = read_idx(f["test_images"]), read_idx(f["test_labels"])
    for imgs, labels, key in ((Xa, ya, "train"), (Xb, yb, "test")):
        if imgs.shape[0] != labels.shape[0]:
            raise ConfigError("data_dir", str(data_dir), f"{key} images and labels of equal count "
                                                         f"({imgs.shape[0]} vs {labels.shape[0]})")
    if split == "official":
        if n_train is not None:
            check_int("n_train", n_train, lo=1, hi=len(ya))
        return standardise(kind, Xa[:n_train], ya[:n_train], Xb, yb, standardize=standardize, divide_by=divide_by)
    X, y = (np.concatenate([Xa, Xb]), np.concatenate([ya, yb])) if split == "merged" else (Xa, ya)
    tr, te = random_split(len(y), train_fraction, split_seed, n_train)
    return standardise(kind, X[tr], y[tr], X[te], y[te], standardize=standardize, divide_by=divide_by)


def load_fashion_mnist(data_dir: str | Path, split_seed: int = 0, **options: Any) -> Dataset:
    """Fashion-MNIST with the paper's preprocessing (App. B); options as :func:`load_idx_dataset`."""
    return load_idx_dataset(data_dir, "fashion-mnist", split_seed, **options)
