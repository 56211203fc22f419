"""Small dense linear-algebra helpers shared by the theory and simulation code (NumPy float64; the PSD
factor also on torch tensors, on their device and dtype)."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

A = TypeVar("A", np.ndarray, torch.Tensor)


def psd_factor(M: A, *, rtol: float | None = None) -> A:
    """R with R Rᵀ = M for a symmetric positive semi-definite M (NumPy array or torch tensor), from its
    eigendecomposition, so singular M work: R = V diag(√λ) (RᵀR diagonal; negative round-off eigenvalues
    clipped to 0). With ``rtol`` only the r eigenvalues above rtol·max|λ| are kept: R is (m, r), the
    rank-revealing factor (M = 0 gives r = 0)."""
    if isinstance(M, torch.Tensor):
        vals, vecs = torch.linalg.eigh(M)
        if rtol is not None:
            keep = vals > rtol * vals.abs().max()
            return vecs[:, keep] * vals[keep].sqrt()
        return vecs * vals.clamp_min(0).sqrt()
    vals, vecs = np.linalg.eigh(M)
    if rtol is not None:
        keep = vals > rtol * np.abs(vals).max(initial=0.0)
        return vecs[:, keep] * np.sqrt(vals[keep])
    return vecs * np.sqrt(np.clip(vals, 0.0, None))


def psd_power(M: np.ndarray, power: float = 0.5) -> np.ndarray:
    """The symmetric matrix power M^p = V diag(λ^p) Vᵀ of a symmetric positive semi-definite M
    (p = ½: the symmetric square root; p < 0 needs M positive definite)."""
    vals, vecs = np.linalg.eigh(M)
    vals = np.clip(vals, 0.0, None)
    if power < 0 and vals.min(initial=np.inf) <= 0:
        raise np.linalg.LinAlgError("negative power of a singular matrix")
    return (vecs * vals**power) @ vecs.T


def is_positive_definite(M: np.ndarray) -> bool:
    """Whether the symmetric part of M is positive definite."""
    return bool(np.linalg.eigvalsh((M + M.T) / 2).min() > 0)


def commutes(X: np.ndarray, Y: np.ndarray, rtol: float = 1e-9) -> bool:
    """Whether ‖[X, Y]‖_F ≤ rtol ‖X‖_F ‖Y‖_F."""
    return bool(np.linalg.norm(X @ Y - Y @ X) <= rtol * max(np.linalg.norm(X) * np.linalg.norm(Y), 1e-300))


__all__ = ["commutes", "is_positive_definite", "psd_factor", "psd_power"]
