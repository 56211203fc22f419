"""The gradient noise scale of McCandlish et al. (2018, "An Empirical Model of Large-Batch Training").

From N per-sample gradients g_i (their Gram matrix K_ij = g_i·g_j is all that is needed):

    tr_sigma = (1/(N−1)) Σ_i |g_i − ḡ|²            unbiased trace of the per-sample covariance Σ
    g_sq     = |ḡ|² − tr_sigma/N = Σ_{i≠j} g_i·g_j / (N(N−1))     unbiased |G|² (a U-statistic)
    b_simple = tr_sigma / g_sq                    (their eq. 2.8 "B_simple"; NaN when g_sq ≤ 0)

The interval for ``b_simple`` is Fieller's for a ratio, with the variances and covariance of tr_sigma and
g_sq from the delete-one jackknife (both are U-statistics, so the N leave-one-out values come from K in
O(N²)): the set of b with (T − bG)² ≤ z²·Var(T − bG). It is exact in the limit of normal estimates,
unbounded above when g_sq is not significantly positive, and clipped to b ≥ 0 (tr Σ, |G|² ≥ 0).
tests/monitor/test_gns.py puts its coverage at 0.93–0.97 by simulation. From N micro-batch mean gradients
of b samples each (``micro_batch_size``, :mod:`.microbatch`) the same formulas on the micro-batch Gram
matrix, tr_sigma scaled by b, with Student-t quantiles on N − 1 degrees of freedom. :func:`pooled_b_simple`
is their practical estimator over several measurements, Σ tr Σ̂ / Σ |Ĝ|².

The two-batch estimator of their App. A (eqs. A.2–A.3), from squared norms of mean gradients at two
batch sizes (e.g. per rank and after the all-reduce of data-parallel training), is :func:`two_batch`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm
from scipy.stats import t as student_t

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_int, check_real


@dataclass(frozen=True)
class NoiseScale:
    """Unbiased tr Σ and |G|², their jackknife standard errors and covariance, and B_simple with its
    interval. ``n``: the units the jackknife deletes (samples, or micro-batches of ``micro_batch_size``
    samples); ``dof``: degrees of freedom of the interval's Student-t quantile (inf: normal)."""

    n: int
    tr_sigma: float
    g_sq: float
    b_simple: float
    b_simple_lo: float
    b_simple_hi: float
    tr_sigma_se: float
    g_sq_se: float
    tr_g_cov: float = math.nan
    dof: float = math.inf
    micro_batch_size: int = 1


def _t_and_g(s: np.ndarray, tr: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(tr_sigma, g_sq) from the Gram matrix's total sum s and trace tr over n samples."""
    g = (s - tr) / (n * (n - 1))
    return tr / n - g, g


def noise_scale(gram: np.ndarray, level: float = 0.95) -> NoiseScale:
    """tr_sigma, g_sq and B_simple with its ``level`` interval from the Gram matrix K (N × N, N ≥ 3)."""
    return noise_scale_from_gram(gram, 1, level)


def noise_scale_from_gram(gram: np.ndarray, micro_batch_size: int = 1, level: float = 0.95) -> NoiseScale:
    """The same from the Gram matrix of per-sample (b = 1) or micro-batch mean gradients (b samples each)."""
    K = np.asarray(gram, dtype=np.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] < 3:
        raise ConfigError("gram", f"array of shape {K.shape}", "a square (N, N) Gram matrix with N >= 3")
    return noise_scale_from_sums(np.diag(K), K.sum(1), float(K.sum()), level, micro_batch_size=micro_batch_size)


def noise_scale_from_sums(
    sq_norms: np.ndarray,
    row_sums: np.ndarray,
    total: float,
    level: float = 0.95,
    *,
    micro_batch_size: int = 1,
) -> NoiseScale:
    """The same from |g_i|² (N,), r_i = g_i·Σ_j g_j (N,) and |Σ_j g_j|²: all that the estimates and their
    jackknife need, so data-parallel ranks combine exactly (each computes its samples' entries against the
    all-reduced gradient sum).

    ``micro_batch_size`` b > 1: the g_i are the mean gradients of N micro-batches of b samples each
    (:mod:`.microbatch`); tr_sigma is then b·Σ_i |g_i − ḡ|²/(N − 1), the per-sample-scale trace of the noise
    at micro-batch size b, and the interval uses Student-t quantiles on N − 1 degrees of freedom."""
    d, r = np.asarray(sq_norms, dtype=np.float64), np.asarray(row_sums, dtype=np.float64)
    n = d.shape[0]
    if d.ndim != 1 or r.shape != d.shape or n < 3:
        raise ConfigError("sq_norms, row_sums", (d.shape, r.shape), "two vectors of the same length N >= 3")
    if not (np.isfinite(d).all() and np.isfinite(r).all() and math.isfinite(total)):
        raise ConfigError("per-sample gradients", "non-finite values", "finite per-sample gradients")
    check_real("level", level, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    s, tr = float(total), float(d.sum())
    T: np.ndarray | float  # arrays, then the scalars passed on
    G: np.ndarray | float
    T, G = _t_and_g(np.array(s), np.array(tr), n)
    Ti, Gi = _t_and_g(s - 2 * r + d, tr - d, n - 1)  # leave sample i out
    bsz = check_int("micro_batch_size", micro_batch_size, lo=1)
    T, Ti = T * bsz, Ti * bsz
    f = (n - 1) / n
    dT, dG = Ti - Ti.mean(), Gi - Gi.mean()
    vT, vG, cTG = f * (dT @ dT), f * (dG @ dG), f * (dT @ dG)
    T, G = float(T), float(G)
    dof = math.inf if bsz == 1 else float(n - 1)
    lo, hi = fieller(T, G, vT, vG, cTG, quantile(level, dof))
    b = T / G if G > 0 else math.nan
    return NoiseScale(n, T, G, b, lo, hi, math.sqrt(vT), math.sqrt(vG), float(cTG), dof, bsz)


def quantile(level: float, dof: float) -> float:
    """The two-sided ``level`` quantile: normal (dof = inf) or Student-t on ``dof`` degrees of freedom."""
    p = 0.5 + level / 2
    return float(norm.ppf(p)) if math.isinf(dof) else float(student_t.ppf(p, dof))


def pooled_b_simple(scales: Sequence[NoiseScale], level: float = 0.95) -> tuple[float, float, float]:
    """McCandlish et al.'s practical B_simple over several measurements: Σ_k tr Σ̂_k / Σ_k |Ĝ_k|² (a ratio of
    averages, less biased than an average of ratios), with Fieller's interval from the summed jackknife
    (co)variances (measurements independent); quantile on Σ_k dof_k degrees of freedom (normal if any is
    per-sample). Returns (b, lo, hi)."""
    if not scales:
        return math.nan, math.nan, math.nan
    T, G = sum(s.tr_sigma for s in scales), sum(s.g_sq for s in scales)
    vT, vG = sum(s.tr_sigma_se**2 for s in scales), sum(s.g_sq_se**2 for s in scales)
    cTG = sum(s.tr_g_cov for s in scales)
    lo, hi = fieller(T, G, vT, vG, cTG, quantile(level, sum(s.dof for s in scales)))
    return (T / G if G > 0 else math.nan), lo, hi


def fieller(num: float, den: float, v_num: float, v_den: float, cov: float, z: float) -> tuple[float, float]:
    """Fieller's interval for num/den ≥ 0: {b ≥ 0 : (num − b·den)² ≤ z²(v_num − 2b·cov + b²v_den)}."""
    a = den * den - z * z * v_den
    h = num * den - z * z * cov
    c = num * num - z * z * v_num
    disc = h * h - a * c
    if a > 0:  # den significantly non-zero: a bounded interval
        if disc < 0:
            return math.nan, math.nan
        sq = math.sqrt(disc)
        return max((h - sq) / a, 0.0), max((h + sq) / a, 0.0)
    if disc <= 0 or a == 0:  # the whole half-line
        return 0.0, math.inf
    sq = math.sqrt(disc)
    r1, r2 = sorted(((h - sq) / a, (h + sq) / a))
    return (max(r2, 0.0) if r1 < 0 else 0.0), math.inf


def two_batch(sq_norm_small: float, sq_norm_big: float, b_small: int, b_big: int) -> tuple[float, float]:
    """McCandlish et al. App. A (eqs. A.2, A.3): unbiased (|G|², tr Σ) from |G_small|², |G_big|² measured on
    mean gradients over b_small < b_big samples: E|G_B|² = |G|² + tr Σ / B."""
    if not (0 < b_small < b_big):
        raise ConfigError("b_small, b_big", (b_small, b_big), "batch sizes 0 < b_small < b_big")
    g_sq = (b_big * sq_norm_big - b_small * sq_norm_small) / (b_big - b_small)
    tr_sigma = (sq_norm_small - sq_norm_big) / (1 / b_small - 1 / b_big)
    return g_sq, tr_sigma
