"""Second-order methods with label noise (paper 002, Sec. 6.4, App. D.2): damped Newton and natural gradient.

Same setting as Thm 2: ½ in the loss, Gaussian x ~ N(0, A), N → ∞, sampling with replacement, heavy-ball
momentum μ without dampening, A ≻ 0.
"""

from __future__ import annotations

import numpy as np

from noiseprobe.core.linalg import is_positive_definite
from noiseprobe.core.validation import check_batch_size, check_int, check_matrix, check_momentum, check_scalar
from noiseprobe.minibatch.fluctuation import NoStationaryState


def dnm_sigma(A: float | np.ndarray, *, lr: float, batch_size: int, sigma: float, momentum: float = 0.0) -> np.ndarray:
    """Proposition 5, eq. (83): damped Newton Λ = λA⁻¹ gives Σ = λσ²/(gS − λD) · A⁻¹,
    g = 2(1−μ) − ((1−μ)/(1+μ) + 1/S)λ; stationary iff g > 0 and S > λD/g (Thm 2 with ΛA = λI).
    """
    A = check_matrix("A", A)
    if not is_positive_definite(A):
        raise NoStationaryState(0.0, "A must be positive definite for Newton's method")
    D = A.shape[0]
    S, mu = check_batch_size(batch_size), check_momentum(momentum)
    lam, sigma = check_scalar("lr", lr, lo=0.0, lo_open=True), check_scalar("sigma", sigma, lo=0.0)
    c = (1 - mu) / (1 + mu) + 1 / S
    g = 2 * (1 - mu) - c * lam
    if g <= 0 or g * S - lam * D <= 0:
        raise NoStationaryState(2 * (1 - mu) * S / (c * S + D), "Prop. 5 needs gS > λD")
    return np.asarray(lam * sigma**2 / (g * S - lam * D) * np.linalg.inv(A))


def ngd_x(*, lr: float, batch_size: int, sigma: float, dim: int, momentum: float = 0.0) -> float:
    """Proposition 6, eqs. (87)-(89): the self-consistent scale x of Σ = xA⁻¹ for natural gradient
    Λ = (λ/S)C⁻¹ (C the stationary noise), the positive root of::

        2(1−μ)(1+D)x² + [2(1−μ)σ² − (1−μ)λ/(1+μ) − λ(1+D)/S] x − λσ²/S = 0

    For σ = 0 this is the main-text x = (λ/2)(1/((1+D)(1+μ)) + 1/((1−μ)S)) (Liu et al. 2021 lacked the
    1/(1+D)). Uniqueness is not claimed by the paper ("one solution").
    """
    S, mu = check_batch_size(batch_size), check_momentum(momentum)
    D = check_int("dim", dim, lo=1)
    lam, sigma = check_scalar("lr", lr, lo=0.0, lo_open=True), check_scalar("sigma", sigma, lo=0.0)
    a = 2 * (1 - mu) * (1 + D)
    b = 2 * (1 - mu) * sigma**2 - (1 - mu) * lam / (1 + mu) - lam * (1 + D) / S
    c = -lam * sigma**2 / S
    if sigma == 0:
        return -b / a
    return float((-b + np.sqrt(b * b - 4 * a * c)) / (2 * a))


def ngd_sigma(A: float | np.ndarray, *, lr: float, batch_size: int, sigma: float, momentum: float = 0.0) -> np.ndarray:
    """Proposition 6: Σ = x A⁻¹ with x from :func:`ngd_x`; NGD is damped Newton at λ′ = λ/(x(1+D) + σ²)."""
    A = check_matrix("A", A)
    return ngd_x(lr=lr, batch_size=batch_size, sigma=sigma, dim=A.shape[0], momentum=momentum) * np.linalg.inv(A)
