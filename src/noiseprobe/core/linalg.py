"""Small dense linear-algebra helpers shared by the theory and simulation code (NumPy, float64)."""

from __future__ import annotations

import numpy as np


def psd_factor(M: np.ndarray) -> np.ndarray:
    """R with R Rᵀ = M for a symmetric positive semi-definite M (eigen-based: works when M is singular;
    eigenvalues below 0 from round-off are clipped). R = V diag(√λ), so RᵀR is diagonal."""
    vals, vecs = np.linalg.eigh(M)
    return vecs * np.sqrt(np.clip(vals, 0.0, None))


def psd_power(M: np.ndarray, power: float = 0.5) -> np.ndarray:
    """The symmetric matrix power M^p = V diag(λ^p) Vᵀ of a symmetric positive semi-definite M
    (p = ½: the symmetric square root; p < 0 needs M positive definite)."""
    vals, vecs = np.linalg.eigh(M)
    vals = np.clip(vals, 0.0, None)
    if power < 0 and vals.min(initial=np.inf) <= 0:
        raise np.linalg.LinAlgError("negative power of a singular matrix")
    return (vecs * vals ** power) @ vecs.T


def is_positive_definite(M: np.ndarray) -> bool:
    """Whether the symmetric part of M is positive definite."""
    return bool(np.linalg.eigvalsh((M + M.T) / 2).min() > 0)


def commutes(X: np.ndarray, Y: np.ndarray, rtol: float = 1e-9) -> bool:
    """Whether ‖[X, Y]‖_F ≤ rtol ‖X‖_F ‖Y‖_F."""
    return bool(np.linalg.norm(X @ Y - Y @ X) <= rtol * max(np.linalg.norm(X) * np.linalg.norm(Y), 1e-300))


__all__ = ["commutes", "is_positive_definite", "psd_factor", "psd_power"]
