"""L2 regularisation in linear regression (paper 002, Sec. 4.3 and App. E.4).

Loss (eq. 9), ½ included, N → ∞, sampling with replacement, Gaussian x ~ N(0, A), no label noise::

    L_Γ(w) = ½ (w − u)ᵀA(w − u) + ½ wᵀΓw,   K = A + Γ (Hessian),   w* = K⁻¹Au,   U = uuᵀ

Γ may be indefinite (negative weight decay) as long as K ≻ 0. Scalar λ, μ = 0 throughout (Thm 4).
The regulariser is the same for every sample, so it adds no noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.linalg import commutes, is_positive_definite
from noiseprobe.core.validation import check_batch_size, check_int, check_matrix, check_scalar, check_vector
from noiseprobe.minibatch.fluctuation import NoiseMap, NoStationaryState, largest_stable_scale, solve_fluctuation


def _setup(
    A: float | np.ndarray, Gamma: float | np.ndarray, u: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (A ⪰ 0, symmetric Γ, u of length D); NoStationaryState when K = A + Γ is not ≻ 0."""
    A = check_matrix("A", A, psd=True)
    G = check_matrix("Gamma", Gamma, A.shape[0])
    u = check_vector("u", u, A.shape[0])
    if not is_positive_definite(A + G):
        raise NoStationaryState(0.0, "K = A + Γ is not positive definite: no minimum", "learning rate")
    return A, G, u


def prop3_noise(
    A: float | np.ndarray, *, Gamma: float | np.ndarray, u: np.ndarray, Sigma: float | np.ndarray, batch_size: int
) -> np.ndarray:
    """Prop. 3, eq. (10): C = (1/S)(AΣA + Tr[AΣ]A + Tr[Γ′ᵀAΓ′U]A + ΓA′UA′Γ), Σ about w*.

    Written as Tr[Γ′ᵀAΓ′U] = (w*−u)ᵀA(w*−u) and ΓA′UA′Γ = Γw*w*ᵀΓ = A(w*−u)(w*−u)ᵀA (rank 1, + sign), which
    holds for any symmetric Γ (the paper assumes [A, Γ] = 0; the identity AK⁻¹Γ = ΓK⁻¹A makes it unneeded).
    """
    A, G, u = _setup(A, Gamma, u)
    C0, nmap = prop3_noise_map(A, Gamma=G, u=u, batch_size=batch_size)
    return C0 + nmap(check_matrix("Sigma", Sigma, A.shape[0]))


def prop3_noise_map(A: np.ndarray, *, Gamma: np.ndarray, u: np.ndarray, batch_size: int) -> tuple[np.ndarray, NoiseMap]:
    """Prop. 3, eq. (10), split as (Σ-independent part, Σ ↦ (AΣA + Tr[AΣ]A)/S) for :func:`solve_fluctuation`."""
    A, Gamma, u = _setup(A, Gamma, u)
    S = check_batch_size(batch_size)
    d = np.linalg.solve(A + Gamma, A @ u) - u
    Ad = A @ d
    return (float(d @ Ad) * A + np.outer(Ad, Ad)) / S, lambda X: (A @ X @ A + np.trace(A @ X) * A) / S


class _Thm4:
    """G = 2I − λ(K + K⁻¹A²/S), c, κ, r of Theorem 4 (eq. 11); scalar λ, μ = 0, [A, Γ] = 0."""

    def __init__(
        self,
        A: float | np.ndarray,
        Gamma: float | np.ndarray,
        u: np.ndarray,
        lr: float,
        batch_size: int,
        find_bound: bool = True,
    ) -> None:
        self.A, self.Gamma, self.u = _setup(A, Gamma, u)
        if not commutes(self.A, self.Gamma):
            raise ConfigError(
                "Gamma", "matrix not commuting with A", "[A, Γ] = 0 for Thm 4; use l2_sigma_exact otherwise"
            )
        self.lam = check_scalar("lr", lr, lo=0.0, lo_open=True)
        self.S = check_batch_size(batch_size)
        A, K = self.A, self.A + self.Gamma
        self.K, self.Kinv = K, np.linalg.inv(K)
        if not self._ok(1.0):
            raise NoStationaryState(
                self.lam * largest_stable_scale(self._ok) if find_bound else np.nan,
                "Thm 4 needs G ≻ 0 and (λ/S)Tr[A²K⁻¹G⁻¹] < 1",
            )
        D = A.shape[0]
        self.Ginv = np.linalg.inv(2 * np.eye(D) - self.lam * (K + self.Kinv @ A @ A / self.S))
        U = np.outer(self.u, self.u)
        G2 = self.Gamma @ self.Gamma
        Ki = self.Kinv
        den = 1 - self.lam / self.S * np.trace(A @ A @ Ki @ self.Ginv)
        self.c = float(np.trace(A @ Ki @ Ki @ G2 @ U))
        self.kappa = float(np.trace(A @ A @ Ki @ self.Ginv)) / den
        self.r = float(np.trace(A @ A @ A @ Ki @ Ki @ Ki @ G2 @ self.Ginv @ U)) / den
        self.U, self.G2 = U, G2

    def _ok(self, s: float) -> bool:
        """Stationary at scale s·λ: G ≻ 0 and (sλ/S)Tr[A²K⁻¹G⁻¹] < 1 (κ finite and >= 0)."""
        D, A, K = self.A.shape[0], self.A, self.A + self.Gamma
        G = 2 * np.eye(D) - s * self.lam * (K + np.linalg.solve(K, A @ A) / self.S)
        G = (G + G.T) / 2
        return (
            is_positive_definite(G)
            and s * self.lam / self.S * float(np.trace(A @ A @ np.linalg.solve(K, np.linalg.inv(G)))) < 1
        )

    @property
    def trace_A_sigma(self) -> float:
        """Tr[AΣ] = (λ/S)(cκ + r) (eq. 155)."""
        return float(self.lam / self.S * (self.c * self.kappa + self.r))


def l2_theory(
    A: float | np.ndarray,
    *,
    Gamma: float | np.ndarray,
    u: np.ndarray,
    lr: float,
    batch_size: int,
    find_bound: bool = True,
) -> dict[str, float]:
    """Theorem 4 eq. (11) and the App. E.4.2 training loss (eqs. 151-155), scalar λ, μ = 0, [A, Γ] = 0.

    ``G = 2I − λ(K + K⁻¹A²/S)``, ``c = Tr[AK⁻²Γ²U]``, ``κ = Tr[A²K⁻¹G⁻¹]/(1 − (λ/S)Tr[A²K⁻¹G⁻¹])``,
    ``r = Tr[A³K⁻³Γ²G⁻¹U]/(1 − (λ/S)Tr[A²K⁻¹G⁻¹])`` (κ here has no λ inside, unlike Thm 2)::

        L_test  = (λ/(2S))(cκ + r) + ½c                                           (11)
        L_train = ½Tr[KΣ] + ½Tr[AK⁻¹ΓU],  Tr[KΣ] = (λ/S)[(Tr[AΣ] + c)Tr[AG⁻¹] + Tr[A²K⁻²Γ²G⁻¹U]]

    L_train includes ½wᵀΓw (negative for Γ ≺ 0). Valid for any u (no [A, U] = 0 needed).
    Returns {"test_loss", "train_loss", "trace_A_sigma", "kappa", "r", "c"}. With ``find_bound=False`` a
    missing stationary state raises NoStationaryState without computing the bound (bound = nan; for scans).
    """
    t = _Thm4(A, Gamma, u, lr, batch_size, find_bound)
    A, Ki, U = t.A, t.Kinv, t.U
    trKS = (
        t.lam / t.S * ((t.trace_A_sigma + t.c) * np.trace(A @ t.Ginv) + np.trace(A @ A @ Ki @ Ki @ t.G2 @ t.Ginv @ U))
    )
    return {
        "test_loss": float(0.5 * t.trace_A_sigma + 0.5 * t.c),
        "train_loss": float(0.5 * trKS + 0.5 * np.trace(A @ Ki @ t.Gamma @ U)),
        "trace_A_sigma": float(t.trace_A_sigma),
        "kappa": t.kappa,
        "r": t.r,
        "c": t.c,
    }


def l2_sigma_eq12(
    A: float | np.ndarray, *, Gamma: float | np.ndarray, u: np.ndarray, lr: float, batch_size: int
) -> np.ndarray:
    """The PAPER's Theorem 4 eq. (12) for Σ (about w*)::

        Σ = (λ/S) c (1 + λκ/S) AK⁻¹G⁻¹ + (λ/S)(A²K⁻²Γ²U + (λr/S) A) K⁻¹G⁻¹

    ⚠ Exact only when A, Γ and U all commute (u an eigenvector of A, or D = 1); the main text's
    "[Γ, U] = 0" is not enough (15-41 % off, docs/theory/minibatch_noise.md §5). Use :func:`l2_sigma_exact` in general.
    """
    t = _Thm4(A, Gamma, u, lr, batch_size)
    A, Ki, lam, S = t.A, t.Kinv, t.lam, t.S
    Sg = (
        lam / S * t.c * (1 + lam * t.kappa / S) * A @ Ki @ t.Ginv
        + lam / S * (A @ A @ Ki @ Ki @ t.G2 @ t.U + lam * t.r / S * A) @ Ki @ t.Ginv
    )
    return np.asarray((Sg + Sg.T) / 2)


def l2_sigma_exact(
    A: float | np.ndarray,
    *,
    Gamma: float | np.ndarray,
    u: np.ndarray,
    lr: float | np.ndarray,
    batch_size: int,
    momentum: float = 0.0,
) -> np.ndarray:
    """The exact Σ (about w*): Thm 1 (eq. 3) with H = K and the noise of Prop. 3 (eq. 10), one linear matrix
    equation. No commutation needed; any Λ ≻ 0 and momentum. This is the corrected alternative to eq. (12).
    """
    A, G, u = _setup(A, Gamma, u)
    C0, nmap = prop3_noise_map(A, Gamma=G, u=u, batch_size=batch_size)
    return solve_fluctuation(A + G, C0, lr=lr, momentum=momentum, noise_map=nmap)


def l2_1d(*, a: float, gamma: float, u: float, lr: float, batch_size: int) -> dict[str, float]:
    """Corollary 4, eqs. (159)-(160), 1d: k = a + γ, Δ = Sk(2 − λk) − 2λa²::

        L_test = aγ²u²/(2k²) + λa³γ²u²/(k²Δ),  L_train = aγu²/(2k) + λa²γ²u²/(kΔ),  Σ = 2λa²γ²u²/(k²Δ)

    finite iff k > 0 and Δ > 0, i.e. λ < 2Sk/(Sk² + 2a²) (eq. 162); otherwise NoStationaryState.
    """
    a = check_scalar("a", a, lo=0.0, lo_open=True)
    S = check_batch_size(batch_size)
    k = a + check_scalar("gamma", gamma)
    u = check_scalar("u", u)
    lam = check_scalar("lr", lr, lo=0.0, lo_open=True)
    if k <= 0:
        raise NoStationaryState(0.0, f"k = a + γ = {k:.4g} <= 0: no minimum")
    delta = S * k * (2 - lam * k) - 2 * lam * a * a
    if delta <= 0:
        raise NoStationaryState(2 * S * k / (S * k * k + 2 * a * a), "Cor. 4: Δ = Sk(2 − λk) − 2λa² <= 0")
    g2u2 = gamma**2 * u**2
    return {
        "Sigma": 2 * lam * a * a * g2u2 / (k * k * delta),
        "test_loss": a * g2u2 / (2 * k * k) + lam * a**3 * g2u2 / (k * k * delta),
        "train_loss": a * gamma * u * u / (2 * k) + lam * a * a * g2u2 / (k * delta),
    }


def convergent_gamma_interval(*, a: float, lr: float, batch_size: int) -> tuple[float, float] | None:
    """Eq. (163): the γ with a stationary state in 1d, k_− < a + γ < k_+, k_± = [1 ± √(1 − 2λ²a²/S)]/λ.

    None when λa > √(S/2) (eq. 164: no weight decay converges).
    """
    S = check_batch_size(batch_size)
    a, lr = check_scalar("a", a, lo=0.0, lo_open=True), check_scalar("lr", lr, lo=0.0, lo_open=True)
    disc = 1 - 2 * lr * lr * a * a / S
    if disc < 0:
        return None
    return (1 - np.sqrt(disc)) / lr - a, (1 + np.sqrt(disc)) / lr - a


def negative_weight_decay_window(*, batch_size: int) -> tuple[float, float]:
    """Corollary 1, eqs. (165)-(168): the optimal γ is negative iff 2S/(S+2) < λa <= √(S/2) (empty at S = 2)."""
    S = check_batch_size(batch_size)
    return 2 * S / (S + 2), float(np.sqrt(S / 2))


def optimal_weight_decay(
    A: float | np.ndarray, *, u: np.ndarray | Sequence[float], lr: float, batch_size: int, grid: int = 400
) -> tuple[float, float]:
    """γ* = argmin_γ L_test(Γ = γI) from eq. (11), minimised numerically (eqs. 169-171 for D > 1, Cor. 1 in 1d).

    L_test is +∞ where no stationary state exists. Scans γ ∈ (−a_min, 2/λ) on ``grid`` points, then refines
    with a bounded scalar minimisation around the best point. Returns (γ*, L_test(γ*)).
    """
    A = check_matrix("A", A, psd=True)
    D = A.shape[0]
    u = check_vector("u", u, D)
    lr = check_scalar("lr", lr, lo=0.0, lo_open=True)
    grid = check_int("grid", grid, lo=3)
    check_batch_size(batch_size)

    def loss(g: float) -> float:
        try:
            return l2_theory(A, Gamma=g * np.eye(D), u=u, lr=lr, batch_size=batch_size, find_bound=False)["test_loss"]
        except NoStationaryState:
            return np.inf

    amin = float(np.linalg.eigvalsh(A).min())  # K = A + γI ≻ 0 needs γ > −a_min; G ≻ 0 needs γ < 2/λ − a_min
    gs = np.linspace(-amin, 2 / lr, grid + 2)[1:-1]
    vals = np.array([loss(g) for g in gs])
    if not np.isfinite(vals).any():
        raise NoStationaryState(np.nan, "no weight decay gives a stationary state at this learning rate")
    i = int(np.argmin(vals))
    lo, hi = gs[max(i - 1, 0)], gs[min(i + 1, len(gs) - 1)]
    res = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
    return (float(res.x), float(res.fun)) if res.fun <= vals[i] else (float(gs[i]), float(vals[i]))
