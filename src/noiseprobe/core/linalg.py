"""Numerical linear-algebra helpers shared by the packages (device- and dtype-preserving torch)."""

from __future__ import annotations

import torch
from torch import Tensor


def psd_root(C: Tensor, *, rtol: float = 1e-14) -> Tensor:
    """A factor R (m, r) with ``R Rᵀ = C`` for symmetric positive semi-definite C (m, m): the eigenvectors of
    the r eigenvalues above ``rtol``·max|λ|, scaled by √λ (a singular C gives r < m; C = 0 gives r = 0)."""
    lam, V = torch.linalg.eigh(C)
    pos = lam > rtol * lam.abs().max()
    root: Tensor = V[:, pos] * lam[pos].sqrt()
    return root


__all__ = ["psd_root"]
