"""The MLP experiments' data (paper 001, App. B): the embedded digits or the user's Fashion-MNIST,
split 60/40, standardised by the training part, optionally average-pooled (reduced quick presets)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_choice, check_int

DATASETS = ("embedded", "fashion-mnist")


@lru_cache(maxsize=4)
def load_mlp_data(
    *,
    data_dir: str = "",
    split: str = "merged",
    standardize: str = "global",
    split_seed: int = 0,
    n_train: int = 0,
    pool: int = 1,
) -> tuple[torch.Tensor, ...]:
    """(X_train, y_train, X_test, y_test): the embedded digits (``data_dir`` "") or FMNIST from
    ``data_dir``, split 60/40 and standardised by the training part (B1's loaders; ``n_train`` 0 = all),
    then optionally average-pooled ``pool`` × ``pool`` and re-standardised (global) by the pooled
    training part."""
    from noiseprobe.data.embedded import load_default
    from noiseprobe.data.idx import load_fashion_mnist

    check_choice("split", split, ("merged", "train", "official"))
    check_choice("standardize", standardize, ("global", "pixel"))
    check_int("split_seed", split_seed, lo=0)
    check_int("n_train", n_train, lo=0)
    check_int("pool", pool, lo=1, hi=28)
    nt = n_train or None
    ds = (
        load_fashion_mnist(data_dir, split_seed, split=split, n_train=nt, standardize=standardize)
        if data_dir
        else load_default(nt, split_seed, standardize=standardize)
    )
    xtr, ytr, xte, yte = ds
    if pool > 1:
        side = round(np.sqrt(xtr.shape[1]))
        if side * side != xtr.shape[1] or side % pool:
            raise ConfigError("pool", pool, f"a divisor of the image side {side} (d_in = {xtr.shape[1]})")

        def p(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(-1, side // pool, pool, side // pool, pool).mean((2, 4)).reshape(x.shape[0], -1)

        xtr, xte = p(xtr), p(xte)
        mu, sd = xtr.mean(), xtr.std()
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    return xtr.float(), ytr, xte.float(), yte


__all__ = ["DATASETS", "load_mlp_data"]
