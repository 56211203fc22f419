"""Stationary fluctuation Σ of SGD near a quadratic minimum: Theorem 1 of paper 002 (eq. 3).

For gradients ``g = H w + η`` with ``cov η = C`` (i.i.d. in time, or a martingale difference whose
stationary average is C), heavy-ball momentum ``m_t = μ m_{t−1} + g_t``, ``w_t = w_{t−1} − Λ m_t``::

    (1−μ)(ΛHΣ + ΣHΛ) − (1+μ²)/(1−μ²)·ΛHΣHΛ + μ/(1−μ²)·(ΛHΛHΣ + ΣHΛHΛ) = ΛCΛ          (eq. 3)

Solvers (all exact; none assumes [Λ, H] = 0):

* ``method="eigen"`` (default, O(D³)): for symmetric Λ ≻ 0 the substitution Σ = V X Vᵀ with
  V = Λ^{1/2}Q, where Λ^{1/2}HΛ^{1/2} = Q diag(f) Qᵀ, makes eq. (3) entry-wise:
  ``c(f_i, f_j) X_ij = (Qᵀ Λ^{1/2} C Λ^{1/2} Q)_ij``. The commuting case ([Λ, H] = 0) is the special case
  V = eigenvectors of H scaled by the eigenvalues of Λ^{1/2}.
* ``method="lyapunov"``: the augmented state x = (w, m), ``P = M P Mᵀ + B C Bᵀ`` with
  ``M = [[I − ΛH, −μΛ], [H, μI]]``, ``B = [−Λ; I]``, Σ = P_ww, by ``scipy.linalg.solve_discrete_lyapunov``
  (also works for a singular or non-symmetric Λ).
* ``method="kronecker"``: dense vectorised solve of eq. (3), D ≤ ``KRON_MAX_D`` (checks and benchmarks).

Noise that depends on Σ (minibatch noise: Lemma 1, Prop. 3, Prop. 9, Prop. 4) enters as an affine map
``C(Σ) = C0 + noise_map(Σ)``; eq. (3) is then one linear matrix equation in Σ, solved by GMRES on the
transformed entry-wise system (preconditioned by its diagonal), matrix-free.

A stationary state exists iff every mode is stable, ``0 < f_i < 2(1+μ)``, and the noise feedback
``X ↦ c⁻¹∘(transformed noise_map)(X)`` has spectral radius < 1 (mean-square stability). Otherwise
:class:`NoStationaryState` is raised with the learning-rate bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast, overload

import numpy as np
import scipy.linalg
import scipy.sparse.linalg as spla

from noiseprobe.core.errors import ConfigError, NumericalError
from noiseprobe.core.linalg import psd_power
from noiseprobe.core.validation import (
    check_callable,
    check_choice,
    check_int,
    check_lr,
    check_matrix,
    check_momentum,
    check_real,
)

#: largest D for the dense Kronecker solve (D² × D² matrix)
KRON_MAX_D = 48
NoiseMap = Callable[[np.ndarray], np.ndarray]


class NoStationaryState(ValueError):
    """No stationary second moment exists; ``bound`` is the learning rate (or Λ-scale) it needs to stay below."""

    def __init__(self, bound: float, detail: str = "", what: str = "learning rate") -> None:
        self.bound = float(bound)
        self.what = what
        super().__init__(
            f"no stationary state: {what} must be below {self.bound:.6g}" + (f" ({detail})" if detail else "")
        )


def _coeffs(f: np.ndarray, mu: float) -> np.ndarray:
    """c(f_i, f_j) of eq. (3) in the eigenbasis of Λ^{1/2} H Λ^{1/2}."""
    fi, fj = f[:, None], f[None, :]
    return np.asarray(
        (1 - mu) * (fi + fj) - (1 + mu * mu) / (1 - mu * mu) * fi * fj + mu / (1 - mu * mu) * (fi * fi + fj * fj)
    )


def thm1_residual(
    Sigma: np.ndarray, H: np.ndarray, C: np.ndarray, *, lr: float | np.ndarray, momentum: float = 0.0
) -> np.ndarray:
    """LHS − RHS of eq. (3) for a given Σ (zero at the stationary state)."""
    H = check_matrix("H", H)
    D = H.shape[0]
    Sigma, C = check_matrix("Sigma", Sigma, D), check_matrix("C", C, D)
    Lam, _ = check_lr(lr, D, symmetric=False)
    mu = check_momentum(momentum)
    F = Lam @ H
    a, b = (1 + mu * mu) / (1 - mu * mu), mu / (1 - mu * mu)
    FS = F @ Sigma
    lhs = (1 - mu) * (FS + FS.T) - a * F @ Sigma @ F.T + b * (F @ FS + (F @ FS).T)
    return np.asarray(lhs - Lam @ C @ Lam)


class _Basis:
    """The transformation Σ = V X Vᵀ, V = Λ^{1/2}Q, that makes eq. (3) entry-wise (symmetric Λ ≻ 0)."""

    def __init__(self, H: np.ndarray, Lam: np.ndarray, mu: float) -> None:
        D = H.shape[0]
        Hs = (H + H.T) / 2
        lam0 = float(Lam[0, 0])
        if lam0 > 0 and np.array_equal(Lam, lam0 * np.eye(D)):  # scalar λ: Λ^{1/2} = √λ I, no extra products
            f, Q = np.linalg.eigh(lam0 * Hs)
            self.V = np.sqrt(lam0) * Q
        else:
            lv, lq = np.linalg.eigh((Lam + Lam.T) / 2)
            if lv.min() <= 0 or not np.allclose(Lam, Lam.T, atol=1e-12 * max(1.0, np.abs(Lam).max())):
                raise ConfigError("lr", "matrix", "symmetric positive definite for method='eigen'")
            half = psd_power((Lam + Lam.T) / 2)
            f, Q = np.linalg.eigh(half @ Hs @ half)
            self.V = half @ Q
        self.f, self.mu = f, mu
        self.c = _coeffs(f, mu)

    def to_x(self, C: np.ndarray) -> np.ndarray:
        """Vᵀ C V = Qᵀ Λ^{1/2} C Λ^{1/2} Q: the transformed ΛCΛ."""
        return np.asarray(self.V.T @ C @ self.V)

    def to_sigma(self, X: np.ndarray) -> np.ndarray:
        """Σ = V X Vᵀ (symmetrised)."""
        S = self.V @ X @ self.V.T
        return np.asarray((S + S.T) / 2)

    @overload
    def feedback(self, noise_map: NoiseMap) -> tuple[np.ndarray, np.ndarray, NoiseMap]: ...
    @overload
    def feedback(self, noise_map: None) -> tuple[np.ndarray, np.ndarray, None]: ...
    def feedback(self, noise_map: NoiseMap | None) -> tuple[np.ndarray, np.ndarray, NoiseMap | None]:
        """(null, c with null entries set to 1, X ↦ c⁻¹∘Ñ(X) or None): the transformed noise feedback of a
        Σ-dependent noise map; modes with c = 0 (zero curvature) are masked out."""
        null = np.abs(self.c) <= 1e-14 * max(1.0, np.abs(self.c).max())
        cs = np.where(null, 1.0, self.c)
        if noise_map is None:
            return null, cs, None

        def nmap(X: np.ndarray) -> np.ndarray:
            return np.where(null, 0.0, self.to_x(noise_map(self.to_sigma(X))) / cs)

        return null, cs, nmap

    def mode_bound(self) -> float:
        """Largest Λ-scale s with every mode of sΛ stable: s < 2(1+μ)/f_max."""
        return 2 * (1 + self.mu) / self.f.max() if self.f.max() > 0 else np.inf

    def stable(self) -> bool:
        """Every mode stable: 0 <= f_i < 2(1+μ) (f_i eigenvalues of Λ^{1/2}HΛ^{1/2})."""
        tol = 1e-12 * max(1.0, np.abs(self.f).max())
        return bool(self.f.min() > -tol and self.f.max() < 2 * (1 + self.mu))


def or_inf(f: Callable[..., Any], /, *args: Any, **kw: Any) -> float:
    """``f(*args, **kw)`` as a float (the first entry of an array result), +inf where
    :class:`NoStationaryState` says no stationary state exists (for curves through a divergence)."""
    try:
        v = f(*args, **kw)
    except NoStationaryState:
        return np.inf
    return float(np.asarray(v).ravel()[0])


def _no_state(bound: float, scalar: float | None, detail: str) -> NoStationaryState:
    """The error for a Λ-scale bound: in units of λ for a scalar learning rate, else of the scale factor of Λ."""
    if scalar is None:
        return NoStationaryState(bound, detail, "the scale factor of Λ")
    return NoStationaryState(bound * scalar, detail, "learning rate")


def _raise_unstable(bs: _Basis, scalar: float | None, detail: str) -> None:
    """Raise NoStationaryState for unstable modes: bound 0 for a negative curvature, else the mode bound."""
    if bs.f.min() < -1e-12 * max(1.0, np.abs(bs.f).max()):
        raise NoStationaryState(
            0.0, "the Hessian has a negative direction; no learning rate is stable", "learning rate"
        )
    raise _no_state(bs.mode_bound(), scalar, detail)


def solve_fluctuation(
    H: np.ndarray,
    C: np.ndarray,
    *,
    lr: float | np.ndarray,
    momentum: float = 0.0,
    noise_map: NoiseMap | None = None,
    method: str = "auto",
) -> np.ndarray:
    """Stationary Σ of eq. (3) for noise ``C + noise_map(Σ)`` (``noise_map`` linear in Σ, optional).

    ``method``: "auto" (eigen when Λ is symmetric positive definite, else lyapunov), "eigen", "lyapunov",
    "kronecker". Raises :class:`NoStationaryState` (a ValueError) with the learning-rate bound when no
    stationary state exists. Zero-curvature modes with zero noise get Σ = 0 there.
    """
    H = check_matrix("H", H)
    D = H.shape[0]
    C = check_matrix("C", C, D, psd=True)
    mu = check_momentum(momentum)
    check_choice("method", method, ("auto", "eigen", "lyapunov", "kronecker"))
    Lam, scalar = check_lr(lr, D, symmetric=False)
    if noise_map is not None:
        noise_map = _checked_noise_map(noise_map, D)
    if method == "auto":
        sym = np.allclose(Lam, Lam.T, atol=1e-12 * max(1.0, np.abs(Lam).max()))
        method = "eigen" if sym and np.linalg.eigvalsh((Lam + Lam.T) / 2).min() > 0 else "lyapunov"
    if method == "kronecker":
        return _kronecker(H, C, Lam, mu, noise_map, scalar)
    if method == "lyapunov":
        if noise_map is not None:
            raise ConfigError("method", "lyapunov", "'eigen' or 'kronecker' when the noise depends on Σ")
        return _lyapunov(H, C, Lam, mu, scalar)
    bs = _Basis(H, Lam, mu)
    if not bs.stable():
        _raise_unstable(bs, scalar, "a mode of Λ^{1/2}HΛ^{1/2} has eigenvalue >= 2(1+μ)")
    R0 = bs.to_x(C)
    null, cs, nmap = bs.feedback(noise_map)
    if np.any(np.abs(R0[null]) > 1e-12 * max(1.0, np.abs(R0).max())):
        raise NoStationaryState(
            0.0, "noise acts along a zero-curvature direction: Σ grows without bound", "learning rate"
        )
    if noise_map is None:
        return bs.to_sigma(np.where(null, 0.0, R0 / cs))
    assert nmap is not None  # feedback returns a map when given one
    rho = _spectral_radius(nmap, D)
    if rho >= 1.0:
        raise _no_state(
            _bound_by_bisection(H, Lam, mu, noise_map),
            scalar,
            f"minibatch-noise feedback has spectral radius {rho:.4g} >= 1",
        )
    b = np.where(null, 0.0, R0 / cs).ravel()
    op = spla.LinearOperator((D * D, D * D), matvec=lambda v: v - nmap(v.reshape(D, D)).ravel(), dtype=np.float64)
    x, info = spla.gmres(op, b, rtol=1e-13, atol=0.0, restart=min(D * D, 60), maxiter=200)
    if info != 0:
        if D > KRON_MAX_D:
            raise NumericalError(f"GMRES did not converge for the Σ-dependent noise (D = {D}, info = {info})")
        x = np.linalg.solve(_dense(lambda X: X - nmap(X), D), b)
    return bs.to_sigma(x.reshape(D, D))


def _checked_noise_map(noise_map: Any, D: int) -> NoiseMap:
    """``noise_map`` if it is callable and maps a D × D matrix to a finite D × D matrix (tried on I_D)."""
    allowed = f"a function mapping a {D}x{D} matrix to a finite {D}x{D} matrix"
    check_callable("noise_map", noise_map, allowed)
    try:
        out = np.asarray(noise_map(np.eye(D)), dtype=np.float64)
    except Exception as err:  # the user's function failed on a valid Σ: name it, with its reason
        raise ConfigError("noise_map", f"a function raising {type(err).__name__}: {err}", allowed) from err
    if out.shape != (D, D):
        raise ConfigError("noise_map", f"a function returning shape {out.shape}", allowed)
    if not np.all(np.isfinite(out)):
        raise ConfigError("noise_map", "a function returning non-finite entries", allowed)
    return cast(NoiseMap, noise_map)


def _dense(op: Callable[[np.ndarray], np.ndarray], D: int) -> np.ndarray:
    """The D² × D² matrix of a linear map on D × D matrices (row-major vec)."""
    cols = []
    for k in range(D * D):
        e = np.zeros(D * D)
        e[k] = 1.0
        cols.append(op(e.reshape(D, D)).ravel())
    return np.asarray(np.array(cols).T)


def _spectral_radius(op: Callable[[np.ndarray], np.ndarray], D: int) -> float:
    """Largest |eigenvalue| of a linear map on D × D matrices (dense for small D, ARPACK otherwise)."""
    if D * D <= 64:
        return float(np.abs(np.linalg.eigvals(_dense(op, D))).max())
    lin = spla.LinearOperator((D * D, D * D), matvec=lambda v: op(v.reshape(D, D)).ravel(), dtype=np.float64)
    return float(np.abs(spla.eigs(lin, k=1, which="LM", return_eigenvectors=False, tol=1e-8)).max())


def largest_stable_scale(ok: Callable[[float], bool], hi: float = 1.0, iters: int = 50) -> float:
    """Bisection for sup{s ∈ (0, hi]: ok(s)} given that ok fails at ``hi`` and holds near 0."""
    hi = check_real("hi", hi, lo=0.0, lo_open=True)
    check_int("iters", iters, lo=1)
    lo = 0.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return hi


def _bound_by_bisection(H: np.ndarray, Lam: np.ndarray, mu: float, noise_map: NoiseMap) -> float:
    """Largest scale s such that sΛ has a stationary state (mode stability and noise feedback < 1)."""

    def ok(s: float) -> bool:
        bs = _Basis(H, s * Lam, mu)
        return bs.stable() and _spectral_radius(bs.feedback(noise_map)[2], H.shape[0]) < 1.0

    return largest_stable_scale(ok, min(1.0, _Basis(H, Lam, mu).mode_bound()))


def _lyapunov(H: np.ndarray, C: np.ndarray, Lam: np.ndarray, mu: float, scalar: float | None) -> np.ndarray:
    """Σ = P_ww of the augmented (w, m) discrete Lyapunov equation P = M P Mᵀ + B C Bᵀ (Thm 1, §3)."""
    D = H.shape[0]
    M, Bm = augmented_system(H, lr=Lam, momentum=mu)
    rad = np.abs(np.linalg.eigvals(M)).max()
    if rad >= 1.0:
        raise _no_state(_lyap_bound(H, Lam, mu), scalar, f"augmented (w, m) map has spectral radius {rad:.4g}")
    P = scipy.linalg.solve_discrete_lyapunov(M, Bm @ C @ Bm.T, method="bilinear" if D > 5 else "direct")
    S = P[:D, :D]
    return np.asarray((S + S.T) / 2)


def augmented_system(H: np.ndarray, *, lr: np.ndarray, momentum: float) -> tuple[np.ndarray, np.ndarray]:
    """(M, B) of the exact augmented recursion x_t = M x_{t−1} + B η_t, x = (w, m) (Thm 1, docs/theory/minibatch_noise.md §3)::

        M = [[I − ΛH, −μΛ], [H, μI]],   B = [−Λ; I]

    ``lr`` is the (D, D) matrix Λ (validated by the callers).
    """
    D = H.shape[0]
    Lam, mu = lr, momentum
    M = np.block([[np.eye(D) - Lam @ H, -mu * Lam], [H, mu * np.eye(D)]])
    return M, np.vstack([-Lam, np.eye(D)])


def _lyap_bound(H: np.ndarray, Lam: np.ndarray, mu: float) -> float:
    """Largest scale s with a stable augmented map for sΛ (spectral radius of M < 1)."""
    return largest_stable_scale(
        lambda s: np.abs(np.linalg.eigvals(augmented_system(H, lr=s * Lam, momentum=mu)[0])).max() < 1.0
    )


def thm1_kronecker_matrix(H: np.ndarray, *, lr: float | np.ndarray, momentum: float = 0.0) -> np.ndarray:
    """The D² × D² matrix of the LHS of eq. (3) acting on row-major vec(Σ) (dense; toy sizes only)."""
    H = check_matrix("H", H)
    D = H.shape[0]
    if D > KRON_MAX_D:
        raise ConfigError("H", f"matrix of size {D}", f"size <= {KRON_MAX_D} for the dense Kronecker matrix")
    Lam, _ = check_lr(lr, D, symmetric=False)
    mu = check_momentum(momentum)
    F, eye = Lam @ H, np.eye(D)
    a, b = (1 + mu * mu) / (1 - mu * mu), mu / (1 - mu * mu)
    F2 = F @ F
    return (
        (1 - mu) * (np.kron(F, eye) + np.kron(eye, F)) - a * np.kron(F, F) + b * (np.kron(F2, eye) + np.kron(eye, F2))
    )


def _kronecker(
    H: np.ndarray, C: np.ndarray, Lam: np.ndarray, mu: float, noise_map: NoiseMap | None, scalar: float | None
) -> np.ndarray:
    """Dense solve of vec(eq. 3): (K_LHS − Λ⊗Λ·N) vec Σ = vec(ΛCΛ), N the noise map (D <= KRON_MAX_D)."""
    D = H.shape[0]
    if D > KRON_MAX_D:
        raise ConfigError("method", "kronecker", f"only for D <= {KRON_MAX_D} (D = {D}); use 'eigen'")
    if np.abs(np.linalg.eigvals(augmented_system(H, lr=Lam, momentum=mu)[0])).max() >= 1.0:
        raise _no_state(_lyap_bound(H, Lam, mu), scalar, "augmented (w, m) map is unstable")
    K = thm1_kronecker_matrix(H, lr=Lam, momentum=mu)
    if noise_map is not None:
        K = K - _dense(lambda X: Lam @ noise_map(X) @ Lam, D)
    x = np.linalg.solve(K, (Lam @ C @ Lam).ravel())
    S = x.reshape(D, D)
    S = (S + S.T) / 2
    if np.linalg.eigvalsh(S).min() < -1e-10 * max(1.0, np.abs(S).max()):
        bound = _bound_by_bisection(H, Lam, mu, noise_map) if noise_map is not None else np.nan
        raise _no_state(bound, scalar, "the linear solve gives a non-PSD Σ: noise feedback too strong")
    return np.asarray(S)
