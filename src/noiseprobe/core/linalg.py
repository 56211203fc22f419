"""Numerical linear-algebra helpers shared by the packages (device- and dtype-preserving torch)."""

from __future__ import annotations

from torch import Tensor
import torch


def psd_root(C: Tensor, *, rtol: float = 1e-14) -> Tensor:
    """A factor R (m, r) with ``R Rᵀ = C`` for symmetric positive semi-definite C (m, m): the eigenvectors of
    the r eigenvalues above ``rtol``·max|λ|, scaled by √λ (a singular C gives r < m; C = 0 gives r = 0)."""
    lam, V = torch.linalg.eigh(C)
    pos = lam > rtol * lam.abs().max()
    return V[:, pos] * lam[pos].sqrt()


__all__ = ["psd_root"]
