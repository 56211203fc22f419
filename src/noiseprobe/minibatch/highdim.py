"""Noise near generic minima (Sec. 5, App. C) and high-dimensional regression (Sec. 6.1-6.2, App. D.1).

MSE with the ½ (ℓ = ½(f − y)²); sampling with replacement. The generic results (Thm 5, Cor. 2, Cor. 3,
Prop. 4, Thm 6) rest on Assumption 1 (Σ = O(1/S)) and Assumption 2 (weak homogeneity |L − ℓ_i| = o(L)),
which drops the Gaussian fourth moment: they carry −H₀ΣH₀ and (1 − 1/S) where the Gaussian-exact
formulas (Lemma 1, Thm 2) carry +AΣA and (1 + 1/S).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.linalg import commutes
from noiseprobe.core.validation import (
    check_batch_size,
    check_choice,
    check_lr,
    check_matrix,
    check_momentum,
    check_scalar,
    check_vector,
)
from noiseprobe.minibatch.fluctuation import NoStationaryState, largest_stable_scale, solve_fluctuation


def thm5_noise(*, L0: float, H0: np.ndarray, grad_L0: np.ndarray, batch_size: int) -> np.ndarray:
    """Theorem 5, eq. (14): C(w) ≈ (2L₀(w)/S)H₀(w) − (1/S)∇L₀∇L₀ᵀ.

    ⚠ Pass the gradient of the UNREGULARISED loss L₀ (corrected, docs/theory/minibatch_noise.md §7): the paper prints ∇L_Γ,
    but the regulariser is common to all samples and cannot enter the noise; Cor. 2's −Γw*w*ᵀΓ term needs
    ∇L₀(w*) = −Γw*. The paper's printed form is this function called with ∇L_Γ.
    """
    H0 = check_matrix("H0", H0)
    g = check_vector("grad_L0", grad_L0, H0.shape[0])
    S = check_batch_size(batch_size)
    return 2 * check_scalar("L0", L0, lo=0.0) / S * H0 - np.outer(g, g) / S


def cor2_noise(
    H0: np.ndarray,
    *,
    L0: float,
    batch_size: int,
    Gamma: np.ndarray | None = None,
    w_star: np.ndarray | None = None,
    Sigma: np.ndarray | None = None,
) -> np.ndarray:
    """Corollary 2, eqs. (15)-(17), at the minimum w* (O(S⁻²) and O(|w − w*|²) dropped)::

    Γ ≠ 0:              C = (2L₀/S)H₀ − (1/S)Γw*w*ᵀΓ                    (15)
    Γ = 0, L₀ ≠ 0:      C = (2L₀/S)H₀                                    (16)
    Γ = 0, L₀ = 0:      C = (1/S)(Tr[H₀Σ]I − H₀Σ)H₀                       (17)  (needs Sigma)
    """
    H0 = check_matrix("H0", H0)
    S = check_batch_size(batch_size)
    L0 = check_scalar("L0", L0, lo=0.0)
    if Gamma is not None:
        if w_star is None:
            raise ConfigError("w_star", None, "the minimiser w* when Gamma is given (eq. 15)")
        gw = check_matrix("Gamma", Gamma, H0.shape[0]) @ check_vector("w_star", w_star, H0.shape[0])
        return 2 * L0 / S * H0 - np.outer(gw, gw) / S
    if L0 > 0:
        return 2 * L0 / S * H0
    if Sigma is None:
        raise ConfigError("Sigma", None, "the fluctuation Σ when L0 = 0 (eq. 17)")
    Sg = check_matrix("Sigma", Sigma, H0.shape[0])
    C = (np.trace(H0 @ Sg) * np.eye(H0.shape[0]) - H0 @ Sg) @ H0 / S
    return np.asarray((C + C.T) / 2)


def cor3_sigma(
    H0: np.ndarray,
    *,
    L0: float,
    lr: float | np.ndarray,
    batch_size: int,
    momentum: float = 0.0,
    Gamma: np.ndarray | None = None,
    w_star: np.ndarray | None = None,
) -> np.ndarray:
    """Corollary 3, eqs. (62)-(63), Λ, H₀, Γ mutually commuting; Σ on the range of H₀ + Γ (0 on its null space)::

    Γ ≠ 0:          P Σ = (1/S)(Λ/(1−μ))(2L₀H₀ − Γw*w*ᵀΓ)(H₀+Γ)⁺[2I − (Λ/(1+μ))(H₀+Γ)]⁻¹
    Γ = 0, L₀ > 0:  P Σ = (2L₀/(S(1−μ))) P Λ [2I − (Λ/(1+μ))H₀]⁻¹
    Γ = 0, L₀ = 0:  P Σ = 0
    """
    H0 = check_matrix("H0", H0)
    D = H0.shape[0]
    Lam, scalar = check_lr(lr, D)
    S, mu = check_batch_size(batch_size), check_momentum(momentum)
    L0 = check_scalar("L0", L0, lo=0.0)
    if Gamma is not None and w_star is None:
        raise ConfigError("w_star", None, "the minimiser w* when Gamma is given (eq. 62)")
    Gm = np.zeros((D, D)) if Gamma is None else check_matrix("Gamma", Gamma, D)
    Kp = H0 + Gm
    if not (commutes(Lam, H0) and commutes(Lam, Gm) and commutes(H0, Gm)):
        raise ConfigError("lr, H0, Gamma", "non-commuting", "mutually commuting matrices (Cor. 3)")
    M = 2 * np.eye(D) - Lam @ Kp / (1 + mu)
    if np.linalg.eigvalsh((M + M.T) / 2).min() <= 0:
        b = largest_stable_scale(
            lambda s: np.linalg.eigvalsh(2 * np.eye(D) - s * (Lam @ Kp + Kp @ Lam) / (2 + 2 * mu)).min() > 0
        )
        if scalar is not None:
            raise NoStationaryState(b * scalar, "Cor. 3 needs 2I − λK/(1+μ) ≻ 0")
        raise NoStationaryState(b, "Cor. 3 needs 2I − ΛK/(1+μ) ≻ 0", "the scale factor of Λ")
    Minv = np.linalg.inv(M)
    P = Kp @ np.linalg.pinv(Kp)
    if Gamma is None:
        Sg = 2 * L0 / (S * (1 - mu)) * P @ Lam @ Minv
    else:
        gw = Gm @ check_vector("w_star", w_star, D)
        Sg = Lam / (S * (1 - mu)) @ (2 * L0 * H0 - np.outer(gw, gw)) @ np.linalg.pinv(Kp) @ Minv
    return np.asarray((Sg + Sg.T) / 2)


def prop4_noise(A_hat: np.ndarray, Sigma: np.ndarray, *, sigma: float, alpha: float, batch_size: int) -> np.ndarray:
    """Proposition 4 (from Thm 5; proof eqs. 72-78): C = (1/S)(Tr[ÂΣ]I − ÂΣ)Â + max{0, (σ²/S)(1 − 1/α)}Â,
    α = N/D (Assumptions 1, 2; E[2L(w*)] = σ²(1 − 1/α) for α > 1, eqs. 74-78)."""
    A = check_matrix("A_hat", A_hat, psd=True)
    Sg = check_matrix("Sigma", Sigma, A.shape[0])
    S = check_batch_size(batch_size)
    sigma, alpha = check_scalar("sigma", sigma, lo=0.0), check_scalar("alpha", alpha, lo=0.0, lo_open=True)
    C = (np.trace(A @ Sg) * np.eye(A.shape[0]) - A @ Sg) @ A / S + max(0.0, sigma**2 / S * (1 - 1 / alpha)) * A
    return np.asarray((C + C.T) / 2)


def thm6_trace(
    A_hat: np.ndarray,
    *,
    lr: float,
    batch_size: int,
    sigma: float,
    alpha: float,
    L0: float | None = None,
    variant: Literal["paper", "gaussian"] = "paper",
) -> float:
    """Theorem 6 (proof eqs. 79-82): Tr[ÂΣ] = max{0, (λσ²/S)(1 − 1/α) κ̂}, κ̂ = Tr[Ĝ⁻¹Â]/(1 − (λ/S)Tr[Ĝ⁻¹Â]).

    ``variant="paper"``: Ĝ = 2I − λ(1 − 1/S)Â as printed (from Thm 5's −ÂΣÂ). ``variant="gaussian"``:
    Ĝ = 2I − λ(1 + 1/S)Â (the Gaussian fourth moment, as Thm 2). ``L0``: replace the expected
    2L₀ = σ²(1 − 1/α) by the realised 2L₀ = (1/N)Σe_i² of one data set (docs/theory/minibatch_noise.md §15.7: the printed
    form with the expectation is off by O(1/√(N−D)) at finite D; :func:`highdim_sigma_exact` is exact).
    Stationary iff Σ_i 1/(2/(λa_i) − 1 ± 1/S) < S (Sec. 6.2).
    """
    A = check_matrix("A_hat", A_hat, psd=True)
    S = check_batch_size(batch_size)
    lam = check_scalar("lr", lr, lo=0.0, lo_open=True)
    sigma, alpha = check_scalar("sigma", sigma, lo=0.0), check_scalar("alpha", alpha, lo=0.0, lo_open=True)
    sgn = {"paper": -1.0, "gaussian": 1.0}[check_choice("variant", variant, ("paper", "gaussian"))]
    two_l0 = max(0.0, sigma**2 * (1 - 1 / alpha)) if L0 is None else 2 * check_scalar("L0", L0, lo=0.0)
    if alpha <= 1 and L0 is None:
        return 0.0
    a = np.linalg.eigvalsh(A)

    def ok(s: float) -> bool:
        g = 2 - s * lam * (1 + sgn / S) * a
        return bool(g.min() > 0 and s * lam / S * np.sum(a / g) < 1)

    if not ok(1.0):
        raise NoStationaryState(lam * largest_stable_scale(ok), "Thm 6 needs Σ_i 1/(2/(λa_i) − 1 ± 1/S) < S")
    tr = float(np.sum(a / (2 - lam * (1 + sgn / S) * a)))
    kappa = tr / (1 - lam / S * tr)
    return max(0.0, lam / S * two_l0 * kappa)


def highdim_sigma_exact(
    X: np.ndarray,
    y: np.ndarray,
    *,
    lr: float | np.ndarray,
    batch_size: int,
    momentum: float = 0.0,
    replacement: bool = True,
) -> np.ndarray:
    """Exact Σ about the least-squares (min-norm) solution for ONE finite data set (the alternative to Thm 6).

    Thm 1 (eq. 3) with H = Â = XᵀX/N and the exact averaged minibatch noise of Prop. 8 (eq. 99)::

        C(Σ) = f/S · [(1/N) Σ_i (x_iᵀΣx_i + e_i²) x_i x_iᵀ − ÂΣÂ],  e = y − Xw*,
        f = 1 (with replacement), (N − S)/(N − 1) (without)

    No Gaussian or large-D assumption. Σ = 0 on the null space of Â (overparametrised directions).
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 1 or not np.all(np.isfinite(X)):
        raise ConfigError("X", f"array of shape {X.shape}", "a finite (N, D) data matrix with N >= 1")
    N, D = X.shape
    y = check_vector("y", y, N)
    S = check_batch_size(batch_size)
    if not replacement and S > N:
        raise ConfigError("batch_size", S, f"<= N = {N} when sampling without replacement")
    f = 1.0 if replacement else (N - S) / (N - 1) if N > 1 else 0.0
    A = X.T @ X / N
    w = np.linalg.lstsq(X, y, rcond=None)[0]
    e2 = (y - X @ w) ** 2
    C0 = f / S * (X.T * e2) @ X / N

    def nmap(Sg: np.ndarray) -> np.ndarray:
        q = np.einsum("nd,de,ne->n", X, Sg, X)
        return np.asarray(f / S * ((X.T * q) @ X / N - A @ Sg @ A))

    return solve_fluctuation(A, C0, lr=lr, momentum=momentum, noise_map=nmap)
