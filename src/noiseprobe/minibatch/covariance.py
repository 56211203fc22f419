"""Minibatch-noise covariance as theory functions (paper 002, Prop. 1, Prop. 8, Lemma 1 pointwise).

NumPy, float64, no randomness. Sampling: ``replacement=True`` is Def. 2 (S i.i.d. uniform indices),
``replacement=False`` is Def. 3 (a uniform random S-subset). Regression loss convention: **with ½**,
ℓ_i = ½(wᵀx_i − y_i)², so ∇ℓ_i = (wᵀx_i − y_i) x_i.

For any model, :class:`noiseprobe.probes.operators.NoiseCovariance` gives the same C matrix-free.
"""

from __future__ import annotations

import numpy as np

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_array, check_batch_size, check_matrix, check_scalar, check_vector
from noiseprobe.probes.operators.noise_covariance import batch_factor

__all__ = ["batch_factor", "gaussian_regression_noise", "gradient_noise", "linear_regression_noise"]


def gradient_noise(grads: np.ndarray, *, batch_size: int, replacement: bool = True) -> np.ndarray:
    """C from per-sample gradients ``grads`` (N, D):

    C = c(S, N) [(1/N) Σ_i g_i g_iᵀ − ḡḡᵀ],  c = 1/S (eq. 2 = eq. 99a) or (N−S)/(S(N−1)) (eq. 99b).
    """
    g = check_array("grads", grads, 2)
    n = g.shape[0]
    gc = g - g.mean(0)
    return np.asarray(batch_factor(batch_size, n, replacement) * (gc.T @ gc) / n)


def linear_regression_noise(
    w: np.ndarray, x: np.ndarray, y: np.ndarray, *, batch_size: int, replacement: bool = True
) -> np.ndarray:
    """Exact C(w) of linear regression on a finite data set (N samples), ½ loss (eqs. 2, 99 with ∇ℓ_i = r_i x_i):

    C = c(S, N) [(1/N) Xᵀ diag(r²) X − (Xᵀr/N)(Xᵀr/N)ᵀ],  r = Xw − y.
    """
    xm, wv, yv = check_array("x", x, 2), check_array("w", w, 1), check_array("y", y, 1)
    if xm.shape != (yv.shape[0], wv.shape[0]):
        raise ConfigError("x", f"array of shape {xm.shape}", f"shape (len(y), len(w)) = ({yv.shape[0]}, {wv.shape[0]})")
    r = xm @ wv - yv
    return gradient_noise(r[:, None] * xm, batch_size=batch_size, replacement=replacement)


def gaussian_regression_noise(
    w: np.ndarray, *, u: np.ndarray, A: np.ndarray, sigma: float, batch_size: int
) -> np.ndarray:
    """Population (N → ∞) C(w) for x ~ N(0, A), y = uᵀx + ε, label-noise sd σ (E ε² = σ²), ½ loss
    (Lemma 1 pointwise, eq. 5):

    C(w) = (1/S) [A v vᵀ A + (vᵀ A v + σ²) A],  v = w − u.

    Uses the Gaussian fourth moment E[x xᵀ M x xᵀ] = 2AMA + Tr[AM]A (eqs. 117–121); with N → ∞ both
    sampling schemes give the same C. Averaging over v ~ (0, Σ) gives Lemma 1: (1/S)(AΣA + Tr[AΣ]A + σ²A).
    """
    wv = check_array("w", w, 1)
    am, uv = check_matrix("A", A, wv.shape[0], psd=True), check_vector("u", u, wv.shape[0])
    s = check_batch_size(batch_size)
    s2 = check_scalar("sigma", sigma, lo=0.0) ** 2
    av = am @ (wv - uv)
    return (np.outer(av, av) + (float((wv - uv) @ av) + s2) * am) / s
