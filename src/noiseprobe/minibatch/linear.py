"""Closed forms of paper 002 for linear regression with label noise (Sec. 4.2) and input noise (App. E.3).

Conventions for every function here: loss ``ℓ_i = ½ (wᵀx_i − y_i)²`` (the ½ is included, so the Hessian
is A), minibatches drawn **with replacement** (Def. 2), N → ∞ (online), Gaussian inputs ``x ~ N(0, A)``
(the Gaussian fourth moment gives the ``+AΣA`` and ``1 + 1/S`` terms), heavy-ball momentum without
dampening (eq. 1). For a finite data set without replacement multiply C by (N−S)/(N−1) (Prop. 8).

When a formula's stationary state does not exist (learning rate past the mean-square stability bound)
the function raises :class:`~noiseprobe.minibatch.fluctuation.NoStationaryState` with the bound.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.linalg import commutes, is_positive_definite
from noiseprobe.core.validation import (
    check_batch_size,
    check_lr,
    check_matrix,
    check_momentum,
    check_scalar,
    check_vector,
)
from noiseprobe.minibatch.fluctuation import NoiseMap, NoStationaryState, largest_stable_scale


# -- label noise --------------------------------------------------------------------------------------
def lemma1_noise(A: float | np.ndarray, Sigma: float | np.ndarray, *, sigma: float, batch_size: int) -> np.ndarray:
    """Lemma 1, eq. (5): C = (1/S)(AΣA + Tr[AΣ]A + σ²A), stationary label-noise covariance (about u)."""
    A = check_matrix("A", A, psd=True)
    Sg = check_matrix("Sigma", Sigma, A.shape[0])
    return np.asarray(
        (A @ Sg @ A + np.trace(A @ Sg) * A + check_scalar("sigma", sigma, lo=0.0) ** 2 * A)
        / check_batch_size(batch_size)
    )


def lemma1_noise_map(A: np.ndarray, *, batch_size: int) -> tuple[np.ndarray, NoiseMap]:
    """Lemma 1, eq. (5), split for :func:`solve_fluctuation`: (C0 for σ = 1, Σ ↦ (AΣA + Tr[AΣ]A)/S)."""
    A = check_matrix("A", A, psd=True)
    S = check_batch_size(batch_size)
    return A / S, lambda X: (A @ X @ A + np.trace(A @ X) * A) / S


def _thm2_G(A: np.ndarray, Lam: np.ndarray, S: int, mu: float) -> np.ndarray:
    """G_μ = 2(1−μ)I − ((1−μ)/(1+μ) + 1/S)ΛA of Thm 2, eq. (6) (ΛA symmetrised: [Λ, A] = 0)."""
    LA = Lam @ A
    return np.asarray(2 * (1 - mu) * np.eye(A.shape[0]) - ((1 - mu) / (1 + mu) + 1 / S) * (LA + LA.T) / 2)


def _thm2_ok(A: np.ndarray, Lam: np.ndarray, S: int, mu: float) -> bool:
    """Thm 2 has a stationary Σ ⪰ 0: G_μ ≻ 0 and Tr[ΛAG_μ⁻¹] < S (κ_μ finite and >= 0)."""
    G = _thm2_G(A, Lam, S, mu)
    return is_positive_definite(G) and float(np.trace(Lam @ A @ np.linalg.inv(G))) < S


class _LabelNoise:
    """The shared objects of Thms 2, 3, 8: Λ, G_μ (eq. 6), T = Tr[ΛAG_μ⁻¹], κ_μ; raises when no Σ exists."""

    def __init__(self, A: float | np.ndarray, lr: float | np.ndarray, batch_size: int, momentum: float) -> None:
        self.A = check_matrix("A", A, psd=True)
        D = self.A.shape[0]
        self.Lam, self.scalar = check_lr(lr, D)
        self.S, self.mu = check_batch_size(batch_size), check_momentum(momentum)
        if not commutes(self.Lam, self.A):
            raise ConfigError(
                "lr",
                "matrix not commuting with A",
                "[Λ, A] = 0 for Thm 2; use solve_fluctuation with lemma1_noise_map otherwise",
            )
        if not _thm2_ok(self.A, self.Lam, self.S, self.mu):
            b = largest_stable_scale(lambda s: _thm2_ok(self.A, s * self.Lam, self.S, self.mu))
            raise NoStationaryState(
                b * self.scalar if self.scalar is not None else b,
                "Thm 2 needs G_μ ≻ 0 and Tr[ΛAG_μ⁻¹] < S",
                "learning rate" if self.scalar is not None else "the scale factor of Λ",
            )
        self.G = _thm2_G(self.A, self.Lam, self.S, self.mu)
        self.Ginv = np.linalg.inv(self.G)
        self.T = float(np.trace(self.Lam @ self.A @ self.Ginv))
        self.kappa = self.T / (1 - self.T / self.S)


def label_noise_kappa(
    A: float | np.ndarray, *, lr: float | np.ndarray, batch_size: int, momentum: float = 0.0
) -> float:
    """κ_μ = Tr[ΛAG_μ⁻¹]/(1 − Tr[ΛAG_μ⁻¹]/S), G_μ = 2(1−μ)I − ((1−μ)/(1+μ) + 1/S)ΛA (Thm 2, eq. 6)."""
    return _LabelNoise(A, lr, batch_size, momentum).kappa


def label_noise_sigma(
    A: float | np.ndarray, *, lr: float | np.ndarray, batch_size: int, sigma: float, momentum: float = 0.0
) -> np.ndarray:
    """Theorem 2, eq. (6): Σ = (σ²/S)(1 + κ_μ/S) Λ G_μ⁻¹.

    Assumes Lemma 1 (Gaussian x, N → ∞, with replacement) and [Λ, A] = 0. In 1d with μ = 0:
    Σ = λσ²/(2S − (S+2)λa), finite iff λa < 2S/(S+2).
    """
    ln = _LabelNoise(A, lr, batch_size, momentum)
    sigma = check_scalar("sigma", sigma, lo=0.0)
    Sg = sigma**2 / ln.S * (1 + ln.kappa / ln.S) * ln.Lam @ ln.Ginv
    return np.asarray((Sg + Sg.T) / 2)


def label_noise_C(
    A: float | np.ndarray, *, lr: float | np.ndarray, batch_size: int, sigma: float, momentum: float = 0.0
) -> np.ndarray:
    """Theorem 3, eq. (8): C = (σ²/S)A + (σ²/S²)(1 + κ_μ/S)(ΛAG_μ⁻¹ + Tr[ΛAG_μ⁻¹]I)A (same assumptions as Thm 2)."""
    ln = _LabelNoise(A, lr, batch_size, momentum)
    D, sigma = ln.A.shape[0], check_scalar("sigma", sigma, lo=0.0)
    C = (
        sigma**2 / ln.S * ln.A
        + sigma**2 / ln.S**2 * (1 + ln.kappa / ln.S) * (ln.Lam @ ln.A @ ln.Ginv + ln.T * np.eye(D)) @ ln.A
    )
    return np.asarray((C + C.T) / 2)


def label_noise_losses(
    A: float | np.ndarray, *, lr: float | np.ndarray, batch_size: int, sigma: float, momentum: float = 0.0
) -> tuple[float, float]:
    """Theorem 8, eqs. (127)-(128): L_train = (σ²/2)(1 + κ_μ/S), L_test = σ²κ_μ/(2S).

    L_train = E_w[L(w)] includes the label noise σ²/2; L_test = E_w[½(w − u)ᵀA(w − u)] does not.
    """
    ln = _LabelNoise(A, lr, batch_size, momentum)
    sigma = check_scalar("sigma", sigma, lo=0.0)
    return sigma**2 / 2 * (1 + ln.kappa / ln.S), sigma**2 * ln.kappa / (2 * ln.S)


def label_noise_lr_bound(A: float | np.ndarray, *, batch_size: int, momentum: float = 0.0) -> float:
    """Largest scalar λ with a stationary Σ in Thm 2 (G_μ ≻ 0 and Tr[λAG_μ⁻¹] < S); 1d μ = 0: 2S/((S+2)a)."""
    A = check_matrix("A", A, psd=True)
    S, mu = check_batch_size(batch_size), check_momentum(momentum)
    a_max = float(np.linalg.eigvalsh(A).max())
    if a_max <= 0:
        raise ConfigError("A", "zero matrix", "a non-zero positive semi-definite matrix (else every λ is stable)")
    eye = np.eye(A.shape[0])  # G_μ ≻ 0 needs λa_max < 2(1−μ)/((1−μ)/(1+μ) + 1/S) < 4(1+μ): ok fails at hi
    return largest_stable_scale(lambda s: _thm2_ok(A, s * eye, S, mu), 4 * (1 + mu) / a_max, iters=80)


# -- input noise (App. E.3) -----------------------------------------------------------------------------
def input_noise_sigma_eff2(A: float | np.ndarray, *, B: float | np.ndarray, u: np.ndarray | Sequence[float]) -> float:
    """Irreducible loss 2L(w*) = Tr[AK⁻¹BU], K = A + B, U = uuᵀ (App. E.3; plays σ² in Prop. 9)."""
    A, B, u = _input_noise_setup(A, B, u)
    return float(u @ A @ np.linalg.solve(A + B, B @ u))


def _input_noise_setup(
    A: float | np.ndarray, B: float | np.ndarray, u: np.ndarray | Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (A ⪰ 0, B ⪰ 0 with K = A + B ≻ 0, u of length D) for App. E.3."""
    A = check_matrix("A", A, psd=True)
    B = check_matrix("B", B, A.shape[0], psd=True)
    if not is_positive_definite(A + B):
        raise ConfigError("A + B", "singular matrix", "K = A + B positive definite (App. E.3 uses K⁻¹)")
    return A, B, check_vector("u", u, A.shape[0])


def prop9_noise(
    A: float | np.ndarray,
    *,
    B: float | np.ndarray,
    u: np.ndarray | Sequence[float],
    Sigma: float | np.ndarray,
    batch_size: int,
) -> np.ndarray:
    """Prop. 9, eq. (132): C = (1/S)(KΣK + Tr[KΣ]K + Tr[AK⁻¹BU]K), K = A + B; input noise e ~ N(0, B), no label noise."""
    A, B, u = _input_noise_setup(A, B, u)
    K = A + B
    Sg = check_matrix("Sigma", Sigma, A.shape[0])
    return np.asarray(
        (K @ Sg @ K + np.trace(K @ Sg) * K + input_noise_sigma_eff2(A, B=B, u=u) * K) / check_batch_size(batch_size)
    )


def input_noise_theory(
    A: float | np.ndarray, *, B: float | np.ndarray, u: np.ndarray | Sequence[float], lr: float, batch_size: int
) -> dict[str, float | np.ndarray]:
    """Theorem 9, eqs. (133)-(135), scalar λ, μ = 0 (no commutation of A and B needed).

    G = 2I − λ(1 + 1/S)K, κ = Tr[KG⁻¹]/(1 − (λ/S)Tr[KG⁻¹]) (λ outside the trace, unlike Thm 2)::

        Σ       = (λ/S) Tr[AK⁻¹BU] (1 + λκ/S) G⁻¹              (135)
        L_train = ½ Tr[AK⁻¹BU] (1 + λκ/S)                        (133)
        L_test  = ½ Tr[AΣ] + ½ Tr[B′ᵀAB′U],  B′ = K⁻¹B           (134)

    Returns {"Sigma", "kappa", "train_loss", "test_loss"}.
    """
    A, B, u = _input_noise_setup(A, B, u)
    S = check_batch_size(batch_size)
    lam = check_scalar("lr", lr, lo=0.0, lo_open=True)
    K = A + B
    D = K.shape[0]

    def ok(s: float) -> bool:
        G = 2 * np.eye(D) - s * lam * (1 + 1 / S) * K
        return is_positive_definite(G) and s * lam / S * float(np.trace(K @ np.linalg.inv(G))) < 1

    if not ok(1.0):
        raise NoStationaryState(lam * largest_stable_scale(ok), "Thm 9 needs G ≻ 0 and λTr[KG⁻¹] < S")
    Ginv = np.linalg.inv(2 * np.eye(D) - lam * (1 + 1 / S) * K)
    tr = float(np.trace(K @ Ginv))
    kappa = tr / (1 - lam / S * tr)
    s2 = input_noise_sigma_eff2(A, B=B, u=u)
    Sg = lam / S * s2 * (1 + lam * kappa / S) * Ginv
    Bp_u = np.linalg.solve(K, B @ u)
    return {
        "Sigma": (Sg + Sg.T) / 2,
        "kappa": kappa,
        "train_loss": 0.5 * s2 * (1 + lam * kappa / S),
        "test_loss": 0.5 * float(np.trace(A @ Sg)) + 0.5 * float(Bp_u @ A @ Bp_u),
    }
