"""The NIN MLP sweeps' typed config (nin-fig1, nin-fig2-bottom, nin-fig3; App. B settings), their data and
preset defaults.

Ambiguities exposed as config fields (docs/theory/noise_injection_nodes.md §2): ``niw_init`` ("unit": W_NI ~ N(0, 1),
the NIN's own fan-in 1; "layer": N(0, 1/d_ℓ), the fan-in of the layer it feeds, as an extra input
column of W^(0) would get), ``standardize`` (global/pixel), ``split`` (FMNIST: merged 70k / official
train 60k / official), ``nin_layer``, ``epochs``, the MSE target (one-hot, Keras mean, no ½).
Default ``niw_init = "layer"``: only then does the downstream stability edge η σε² λ_max ≈ 2 with
λ_max ≈ (2/C)·‖W_NI‖²/2 for MSE scale as Table 1's d_in/(N_w η) (‖W_NI‖² ≈ N_w/d_in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from noiseprobe.core.config import ExperimentConfig, param
from noiseprobe.core.errors import ConfigError
from noiseprobe.experiments._data import IMAGE_SIDES, embedded_name, embedded_train_size
from noiseprobe.nin.data import DATASETS, load_mlp_data
from noiseprobe.nin.ensemble import LOSSES

NIW_INITS = ("unit", "layer")


@dataclass(frozen=True, kw_only=True)
class SweepConfig(ExperimentConfig):
    """A σε × seed sweep of ReLU MLPs with one NIN (module docstring)."""

    dataset: str = param("embedded", choices=DATASETS, help="embedded digits or the user's FMNIST")
    data_dir: str = param("", help="the folder with the Fashion-MNIST IDX files (dataset fashion-mnist)")
    split: str = param("merged", choices=("merged", "train", "official"))
    standardize: str = param("global", choices=("global", "pixel"))
    split_seed: int = param(0, lo=0)
    n_train: int = param(0, lo=0, help="training samples (0: all)")
    pool: int = param(1, lo=1, hi=28, help="average-pool the images pool x pool")
    hidden: list[int] = param(lo=1, min_len=1, help="hidden layer widths, e.g. [1024]")
    loss: str = param(choices=LOSSES)
    lr: float = param(lo=0.0, lo_open=True)
    batch_size: int = param(lo=1)
    epochs: int = param(lo=1)
    record_every: int = param(1, lo=1, help="record every epoch up to 10, then every record_every")
    nin_layer: int = param(0, lo=0)
    niw_init: str = param("layer", choices=NIW_INITS)
    levels: list[float] = param(
        lo=0.0, lo_open=True, min_len=1, help="Table 1 coefficients c of sigma_eps^2, increasing"
    )
    n_seeds: int = param(lo=1)
    sigmas_per_chunk: int = param(16, lo=1, hi=1024, help="models trained together in one chunk")
    stall_fraction: float = param(0.5, lo=0.0, hi=1.0)
    spike_factor: float = param(2.0, lo=1.0)
    acc_margin: float = param(0.02, lo=0.0, hi=1.0)
    probe_samples: int = param(1000, lo=1)

    size_fields = ("hidden", "n_train", "batch_size", "sigmas_per_chunk", "probe_samples")

    def check(self) -> None:
        if self.nin_layer > len(self.hidden) - 1:
            raise ConfigError("nin_layer", self.nin_layer, f"an integer >= 0 and <= {len(self.hidden) - 1}")
        if sorted(self.levels) != list(self.levels):
            raise ConfigError("levels", self.levels, "coefficients in increasing order")
        if self.dataset == "fashion-mnist":
            if not self.data_dir:
                raise ConfigError(
                    "data_dir",
                    "",
                    "the folder with the Fashion-MNIST IDX files: pass --data-dir DIR "
                    "(this preset trains on FMNIST; nothing is downloaded)",
                )
            from noiseprobe.data.idx import find_idx_files

            find_idx_files(self.data_dir)  # ConfigError naming the missing files, before any work
        elif self.data_dir:
            raise ConfigError(
                "data_dir",
                self.data_dir,
                "empty for dataset 'embedded' (use the full preset, or --set dataset=fashion-mnist)",
            )


def load_data(config: SweepConfig) -> tuple[torch.Tensor, ...]:
    """The run's data: the embedded digits, or FMNIST from ``data_dir`` (dataset "fashion-mnist")."""
    return load_mlp_data(
        data_dir=config.data_dir if config.dataset == "fashion-mnist" else "",
        split=config.split,
        standardize=config.standardize,
        split_seed=config.split_seed,
        n_train=config.n_train,
        pool=config.pool,
    )


def data_sizes(config: SweepConfig) -> tuple[int, int]:
    """(training samples offered, image side) of the config's data without loading it: the IDX files'
    merged/train/official split, or the embedded digits (MNIST 5k, 28×28; sklearn's 1,797, 8×8)."""
    if config.dataset == "fashion-mnist":
        from noiseprobe.data.idx import idx_train_size

        return idx_train_size(config.data_dir, split=config.split), 28
    name = embedded_name()
    return embedded_train_size(name), IMAGE_SIDES[name]


def preset(**kw: Any) -> dict[str, Any]:
    """A preset: the shared defaults of the sweeps, updated by ``kw``."""
    base: dict[str, Any] = {
        "seed": 2022,
        "dataset": "embedded",
        "data_dir": "",
        "split": "merged",
        "standardize": "global",
        "split_seed": 0,
        "n_train": 0,
        "pool": 1,
        "nin_layer": 0,
        "niw_init": "layer",
        "record_every": 1,
        "sigmas_per_chunk": 16,
        "stall_fraction": 0.5,
        "spike_factor": 2.0,
        "acc_margin": 0.02,
        "probe_samples": 1000,
    }
    base.update(kw)
    return base
