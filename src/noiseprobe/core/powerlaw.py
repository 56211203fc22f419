"""Power-law tail estimators: Hill and a Clauset-style maximum-likelihood fit with KS-selected x_min.

Convention: the *tail index* ``beta`` is the exponent of the complementary CDF,
``P(X > x) ~ C x^(-beta)`` for large x, i.e. the density decays as ``x^(-(1+beta))`` (Clauset et al. 2009
call ``1 + beta`` their alpha). ``beta`` is the smallest moment of X that diverges. Samples must be positive
and finite (pass ``|w|`` for a symmetric law). Standard errors are asymptotic and conditional on the
threshold (they do not include the variance of the x_min selection). For i.i.d. samples SE = beta/sqrt(k);
when samples come in independent *clusters* (e.g. snapshots of independent SGD chains, dependent within a
chain), pass ``clusters`` (one label per sample) for a cluster-robust SE of the same estimate.

No parameter of either estimator is capped (unlike the ``powerlaw`` package, whose default search range
silently limits the exponent). The one search bound is the range of tail sizes over which the MLE selects
x_min; when the selected x_min sits on an end of that range that restricted the search, a warning is
issued and ``TailFit.at_bound`` is True.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_int, check_real


@dataclass(frozen=True)
class TailFit:
    """A tail-index estimate. ``beta``: CCDF exponent; ``se``: its standard error; ``k``: tail sample size
    (points used); ``x_min``: threshold; ``ks``: KS distance of the fitted tail (NaN for Hill);
    ``at_bound``: the selected x_min sits on a restricting end of the search range."""

    beta: float
    se: float
    k: int
    x_min: float
    n: int
    method: str
    ks: float = float("nan")
    at_bound: bool = False


def _sorted_logs(x: ArrayLike) -> np.ndarray:
    """log of the samples, sorted descending; raise ConfigError unless all are positive and finite."""
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size < 3:
        raise ConfigError("x", f"{a.size} samples", "at least 3 samples")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        bad = a[~(np.isfinite(a) & (a > 0))][0]
        raise ConfigError("x", float(bad), "positive finite samples only (pass |w|, drop diverged replicas)")
    return -np.sort(-np.log(a))


def _hill_from_logs(logs_desc: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Hill estimates of beta for tail sizes ``ks`` (vectorised over k)."""
    csum = np.cumsum(logs_desc)
    gamma = csum[ks - 1] / ks - logs_desc[ks]  # (1/k) sum_{i<=k} log X_(i) - log X_(k+1)
    with np.errstate(divide="ignore"):
        return 1.0 / gamma


def _se(beta: float, k: int, x: ArrayLike, log_threshold: float, clusters: ArrayLike | None, inclusive: bool) -> float:
    """SE of beta = 1/gamma, gamma = sum_i e_i / sum_i b_i with e_i = log(x_i/x_min) b_i and b_i = 1{x_i > x_min}
    (Hill) or 1{x_i >= x_min} (MLE, ``inclusive``).

    i.i.d.: beta/sqrt(k). Clustered: delta method for the ratio with cluster sums E_c, B_c,
    Var(gamma) = sum_c (E_c − gamma B_c)² / (sum_c B_c)², SE(beta) = beta² SE(gamma).
    """
    if clusters is None:
        return beta / math.sqrt(k)
    lx = np.log(np.asarray(x, dtype=np.float64).ravel())
    labels = np.unique(np.asarray(clusters).ravel(), return_inverse=True)[1]
    if labels.size != lx.size:
        raise ConfigError("clusters", f"{labels.size} labels", f"one label per sample ({lx.size})")
    above = lx >= log_threshold if inclusive else lx > log_threshold
    e_c = np.bincount(labels, weights=np.where(above, lx - log_threshold, 0.0))
    b_c = np.bincount(labels, weights=above.astype(np.float64))
    gamma = e_c.sum() / b_c.sum()
    return float(beta**2 * math.sqrt(np.sum((e_c - gamma * b_c) ** 2)) / b_c.sum())


def hill(x: ArrayLike, k: int, *, clusters: ArrayLike | None = None) -> TailFit:
    """Hill estimator on the top ``k`` order statistics.

    With X_(1) >= X_(2) >= ... the estimate is beta = [ (1/k) sum_{i=1..k} log(X_(i)/X_(k+1)) ]^(-1)
    (Hill 1975), threshold x_min = X_(k+1), SE = beta / sqrt(k) (asymptotic normality, i.i.d. samples) or
    cluster-robust when ``clusters`` is given. For exact Pareto samples it is the MLE given the threshold;
    for a law that is only asymptotically a power law, a large k adds bias (choose k << n) and a small k
    adds variance.
    """
    logs = _sorted_logs(x)
    n = logs.size
    k = check_int("k", k, lo=2, hi=n - 1)
    beta = float(_hill_from_logs(logs, np.array([k]))[0])
    return TailFit(
        beta=beta,
        se=_se(beta, k, x, logs[k], clusters, inclusive=False),
        k=k,
        x_min=float(np.exp(logs[k])),
        n=n,
        method="hill",
    )


def hill_curve(x: ArrayLike, ks: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Hill estimates and their i.i.d. SEs for several tail sizes at once (Hill plots): (beta[k], se[k]),
    with the estimator of :func:`hill` (Hill 1975) and SE = beta/sqrt(k)."""
    logs = _sorted_logs(x)
    ks = np.asarray(ks)
    if (
        ks.ndim != 1
        or ks.size == 0
        or not np.issubdtype(ks.dtype, np.integer)
        or ks.min() < 2
        or ks.max() > logs.size - 1
    ):
        raise ConfigError("ks", ks.tolist(), f"a non-empty 1d list of integers in [2, {logs.size - 1}]")
    beta = _hill_from_logs(logs, ks)
    return beta, beta / np.sqrt(ks)


def _ks_distance(u_asc: np.ndarray, beta: float) -> float:
    """KS distance between the empirical law of samples with log(x/x_min) = ``u_asc`` (ascending, >= 0)
    and the Pareto law P(X > x) = (x/x_min)^(-beta)."""
    k = u_asc.size
    fit_cdf = 1.0 - np.exp(-beta * u_asc)
    i = np.arange(1, k + 1)
    return float(max(np.max(i / k - fit_cdf), np.max(fit_cdf - (i - 1) / k)))


def powerlaw_mle(
    x: ArrayLike,
    *,
    x_min: float | None = None,
    min_tail: int = 50,
    max_tail: int | None = None,
    n_candidates: int = 200,
    clusters: ArrayLike | None = None,
) -> TailFit:
    """Continuous power-law MLE (Clauset, Shalizi & Newman 2009, eqs. 3.1 and 3.7).

    For the k samples x_i >= x_min, beta = k / sum_i log(x_i / x_min) and SE = beta / sqrt(k) (Clauset
    eq. 3.2 with alpha = 1 + beta; cluster-robust when ``clusters`` is given, as in :func:`hill`).
    If ``x_min`` is None it is chosen among the order statistics X_(k), k on a geometric grid of
    ``n_candidates`` tail sizes in [min_tail, max_tail] (default max_tail: all samples), as the one
    minimising the KS distance between the tail and the fitted Pareto law (Clauset eq. 3.9). If the
    minimum sits at k = min_tail, or at k = max_tail < n, the search range restricted the answer: a
    warning is issued and ``at_bound`` is True (widen the range or inspect).
    """
    logs = _sorted_logs(x)
    n = logs.size
    if x_min is not None:
        log_min = math.log(check_real("x_min", x_min, lo=0.0, lo_open=True))
        k = int(np.sum(logs >= log_min))
        if k < 2:
            raise ConfigError(
                "x_min", x_min, f"a threshold with at least 2 samples >= it (largest: {np.exp(logs[0]):.4g})"
            )
        u = logs[:k][::-1] - log_min
        beta = k / float(u.sum())
        return TailFit(
            beta=beta,
            se=_se(beta, k, x, log_min, clusters, inclusive=True),
            k=k,
            x_min=float(x_min),
            n=n,
            method="mle",
            ks=_ks_distance(u, beta),
        )
    min_tail = check_int("min_tail", min_tail, lo=10, hi=n)
    max_tail = n if max_tail is None else check_int("max_tail", max_tail, lo=min_tail, hi=n)
    n_candidates = check_int("n_candidates", n_candidates, lo=2)
    cand = np.unique(np.geomspace(min_tail, max_tail, n_candidates).round().astype(np.int64))
    csum = np.cumsum(logs)
    betas = cand / (csum[cand - 1] - cand * logs[cand - 1])  # k / sum_{i<=k} log(X_(i)/X_(k))
    ks_dist = np.array([_ks_distance(logs[:k][::-1] - logs[k - 1], b) for k, b in zip(cand, betas)])
    j = int(np.argmin(ks_dist))
    at_bound = len(cand) > 1 and (j == 0 or (j == len(cand) - 1 and max_tail < n))
    k, beta = int(cand[j]), float(betas[j])
    if at_bound:
        warnings.warn(
            f"powerlaw_mle: the KS-selected x_min sits on a bound of the search range (tail size k = {k}, "
            f"range [{min_tail}, {max_tail}] of n = {n}); beta = {beta:.4g} may be an artefact of the range",
            RuntimeWarning,
            stacklevel=2,
        )
    return TailFit(
        beta=beta,
        se=_se(beta, k, x, logs[k - 1], clusters, inclusive=True),
        k=k,
        x_min=float(np.exp(logs[k - 1])),
        n=n,
        method="mle",
        ks=float(ks_dist[j]),
        at_bound=at_bound,
    )
