"""Theory of the linear toy model (paper 001, Sec. 3, eqs. 5–10, App. D): phase boundaries and time scales.

Conventions: ½-MSE of eq. (4); x ~ N(0, σx²), ε ~ N(0, σε²); batch of B fresh samples per step (with
replacement from infinite data); time in SGD *steps* (the paper's continuous time t equals η·steps).
Functions are pure and vectorised: weights are the per-run initial values (arrays broadcast together),
results are per-run predictions (take medians over runs to compare with a measured boundary).

Paper formulas and corrections (docs/theory/noise_injection_nodes.md §4; the experiment reports both side by side):

* σ_dec = 2Ã0/B̃0 (Sec. 3) with |Φ0| → 1 is 2σx|D0|/(√B |w1,0|) (``sigma_dec_paper``); it is not
  dimensionally a σ. The dimensionally fixed per-step kick-vs-drift form divides by |w_NI,0|
  (``sigma_dec_fixed``). Neither marks the measured boundary, which is a *horizon* effect:
  η σε² Σ_{t<T} w1(t)² = 1 (``sigma_horizon``).
* σ²_cat = min(2/B0, 2/B̃0) and σ²_div = max(2/B0, 2/B̃0) with B0 = η w_NI,0², B̃0 = η w1,0² (eq. 6); the
  paper writes the catapult/divergent conditions with σ instead of σ² — both readings are returned.
  The corrected decay|catapult predictor is the stability edge of the *final* minimum,
  η σε² w1*² = a* (``sigma_edge``), a* = 2 for the reduced map and the Lyapunov edge of the S_εε
  fluctuations for exact SGD (``lyapunov_edge``).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import integrate, optimize, special

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_int, check_real

ArrayLike = float | np.ndarray


def paper_boundaries(
    w0: ArrayLike,
    w1: ArrayLike,
    w_ni: ArrayLike,
    *,
    lr: float,
    sigma_x: float = 1.0,
    M: float = 1.0,
    batch_size: int = 1,
) -> dict[str, np.ndarray]:
    """The paper's Sec. 3 boundaries per run, from the initial weights (eq. 6 at t = 0, |Φ0| = 1).

    Keys: ``sigma_dec_paper`` = 2Ã0/B̃0 = 2σx|D0|/(√B|w1,0|) (as printed); ``sigma_dec_fixed`` = that
    divided by |w_NI,0| (docs/theory/noise_injection_nodes.md §4.3); ``sigma_cat`` = √min(2/B0, 2/B̃0) and ``sigma_div`` =
    √max(2/B0, 2/B̃0) (σ² reading, consistent); ``sigma_cat_literal`` / ``sigma_div_literal`` = the
    min / max themselves (σ reading, as printed for σ_div).
    """
    lr = check_real("lr", lr, lo=0.0, lo_open=True)
    sigma_x = check_real("sigma_x", sigma_x, lo=0.0, lo_open=True)
    M = check_real("M", M)
    batch_size = check_int("batch_size", batch_size, lo=1)
    w0, w1, w_ni = np.broadcast_arrays(*(np.asarray(w, dtype=np.float64) for w in (w0, w1, w_ni)))
    with np.errstate(divide="ignore"):
        a_t = lr * sigma_x * np.abs(w1 * (w1 * w0 - M)) / np.sqrt(batch_size)  # |Ã0| / σε at |Φ0| = 1 (eq. 6)
        b0, bt0 = lr * w_ni**2, lr * w1**2  # B0, B̃0 (eq. 6)
        dec = 2.0 * a_t / bt0
        lo, hi = np.minimum(2.0 / b0, 2.0 / bt0), np.maximum(2.0 / b0, 2.0 / bt0)
        return {
            "sigma_dec_paper": dec,
            "sigma_dec_fixed": dec / np.abs(w_ni),
            "sigma_cat": np.sqrt(lo),
            "sigma_div": np.sqrt(hi),
            "sigma_cat_literal": lo,
            "sigma_div_literal": hi,
        }


def w1_star_sq(w0: ArrayLike, w1: ArrayLike, M: float = 1.0) -> np.ndarray:
    """w1*² of the minimum reached by gradient flow: w0² − w1² is conserved and w1 w0 = M, so
    w1*² = (c + √(c² + 4M²))/2 with c = w1,0² − w0,0² (docs/theory/noise_injection_nodes.md §4, derived there)."""
    M = check_real("M", M)
    c = np.asarray(w1, dtype=np.float64) ** 2 - np.asarray(w0, dtype=np.float64) ** 2
    return 0.5 * (c + np.sqrt(c * c + 4.0 * M * M))


def sigma_edge(w0: ArrayLike, w1: ArrayLike, *, lr: float, M: float = 1.0, edge: float = 2.0) -> np.ndarray:
    """Corrected decay|catapult predictor: the final minimum is unstable for the NIW once
    η σε² w1*² > edge, i.e. σ_edge = √(edge/(η w1*²)) (docs/theory/noise_injection_nodes.md §4, 'final-minimum edge')."""
    lr = check_real("lr", lr, lo=0.0, lo_open=True)
    edge = check_real("edge", edge, lo=0.0, lo_open=True)
    return np.sqrt(edge / (lr * w1_star_sq(w0, w1, M)))


def sigma_horizon(sum_w1sq: ArrayLike, *, lr: float) -> np.ndarray:
    """Corrected decoupled|decay predictor (horizon law): the NIW has lost one e-fold by T when
    η σε² Σ_{t<T} w1(t)² = 1 (eq. 9 integrated to the horizon), i.e. σ_T = (η Σ_{t<T} w1²)^-1/2.
    Use the measured Σ w1² of a run, or ``w1_star_sq · T`` for the init-only estimate (η w1*² T)^-1/2."""
    lr = check_real("lr", lr, lo=0.0, lo_open=True)
    return 1.0 / np.sqrt(lr * np.asarray(sum_w1sq, dtype=np.float64))


def sigma_upper_limit(*, lr: float, M: float = 1.0, sigma_x: float = 1.0) -> float:
    """No minimum is stable above σε = 2/(η |M| σx): η σε² w1² < 2 and η σx² w0² < 2 on w1 w0 = M."""
    lr = check_real("lr", lr, lo=0.0, lo_open=True)
    M = check_real("M", M)
    sigma_x = check_real("sigma_x", sigma_x, lo=0.0, lo_open=True)
    if M == 0.0:
        raise ConfigError("M", M, "a nonzero target (M = 0 has no upper limit)")
    return 2.0 / (lr * abs(M) * sigma_x)


def tau_noise(w1: ArrayLike, *, sigma_eps: ArrayLike, lr: float) -> np.ndarray:
    """Eq. (10), NIW: τ_noise = −w_NI/ẇ_NI = 1/(σε² w1²) in time t, i.e. 1/(η σε² w1²) steps (eq. 31)."""
    lr = check_real("lr", lr, lo=0.0, lo_open=True)
    return 1.0 / (lr * np.asarray(sigma_eps, dtype=np.float64) ** 2 * np.asarray(w1, dtype=np.float64) ** 2)


def tau_loss(w0: ArrayLike, w1: ArrayLike, *, lr: float, sigma_x: float = 1.0) -> np.ndarray:
    """Eq. (10), clean loss: τ_loss = −L/L̇ = 1/(2 σx² (w0² + w1²)) in time t (eq. 30), in steps divided by η."""
    lr = check_real("lr", lr, lo=0.0, lo_open=True)
    sigma_x = check_real("sigma_x", sigma_x, lo=0.0, lo_open=True)
    q = np.asarray(w0, dtype=np.float64) ** 2 + np.asarray(w1, dtype=np.float64) ** 2
    return 1.0 / (2.0 * lr * sigma_x**2 * q)


def niw_exponent(w1: np.ndarray, *, sigma_eps: ArrayLike, lr: float) -> np.ndarray:
    """Eq. (9), NIW: −log(w_NI(t)/w_NI(0)) ≈ η σε² Σ_{s<t} w1(s)², for trajectories w1 of shape (..., T);
    returns shape (..., T) with 0 at t = 0."""
    lr = check_real("lr", lr, lo=0.0, lo_open=True)
    w1 = np.asarray(w1, dtype=np.float64)
    s = np.cumsum(w1**2, axis=-1) - w1**2
    return np.asarray(lr * np.asarray(sigma_eps, dtype=np.float64)[..., None] ** 2 * s)


def loss_exponent(w0: np.ndarray, w1: np.ndarray, *, lr: float, sigma_x: float = 1.0) -> np.ndarray:
    """Eq. (9), clean loss: −log(L(t)/L(0)) ≈ 2 η σx² Σ_{s<t} (w0(s)² + w1(s)²), shape (..., T)."""
    lr = check_real("lr", lr, lo=0.0, lo_open=True)
    sigma_x = check_real("sigma_x", sigma_x, lo=0.0, lo_open=True)
    q = np.asarray(w0, dtype=np.float64) ** 2 + np.asarray(w1, dtype=np.float64) ** 2
    return 2.0 * lr * sigma_x**2 * (np.cumsum(q, axis=-1) - q)


def mean_square_edge(*, batch_size: int) -> float:
    """Largest a = η σε² w1² with E m² <= 1 for the NIW multiplier m = 1 − a S_εε/σε², S_εε·B/σε² ~ χ²_B:
    1 − 2a + a²(1 + 2/B) = 1 ⇒ a = 2B/(B + 2) (docs/theory/noise_injection_nodes.md §4 table)."""
    b = check_int("batch_size", batch_size, lo=1)
    return 2.0 * b / (b + 2.0)


@functools.lru_cache(maxsize=64)
def lyapunov_edge(*, batch_size: int) -> float:
    """The a = η σε² w1² at which the typical NIW multiplier is marginal, E log|1 − a Y| = 0 with
    Y = χ²_B/B (almost-sure stability; 2.421 at B = 1, 2.151 at B = 32, → 2 as B → ∞)."""
    b = check_int("batch_size", batch_size, lo=1)
    k = 0.5 * b
    log_norm = k * np.log(k) - special.gammaln(k)

    def pdf(y: float) -> float:  # density of Y = χ²_B/B: Gamma(shape B/2, rate B/2)
        return float(np.exp(log_norm + (k - 1.0) * np.log(y) - k * y)) if y > 0 else 0.0

    def lyap(a: float) -> float:
        f = lambda y: np.log(abs(1.0 - a * y)) * pdf(y)  # noqa: E731
        lo = integrate.quad(f, 0.0, 1.0 / a, limit=200)[0]
        hi = integrate.quad(f, 1.0 / a, np.inf, limit=200)[0]
        return float(lo + hi)

    return float(optimize.brentq(lyap, 1.0, 6.0, xtol=1e-10))
