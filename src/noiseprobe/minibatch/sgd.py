"""Vectorised minibatch SGD on linear regression (paper 002, Defs. 2-3, eq. 1 and eq. 98).

Many independent chains advance in a numba kernel (:mod:`noiseprobe.minibatch.sgd_kernel`: 64 chains per
task as SIMD lanes, tasks in parallel); each chain draws its noise from its own counter-based streams
(``noiseprobe.core.streams``) keyed by (seed, GLOBAL chain index), so a chain's path depends neither on
how chains are chunked nor on the thread count.

Loss convention (the paper's): ``ℓ_i = ½ (wᵀx_i − y_i)²`` plus ``½ wᵀΓw``, so the Hessian is ``A + B + Γ``.
Update (eq. 1, heavy-ball form, no dampening)::

    ĝ_t = (1/S) Σ_{i∈B_t} ∇ℓ_i(w_{t−1}) + Γ w_{t−1};   m_t = μ m_{t−1} + ĝ_t;   w_t = w_{t−1} − Λ m_t

Data: ``x = x̃ + e`` with ``x̃ ~ N(0, A)``, ``e ~ N(0, B)`` (input noise), ``y = uᵀx̃ + ε`` with
``E ε = 0, E ε² = σ²`` (Gaussian or Rademacher label noise). Either fresh samples every step (N → ∞,
"online") or a fixed data set of N samples drawn with replacement (Def. 2) or without (Def. 3, a uniform
S-subset each step).

For online data with Gaussian labels and S >= D an exact-in-law sampler (the default when D = 1 or
S >= 2D) draws D(D+3)/2 numbers per step instead of S(D+1): with K = A + B, ``x̃ = AK⁻¹x + ζ``
(ζ independent of x), so the residual is ``xᵀ(w − K⁻¹Au) − n`` with ``n ~ N(0, σ_eff²)``, ``σ_eff² = σ² + uᵀ(A − AK⁻¹A)u``; then
``(1/S)Σxxᵀ = M Mᵀ/S``, ``M = R_K L`` (R_K R_Kᵀ = K, L the Bartlett factor of a Wishart(S, I) matrix) and
``(1/S)Σ x n | M ~ N(0, σ_eff² MMᵀ/S²)``. In 1d this is ``h = kχ²_S/S``, ``ξ | h ~ N(0, σ_eff²h/S)``
(docs/theory/minibatch_noise.md §14).

Divergence (:mod:`noiseprobe.core.divergence`, tested after every step): a chain has diverged when w is
non-finite or some |w_i − w*_i| exceeds :func:`divergence_limit` = 10¹⁵ × its scale, the largest of its
start's distance from w* (plus ``init_scale``), |u − w*| and √λ·s_y (s_y: σ online, the rms residual at w*
for a fixed data set; √λ s_y is the order of the stationary spread). The factor is
:data:`~noiseprobe.core.divergence.HEAVY_TAIL_FACTOR`: the stationary laws here have power-law tails. The
step is recorded per chain (``diverged_at``); a diverged chain is NaN in every per-chain array and left out
of every statistic; the others continue. The statistics refuse (``NumericalError``) when every chain
diverged. The learning rate must be positive (a scalar, one per chain, or a PSD matrix Λ): ``ConfigError``
otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

import numpy as np

from noiseprobe.core import divergence
from noiseprobe.core.errors import ConfigError, NumericalError
from noiseprobe.core.linalg import psd_factor
from noiseprobe.core.seeding import ReplicaStreams
from noiseprobe.core.stats import standard_error
from noiseprobe.core.streams import stream_keys
from noiseprobe.core.validation import check_choice, check_int, check_lr, check_matrix, check_real, check_vector
from noiseprobe.minibatch import sgd_kernel as _k


@dataclass(eq=False, init=False)
class LinearProblem:
    """Linear regression with label noise σ, input noise covariance ``B`` and weight decay ``Gamma``.

    ``A``: input covariance (D, D) or a scalar for D = 1. ``u``: teacher (a length-D sequence or array;
    default 0). ``B``, ``Gamma``: (D, D) or a scalar (×I); ``Gamma`` may be indefinite (negative weight
    decay). ``X``, ``y``: a fixed training set (N, D), (N,); None = online. The stored fields are the
    validated float64 arrays.
    """

    A: np.ndarray
    u: np.ndarray
    sigma: float
    B: np.ndarray
    Gamma: np.ndarray
    label_noise: Literal["gaussian", "rademacher"]
    X: np.ndarray | None
    y: np.ndarray | None
    _chol: tuple[np.ndarray, np.ndarray] = field(init=False, repr=False)

    def __init__(
        self,
        A: float | np.ndarray,
        u: np.ndarray | Sequence[float] | None = None,
        sigma: float = 0.0,
        B: float | np.ndarray | None = None,
        Gamma: float | np.ndarray | None = None,
        label_noise: Literal["gaussian", "rademacher"] = "gaussian",
        X: np.ndarray | None = None,
        y: np.ndarray | None = None,
    ) -> None:
        D = 1 if np.ndim(A) == 0 else np.shape(A)[0]
        self.A = check_matrix("A", A, D, psd=True)
        self.u = np.zeros(D) if u is None else check_vector("u", u, D)
        self.sigma = check_real("sigma", sigma, lo=0.0)
        self.B = np.zeros((D, D)) if B is None else check_matrix("B", B, D, psd=True)
        self.Gamma = np.zeros((D, D)) if Gamma is None else check_matrix("Gamma", Gamma, D)
        self.label_noise = label_noise
        check_choice("label_noise", label_noise, ("gaussian", "rademacher"))
        if (X is None) != (y is None):
            raise ConfigError("X, y", "only one given", "both or neither")
        self.X = self.y = None
        if X is not None:
            self.X = np.asarray(X, dtype=np.float64)
            self.y = np.asarray(y, dtype=np.float64).reshape(-1)
            if self.X.ndim != 2 or self.X.shape[1] != D or self.y.shape != (self.X.shape[0],):
                raise ConfigError("X, y", (np.shape(self.X), np.shape(self.y)), f"shapes (N, {D}) and (N,)")
        self._chol = (psd_factor(self.A), psd_factor(self.B))

    # -- derived quantities ---------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.A.shape[0])

    @property
    def n_samples(self) -> int | None:
        return None if self.X is None else self.X.shape[0]

    @property
    def hessian(self) -> np.ndarray:
        """Hessian of the training loss: ``A + B + Γ`` online, ``XᵀX/N + Γ`` for a fixed data set."""
        if self.X is None:
            return np.asarray(self.A + self.B + self.Gamma)
        return np.asarray(self.X.T @ self.X / self.X.shape[0] + self.Gamma)

    @property
    def center(self) -> np.ndarray:
        """The minimiser of the training loss (minimum-norm for a singular Hessian); Σ is measured about it."""
        if self.X is None:
            return np.asarray(np.linalg.lstsq(self.hessian, self.A @ self.u, rcond=None)[0])
        return np.asarray(np.linalg.lstsq(self.hessian, self.X.T @ self.y / self.X.shape[0], rcond=None)[0])

    def train_loss(self, w: np.ndarray) -> np.ndarray:
        """L_train(w) including label/input noise and ½wᵀΓw; ``w`` (..., D)."""
        if self.X is None:
            d = w - self.u
            online: np.ndarray = 0.5 * (
                np.einsum("...i,ij,...j->...", d, self.A, d)
                + np.einsum("...i,ij,...j->...", w, self.B, w)
                + self.sigma**2
                + np.einsum("...i,ij,...j->...", w, self.Gamma, w)
            )
            return online
        r = w @ self.X.T - self.y
        out: np.ndarray = 0.5 * np.mean(r**2, axis=-1) + 0.5 * np.einsum("...i,ij,...j->...", w, self.Gamma, w)
        return out

    def test_loss(self, w: np.ndarray) -> np.ndarray:
        """L_test(w) = ½ (w − u)ᵀ A (w − u): population loss without label noise."""
        d = w - self.u
        out: np.ndarray = 0.5 * np.einsum("...i,ij,...j->...", d, self.A, d)
        return out

    def with_data(self, n: int, seed: int, stream: int = 7) -> LinearProblem:
        """The same model with a fixed data set of ``n`` samples drawn from ``seed`` (one shared set)."""
        n = check_int("n", n, lo=1)
        g = ReplicaStreams(seed, [0], stream).gens[0]
        xt = g.standard_normal((n, self.dim)) @ self._chol[0].T
        x = xt + g.standard_normal((n, self.dim)) @ self._chol[1].T
        eps = self._labels(g.standard_normal(n))
        return LinearProblem(self.A, self.u, self.sigma, self.B, self.Gamma, self.label_noise, x, xt @ self.u + eps)

    def _labels(self, z: np.ndarray) -> np.ndarray:
        """Label noise from standard normals z: σz (Gaussian) or σ·sign(z) (Rademacher)."""
        return self.sigma * (z if self.label_noise == "gaussian" else np.where(z < 0, -1.0, 1.0))


@dataclass(eq=False)
class SGDRun:
    """Per-chain statistics of a stationary SGD run. Arrays have the chain axis first.

    ``mean[r]`` and ``second_moment[r]`` are time averages over the measured steps of ``w − center`` and
    ``(w − center)(w − center)ᵀ``; ``noise_cov[r]`` the time average of ``η ηᵀ`` with
    ``η = ĝ − ∇L_train(w)`` (docs/theory/minibatch_noise.md §16 trap 14), when requested. ``snapshots`` holds raw ``w`` every
    ``snapshot_every`` measured steps: (chains, n_snapshots, D). Diverged chains (``diverged``, with the
    step in ``diverged_at``, −1 for none) are NaN in all of these; the statistics use the others only and
    raise ``NumericalError`` when none is left.
    """

    problem: LinearProblem
    center: np.ndarray
    mean: np.ndarray
    second_moment: np.ndarray
    noise_cov: np.ndarray | None
    snapshots: np.ndarray | None
    diverged: np.ndarray
    diverged_at: np.ndarray
    n_measured: int

    @property
    def ok(self) -> np.ndarray:
        """Chains that did not diverge."""
        return ~self.diverged

    def _kept(self, per_chain: np.ndarray) -> np.ndarray:
        """``per_chain`` of the surviving chains; ``NumericalError`` when every chain diverged."""
        if not self.ok.any():
            first = int(self.diverged_at[self.diverged].min())
            raise NumericalError(
                f"every one of the {self.diverged.size} chains diverged (the first at step {first}): "
                "no stationary statistic; lower the learning rate"
            )
        return np.asarray(per_chain[self.ok])

    def sigma(self) -> np.ndarray:
        """Σ about the training minimiser: mean over surviving chains of the per-chain second moments."""
        return np.asarray(self._kept(self.second_moment).mean(axis=0))

    def sigma_se(self) -> np.ndarray | float:
        """Entry-wise standard error of :meth:`sigma` across independent surviving chains (inf for one chain)."""
        return standard_error(self._kept(self.second_moment))

    def covariance(self) -> np.ndarray:
        """Σ about the pooled mean (use when the stationary mean is not the minimiser)."""
        m = self._kept(self.mean)
        return self.sigma() - np.outer(m.mean(0), m.mean(0))

    def _quad(self, Q: np.ndarray, p: np.ndarray, r: float) -> np.ndarray:
        """Per-chain time average of ½ (w − p)ᵀQ(w − p) + r, from the per-chain moments (exact)."""
        d = self.center - p
        return np.asarray(
            0.5 * np.einsum("ij,rji->r", Q, self.second_moment) + self.mean @ (Q @ d) + 0.5 * d @ Q @ d + r
        )

    def train_loss(self) -> np.ndarray:
        """Per-chain time-averaged L_train (population for online data, empirical for a fixed set)."""
        pb = self.problem
        c = pb.center
        return self._quad(pb.hessian, c, float(pb.train_loss(c)))

    def test_loss(self) -> np.ndarray:
        """Per-chain time-averaged L_test = ½ (w − u)ᵀA(w − u)."""
        return self._quad(self.problem.A, self.problem.u, 0.0)

    def stat(self, per_chain: np.ndarray) -> tuple[float, float]:
        """(mean, standard error) of a per-chain statistic over surviving chains."""
        v = self._kept(per_chain)
        return float(v.mean()), float(standard_error(v))


def simulate_sgd(
    problem: LinearProblem,
    *,
    lr: float | np.ndarray,
    batch_size: int,
    steps: int,
    burn_in: int,
    chains: int,
    seed: int,
    first_chain: int = 0,
    momentum: float = 0.0,
    replacement: bool = True,
    measure_every: int = 1,
    snapshot_every: int | None = None,
    measure_noise: bool = False,
    w0: np.ndarray | None = None,
    init_scale: float = 0.1,
    exact_law: bool | None = None,
) -> SGDRun:
    """Run ``chains`` independent SGD chains (global indices ``first_chain …``) and measure them.

    ``lr``: scalar > 0, per-chain scalars (chains,), or a symmetric PSD (D, D) matrix Λ. ``steps`` measured
    steps follow ``burn_in`` discarded ones; statistics use every ``measure_every``-th step. ``replacement``
    selects Def. 2 (True) or Def. 3 (False) for a fixed data set (no effect online). ``w0``: start (D,) or
    (chains, D); default ``center + init_scale·z``, z ~ N(0, I) per chain (perturbed, since w = u is a fixed
    point without label noise). ``exact_law``: use the exact-in-law (Bartlett) sampler; it applies to online
    data with Gaussian labels and S >= D, and is the default there when D = 1 or S >= 2D (where it draws
    fewer numbers). The chains run in a numba kernel (:mod:`noiseprobe.minibatch.sgd_kernel`), parallel over
    chains; a chain's numbers depend only on (seed, global chain index).
    """
    pb = problem
    D = pb.dim
    chains = check_int("chains", chains, lo=1)
    seed = check_int("seed", seed, lo=0)
    first_chain = check_int("first_chain", first_chain, lo=0)
    S = check_int("batch_size", batch_size, lo=1)
    steps = check_int("steps", steps, lo=1)
    burn_in = check_int("burn_in", burn_in, lo=0)
    measure_every = check_int("measure_every", measure_every, lo=1)
    mu = check_real("momentum", momentum, lo=0.0, hi=1.0, hi_open=True)
    check_choice("replacement", replacement, (True, False))
    init_scale = check_real("init_scale", init_scale, lo=0.0)
    if pb.X is not None and not replacement and S > pb.X.shape[0]:
        raise ConfigError("batch_size", S, f"<= N = {pb.X.shape[0]} when sampling without replacement")
    if snapshot_every is not None:
        snapshot_every = check_int("snapshot_every", snapshot_every, lo=1)
    lr_chain, Lam = _chain_lrs(lr, D, chains)
    sampler = _sampler(pb, S, replacement, exact_law)
    start = _start(pb.center if w0 is None else w0, chains, D)
    return _run_chains(
        pb,
        sampler,
        stream_keys(seed, first_chain, chains, 3),
        start,
        init_scale if w0 is None else 0.0,
        lr_chain,
        Lam,
        mu,
        S,
        burn_in,
        steps,
        measure_every,
        snapshot_every,
        measure_noise,
    )


def _run_chains(
    pb: LinearProblem,
    sampler: tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, int],
    keys: np.ndarray,
    start: np.ndarray,
    init: float,
    lr_chain: np.ndarray,
    Lam: np.ndarray | None,
    mu: float,
    S: int,
    burn_in: int,
    steps: int,
    measure_every: int,
    snapshot_every: int | None,
    measure_noise: bool,
) -> SGDRun:
    """The accumulators, the kernel call (:func:`~noiseprobe.minibatch.sgd_kernel.run_chains`: flat arrays,
    one per argument) and the :class:`SGDRun` of :func:`simulate_sgd`, whose arguments are checked."""
    mode, X, y, P1, P2, vec, sig, n_in = sampler
    chains, D = start.shape
    center, zero = pb.center, np.zeros((D, D))
    n_meas = steps // measure_every
    n_snap = n_meas // snapshot_every if snapshot_every else 0
    s1, s2 = np.zeros((chains, D)), np.zeros((chains, D, D))
    s_eta = np.zeros((chains if measure_noise else 0, D, D))
    snaps = np.full((chains, n_snap, D), np.nan)
    div_at = np.full(chains, -1, dtype=np.int64)
    _k.run_chains(
        mode,
        keys,
        start,
        init,
        lr_chain,
        zero if Lam is None else Lam,
        Lam is not None,
        mu,
        pb.Gamma,
        center,
        pb.hessian,
        P1,
        P2,
        vec,
        sig,
        pb.label_noise == "rademacher",
        n_in,
        S,
        X,
        y,
        burn_in + steps,
        burn_in,
        measure_every,
        snapshot_every or 0,
        divergence_limit(pb, start - center, init, lr_chain, Lam),
        s1,
        s2,
        s_eta,
        snaps,
        div_at,
    )
    diverged = div_at >= 0
    mean, sm = s1 / n_meas, _symmetric(s2) / n_meas
    eta_cov = _symmetric(s_eta) / n_meas if measure_noise else None
    for arr in (mean, sm, eta_cov, snaps if snapshot_every else None):
        if arr is not None:
            arr[diverged] = np.nan
    return SGDRun(pb, center, mean, sm, eta_cov, snaps if snapshot_every else None, diverged, div_at, n_meas)


def _chain_lrs(lr: float | np.ndarray, D: int, chains: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-chain learning rates, or zeros and the matrix Λ (PSD, non-zero) when ``lr`` is a (D, D) matrix."""
    lam, lr_scalar = check_lr(lr, D, replicas=chains)
    if lr_scalar is not None:  # one learning rate for all chains
        return np.full(chains, lr_scalar), None
    if lam.ndim == 1:  # one per chain
        return lam, None
    Lam = check_matrix("lr", lam, D, psd=True)  # a matrix Λ: positive semi-definite and non-zero
    if not np.any(Lam):
        raise ConfigError("lr", "the zero matrix", "a non-zero positive semi-definite matrix")
    return np.zeros(chains), Lam


def _start(w0: np.ndarray, chains: int, D: int) -> np.ndarray:
    """The (chains, D) start: ``w0`` of shape (D,) or (chains, D), finite."""
    w0_arr = np.asarray(w0, dtype=np.float64)
    if w0_arr.shape not in ((D,), (chains, D)) or not np.isfinite(w0_arr).all():
        raise ConfigError("w0", f"array of shape {w0_arr.shape}", f"finite, of shape ({D},) or ({chains}, {D})")
    return np.asarray(np.broadcast_to(w0_arr, (chains, D)).copy())


def _sampler(
    pb: LinearProblem, S: int, replacement: bool, exact_law: bool | None
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, int]:
    """The kernel's sampling mode and its inputs (data X, y; factors P1, P2; label vector; label-noise scale;
    number of input draws): the exact-in-law sampler where it applies and is asked for (or, by default,
    draws fewer numbers), else online draws, else minibatches of the fixed data set."""
    D = pb.dim
    zero, none_x = np.zeros((D, D)), np.zeros((0, D))
    exact_ok = pb.X is None and pb.label_noise == "gaussian" and S >= D
    exact = exact_law
    if exact is None:  # fewer draws than explicit minibatches
        exact = exact_ok and (D == 1 or S >= 2 * D)
    elif exact and not exact_ok:
        raise ConfigError("exact_law", exact, "True only for online data, Gaussian labels and batch_size >= D")
    X, y, P1, P2, vec, sig, n_in = none_x, np.zeros(0), zero, zero, np.zeros(D), 0.0, D
    if exact:  # x̃ = AK⁻¹x + ζ: labels see x only through w_lab = K⁻¹Au, the rest is label noise of σ_eff
        K = pb.A + pb.B
        mode, P1 = _k.EXACT, psd_factor(K)
        P2 = P1 / S
        vec = np.linalg.lstsq(K, pb.A @ pb.u, rcond=None)[0]
        sig = float(np.sqrt(pb.sigma**2 + max(0.0, float(pb.u @ (pb.A - pb.A @ np.linalg.pinv(K) @ pb.A) @ pb.u))))
    elif pb.X is None:
        mode, (P1, P2), vec, sig = _k.ONLINE, pb._chol, pb.u, pb.sigma
        n_in = 2 * D if np.any(pb.B) else D  # draw input noise only when B ≠ 0
    else:
        mode, X, y = (_k.WITH if replacement else _k.WITHOUT), pb.X, cast(np.ndarray, pb.y)
    return mode, X, y, P1, P2, vec, sig, n_in


def divergence_limit(
    problem: LinearProblem, offset: np.ndarray, init_scale: float, lr: np.ndarray, Lam: np.ndarray | None
) -> np.ndarray:
    """Per chain, the bound on max_i |w_i − w*_i| beyond which it has diverged (module docstring):
    HEAVY_TAIL_FACTOR × max(|start − w*|_∞ + init_scale, |u − w*|_∞, √λ s_y). ``offset`` (chains, D):
    start − w*; ``lr`` per chain, or the matrix ``Lam`` (its largest eigenvalue)."""
    pb, c = problem, problem.center
    if pb.X is None:
        s_y = pb.sigma
    else:
        assert pb.y is not None
        s_y = float(np.sqrt(np.mean((pb.X @ c - pb.y) ** 2)))
    lam = np.full(len(offset), float(np.linalg.eigvalsh(Lam)[-1])) if Lam is not None else lr
    scale = np.maximum.reduce(
        [np.abs(offset).max(1) + init_scale, np.full(len(offset), np.abs(pb.u - c).max()), np.sqrt(lam) * s_y]
    )
    return divergence.bound(scale, divergence.HEAVY_TAIL_FACTOR)


def _symmetric(lower: np.ndarray) -> np.ndarray:
    """Full symmetric matrices (..., D, D) from their lower triangles."""
    return np.asarray(lower + np.tril(lower, -1).swapaxes(-1, -2))
