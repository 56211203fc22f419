"""Real datasets: the MNIST/Fashion-MNIST IDX reader (:mod:`~noiseprobe.data.idx`) and the embedded
default dataset shipped by a package (:mod:`~noiseprobe.data.embedded`). Nothing is downloaded."""

from noiseprobe.data.embedded import Dataset, load_default
from noiseprobe.data.idx import load_fashion_mnist, read_idx

__all__ = ["Dataset", "load_default", "load_fashion_mnist", "read_idx"]
