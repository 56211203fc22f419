"""Reader for the IDX files of MNIST / Fashion-MNIST, and the NIN paper's split (App. B).

The user supplies the four standard files (gzipped or not), either flat in ``data_dir`` or in
torchvision's layout ``data_dir/FashionMNIST/raw/`` (``data_dir/MNIST/raw/`` for MNIST)::

    train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]

Split (docs/theory/noise_injection_nodes.md §2 ambiguity 3), ``split=``:

* ``"merged"`` (default, the paper's "FMNIST contains 70,000 images ... 60/40 training/validation
  split"): all 70,000 images, permuted with ``split_seed``, 42,000 train / 28,000 validation;
* ``"train"``: the 60,000 official training images only, 36,000 / 24,000;
* ``"official"``: the official 60,000 / 10,000 split, no permutation of the test set.

Standardisation by the training part's statistics as in :func:`noiseprobe.data.embedded.standardise`.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_choice, check_int, check_real
from noiseprobe.data.embedded import Dataset, random_split, standardise

_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FOLDERS = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
#: classes of MNIST and Fashion-MNIST: labels are 0..9
N_CLASSES = 10


def _bad(path: Path, fault: str) -> ConfigError:
    return ConfigError("path", str(path), f"a readable IDX file ({fault})")


def read_idx(path: str | Path, *, ndim: int | None = None, dtype: str | None = None) -> np.ndarray:
    """The array stored in one IDX file (gzip detected from the file's magic bytes).

    ConfigError naming the file and its fault for an unreadable file, a bad gzip stream, a wrong magic
    number, an unknown data-type code, a truncated header or body, or (when given) another ``ndim`` or
    ``dtype`` (e.g. ``"u1"``) than expected.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("path", str(path), "an existing IDX file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _bad(path, f"cannot read it: {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise _bad(path, f"bad gzip stream: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise _bad(path, f"wrong magic number {raw[:2].hex() or 'none'}; an IDX file starts with 0000")
    if raw[2] not in _DTYPES:
        raise _bad(path, f"unknown data type code 0x{raw[2]:02X}; IDX codes are 0x08, 0x09, 0x0B-0x0E")
    nd = raw[3]
    if nd == 0 or len(raw) < 4 + 4 * nd:
        raise _bad(path, f"{nd} dimensions in a header of {len(raw)} bytes")
    if ndim is not None and nd != ndim:
        raise _bad(path, f"{nd} dimensions where {ndim} are expected")
    dt = np.dtype(_DTYPES[raw[2]])
    if dtype is not None and dt != np.dtype(dtype).newbyteorder(">"):
        raise _bad(path, f"data type {dt.name} where {np.dtype(dtype).name} is expected")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=nd, offset=4))
    offset = 4 + 4 * nd
    expected = int(np.prod(dims, dtype=object)) * dt.itemsize
    if min(dims) < 0 or len(raw) - offset != expected:
        raise _bad(path, f"data size {len(raw) - offset} bytes does not match its header {dims} ({expected} bytes)")
    return np.frombuffer(raw, dt, offset=offset).reshape(dims).astype(dt.newbyteorder("="))


def read_idx_split(data_dir: str | Path, kind: str = "fashion-mnist") -> tuple[np.ndarray, ...]:
    """The four arrays (train images, train labels, test images, test labels), each file checked: images
    (n, rows, cols) and labels (n,) of unsigned bytes, equal counts, labels in 0..9 (ConfigError naming the
    file and its fault otherwise)."""
    f = find_idx_files(data_dir, kind)
    out = []
    for part in ("train", "test"):
        imgs = read_idx(f[f"{part}_images"], ndim=3, dtype="u1")
        labels = read_idx(f[f"{part}_labels"], ndim=1, dtype="u1")
        if imgs.shape[0] != labels.shape[0]:
            raise _bad(
                f[f"{part}_labels"],
                f"{labels.shape[0]} labels for the {imgs.shape[0]} images of {f[f'{part}_images'].name}",
            )
        if labels.size and int(labels.max()) >= N_CLASSES:
            raise _bad(
                f[f"{part}_labels"], f"label {int(labels.max())} outside the {N_CLASSES} classes 0..{N_CLASSES - 1}"
            )
        out += [imgs, labels]
    return tuple(out)


def idx_train_size(
    data_dir: str | Path, kind: str = "fashion-mnist", *, split: str = "merged", train_fraction: float = 0.6
) -> int:
    """Training samples the split offers (every file checked as in :func:`read_idx_split`): the bound of
    ``n_train`` that experiments check before a run starts."""
    check_choice("split", split, ("merged", "train", "official"))
    check_real("train_fraction", train_fraction, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    _, ya, _, yb = read_idx_split(data_dir, kind)
    if split == "official":
        return len(ya)
    return round(train_fraction * (len(ya) + len(yb) if split == "merged" else len(ya)))


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
        raise ConfigError(
            "data_dir",
            str(root),
            f"a folder holding {', '.join(s + '[.gz]' for s in missing)} "
            f"(flat, or under {FOLDERS[kind]}/raw/); nothing is downloaded",
        )
    return found


def load_idx_dataset(
    data_dir: str | Path,
    kind: str = "fashion-mnist",
    split_seed: int = 0,
    *,
    split: str = "merged",
    train_fraction: float = 0.6,
    n_train: int | None = None,
    standardize: str = "global",
    divide_by: str = "std",
) -> Dataset:
    """MNIST or Fashion-MNIST from IDX files, split and standardised (module docstring)."""
    check_choice("split", split, ("merged", "train", "official"))
    Xa, ya, Xb, yb = read_idx_split(data_dir, kind)
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
