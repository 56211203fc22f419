"""Real datasets: the MNIST/Fashion-MNIST IDX reader (:mod:`~noiseprobe.data.idx`) and the embedded
default dataset shipped by a package (:mod:`~noiseprobe.data.embedded`). Nothing is downloaded."""

from noiseprobe.data.embedded import Dataset, load_default
from noiseprobe.data.idx import find_idx_files, load_fashion_mnist, load_idx_dataset, read_idx

__all__ = ["Dataset", "find_idx_files", "load_default", "load_fashion_mnist", "load_idx_dataset", "read_idx"]
