"""Batched noisy gradient descent (paper 003, Def. 3.1 / eq. NGD-intro) on many independent chains.

    w_{k+1} = w_k − α ∇_w L̂(w_k, ζ_k),     L̂(w, 0) = L(w),                       (NGD)

with ``ζ_k = η_k`` (i.i.d. noise, the paper's setting) or ``ζ_k = η_k − η_{k−1}`` (anti-correlated
increments; with the additive ``L̂ = L(w) + η·w`` this is anti-PGD of §7.7,
w_{k+1} = w_k − α∇L(w_k) + (ξ_{k+1} − ξ_k) with ξ_{k+1} = −αη_k, i.e. σ_ξ = ασ).
``η_k`` has mean 0 and covariance ``σ² C̃``; only ``w`` is differentiated (``η`` is held fixed). Plain
gradient descent is σ = 0. The loss convention is whatever ``L̂`` says (no ½ is added here); there is no
data sampling in the engine — minibatch noise enters through an ``L̂`` with weights η (with or without
replacement is the sampler's business).

Every chain is advanced by one batched operation per step: gradients are ``torch.func.vmap(grad(L̂))``
over chains, or the gradient of the summed loss when ``L̂`` broadcasts over a leading chain axis
(``vectorised=True``; less per-step overhead: ≈3× faster at 500 chains of d = 2). Arithmetic is float64. Noise is drawn in
blocks of steps from per-chain streams of :mod:`noiseprobe.core.seeding` keyed by (seed, *global* chain
index), so a chain's path does not depend on which other chains run beside it, nor on the block size.
Divergence (:mod:`noiseprobe.core.divergence`): a chain whose iterate becomes non-finite or has some
|w_i| above 10⁸ × its scale, the largest of its start max_i |w0_i|, its first noise-free step
α max_i |∂_i L(w0)| and √α σ (the order of a noisy step's spread), is recorded as diverged (step of divergence kept) and frozen; the
others continue.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch.func import grad, vmap

from noiseprobe.core import divergence
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.seeding import replica_generators
from noiseprobe.core.validation import check_array, check_int, check_real
from noiseprobe.limits.noises import Noise

LossHat = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: cap on the noise numbers held at once (block × chains × m): 2²² float64 = 32 MiB
MAX_BLOCK_ELEMENTS = 1 << 22


class Sampler(Protocol):
    """Draws ``n`` i.i.d. noise vectors of scale ``sigma`` (mean 0, covariance σ² C̃): shape (n, m)."""

    def __call__(self, n: int, generator: np.random.Generator, sigma: float) -> np.ndarray: ...


@dataclass(frozen=True)
class NGDResult:
    """Trajectories of R chains recorded at K steps (step 0 is the initial point).

    ``positions[j, r]`` is w at ``steps[j]`` for chain r (NaN once the chain has diverged);
    ``loss[j, r] = L(w) = L̂(w, 0)`` there. ``mean``/``cov`` are each chain's time averages of w and of
    (w − mean)(w − mean)ᵀ over steps ``average_from … steps[-1]`` (NaN when not requested or diverged).
    """

    steps: np.ndarray  # (K,)
    positions: np.ndarray  # (K, R, d)
    loss: np.ndarray  # (K, R)
    chains: np.ndarray  # (R,) global chain indices
    lr: np.ndarray  # (R,)
    sigma: np.ndarray  # (R,)
    diverged: np.ndarray  # (R,) bool
    diverged_at: np.ndarray  # (R,) first bad step, −1 if none
    mean: np.ndarray  # (R, d)
    cov: np.ndarray  # (R, d, d)

    @property
    def final(self) -> np.ndarray:
        """Positions at the last step, (R, d)."""
        return np.asarray(self.positions[-1])

    def to_frame(self, **labels: float | int | str) -> pd.DataFrame:
        """Tidy frame: one row per chain × recorded step, columns chain, step, lr, sigma, w0…w{d−1},
        loss, diverged, diverged_at, plus constant ``labels`` columns."""
        K, R, d = self.positions.shape
        frame: pd.DataFrame = pd.DataFrame(
            {
                "chain": np.tile(self.chains, K),
                "step": np.repeat(self.steps, R),
                "lr": np.tile(self.lr, K),
                "sigma": np.tile(self.sigma, K),
                **{f"w{i}": self.positions[:, :, i].ravel() for i in range(d)},
                "loss": self.loss.ravel(),
                "diverged": np.tile(self.diverged, K),
                "diverged_at": np.tile(self.diverged_at, K),
            }
        )
        for key, value in labels.items():
            frame[key] = value
        return frame


def standard_sampler(n: int, generator: np.random.Generator, sigma: float, m: int) -> np.ndarray:
    """The default law η ~ N(0, σ² I_m), shape (n, m). (General laws: a :class:`Noise`'s ``sample``.)"""
    return sigma * generator.standard_normal((n, m))


def _per_chain(name: str, value: float | Sequence[float] | np.ndarray, R: int, lo_open: bool) -> np.ndarray:
    """A validated (R,) float array from a number or one value per chain (all ≥ 0, or > 0)."""
    allowed = f"a number or a sequence of {R} numbers (one per chain)"
    if isinstance(value, (bool, np.bool_)) or np.asarray(value).dtype == np.bool_:
        raise ConfigError(name, value, allowed)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(name, value, allowed) from None
    arr = np.full(R, float(arr)) if arr.ndim == 0 else arr
    if arr.shape != (R,):
        raise ConfigError(name, np.asarray(value).tolist(), allowed)
    for v in arr:
        check_real(name, float(v), lo=0.0, lo_open=lo_open)
    return arr


def noisy_gd(
    loss_hat: LossHat,
    w0: np.ndarray | Sequence[float],
    *,
    lr: float | Sequence[float],
    steps: int,
    sigma: float | Sequence[float] = 0.0,
    eta_dim: int | None = None,
    sampler: Sampler | None = None,
    seed: int = 0,
    chains: Sequence[int] | int = 1,
    anti_correlated: bool = False,
    record_every: int = 1,
    record_at: Sequence[int] = (),
    average_from: int | None = None,
    block: int = 512,
    vectorised: bool = False,
) -> NGDResult:
    """Run noisy GD (NGD) on a batch of chains; see the module docstring for the update.

    Args:
        loss_hat: ``L̂(w, η)`` as a torch function of one chain, w: (d,), η: (m,) → scalar; with
            ``vectorised=True`` it must also accept (R, d), (R, m) and return (R,).
        w0: initial point (d,) shared by all chains, or (R, d).
        lr: step size α, a number or one per chain.
        steps: number of iterations.
        sigma: noise scale σ (Cov η = σ² C̃), a number or one per chain; 0 everywhere gives plain GD.
        eta_dim: m; needed when the noise is drawn (default sampler: C̃ = I_m).
        sampler: ``sample(n, generator, sigma) -> (n, m)`` for any law with mean 0 and covariance σ²C̃
            (Bernoulli masks, correlated Gaussians, …); default :func:`standard_sampler` (C̃ = I_m).
        seed, chains: experiment seed and the chains' *global* indices (an int R means range(R)).
        anti_correlated: feed ζ_k = η_k − η_{k−1} instead of η_k (η_{−1} drawn from the same stream).
        record_every: keep positions every this many steps (and at the last step).
        record_at: further steps to keep (e.g. every step of a short initial window).
        average_from: if given, accumulate per-chain time averages of w and its covariance from this step.
        block: steps of noise drawn per chain at once (fewer if block·R·m would exceed
            :data:`MAX_BLOCK_ELEMENTS`; the draws, hence the results, do not depend on it).
        vectorised: ``L̂`` broadcasts over a leading chain axis; use the gradient of the sum.
    """
    chain_ids = _chain_ids(chains)
    R = len(chain_ids)
    steps = check_int("steps", steps, lo=0)
    record_every = check_int("record_every", record_every, lo=1)
    block = check_int("block", block, lo=1)
    lr_arr = _per_chain("lr", lr, R, lo_open=True)
    sigma_arr = _per_chain("sigma", sigma, R, lo_open=False)
    if average_from is not None:
        check_int("average_from", average_from, lo=0, hi=steps)
    w = _start(w0, R)
    noisy = anti_correlated or bool(np.any(sigma_arr > 0))
    m, draw = _noise_source(noisy, eta_dim, sampler, seed, chain_ids, sigma_arr)
    zero_eta = torch.zeros(R, m, dtype=torch.float64)
    grad_fn, loss_fn = _gradient_and_loss(loss_hat, zero_eta, vectorised)
    extra = {check_int("record_at", s, lo=0, hi=steps) for s in record_at}
    path = _Path(sorted(set(range(0, steps + 1, record_every)) | {steps} | extra), w, loss_fn, average_from)
    alpha = torch.from_numpy(lr_arr.copy())[:, None]
    step0 = torch.nan_to_num(alpha[:, 0] * grad_fn(w, zero_eta).abs().amax(1), nan=0.0, posinf=0.0)
    scale = torch.maximum(torch.maximum(w.abs().amax(1), step0), torch.from_numpy(np.sqrt(lr_arr) * sigma_arr))
    limit = torch.from_numpy(divergence.bound(scale.numpy()))[:, None]  # the divergence rule (module docstring)
    block = max(1, min(block, MAX_BLOCK_ELEMENTS // (R * m)))
    noise = itertools.repeat(zero_eta, steps) if draw is None else _increments(draw, steps, block, anti_correlated)
    for k, eta in enumerate(noise):
        path.before_step(k, w)
        w_new = torch.addcmul(w, alpha, grad_fn(w, eta), value=-1.0)
        if not bool((w_new.abs() <= limit).all()):  # NaN compares False: one check for all chains
            w_new = path.freeze_diverged(k + 1, w_new, w, alpha, limit)
        w = w_new
        path.after_step(k + 1, w)
    return path.result(steps, w, chain_ids, lr_arr, sigma_arr)


def _chain_ids(chains: Sequence[int] | int) -> np.ndarray:
    """The chains' global indices: range(R) for an int R, else the given non-negative indices."""
    chain_ids = np.arange(chains) if isinstance(chains, (int, np.integer)) else np.asarray(chains, dtype=np.int64)
    check_int("chains", len(chain_ids), lo=1)
    if chain_ids.ndim != 1 or chain_ids.min() < 0:
        raise ConfigError("chains", chains, "a count >= 1 or a sequence of non-negative global chain indices")
    return chain_ids


def _start(w0: np.ndarray | Sequence[float], R: int) -> torch.Tensor:
    """The (R, d) float64 start, a copy: one point for all chains or one per chain."""
    w = torch.from_numpy(check_array("w0", w0))
    if w.ndim == 1:
        w = w.expand(R, -1)
    if w.ndim != 2 or w.shape[0] != R or w.shape[1] == 0:
        raise ConfigError("w0", list(np.shape(w0)), f"shape (d,) or ({R}, d), d >= 1")
    return w.clone()


def _noise_source(
    noisy: bool,
    eta_dim: int | None,
    sampler: Sampler | None,
    seed: int,
    chain_ids: np.ndarray,
    sigma: np.ndarray,
) -> tuple[int, Callable[[int], torch.Tensor] | None]:
    """m and ``draw(n)``: (n, R, m) noise for the next n steps, one generator call per chain from its own
    stream (seed, global chain index); no ``draw`` without noise."""
    if not noisy:
        return (1 if eta_dim is None else check_int("eta_dim", eta_dim, lo=1)), None
    if eta_dim is None:
        raise ConfigError("eta_dim", eta_dim, "the noise dimension m >= 1 when sigma > 0")
    m = check_int("eta_dim", eta_dim, lo=1)
    sample: Sampler = sampler or (lambda n, g, s: standard_sampler(n, g, s, m))
    gens = replica_generators(seed, chain_ids.tolist())

    def draw(n: int) -> torch.Tensor:
        return torch.from_numpy(
            np.stack(
                [np.asarray(sample(n, g, float(s)), dtype=np.float64).reshape(n, m) for g, s in zip(gens, sigma)],
                axis=1,
            )
        )

    return m, draw


def _increments(
    draw: Callable[[int], torch.Tensor], steps: int, block: int, anti_correlated: bool
) -> Iterator[torch.Tensor]:
    """ζ_k for k = 0 … steps − 1: η_k, or η_k − η_{k−1} (η_{−1} drawn first), drawn ``block`` steps at once."""
    prev = draw(1)[0] if anti_correlated else None
    for k in range(0, steps, block):
        for eta in draw(min(block, steps - k)):
            if prev is None:
                yield eta
            else:
                yield eta - prev
                prev = eta


def _gradient_and_loss(
    loss_hat: LossHat, zero_eta: torch.Tensor, vectorised: bool
) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """Batched ∇_w L̂(w, η) over chains and L(w) = L̂(w, 0): the gradient of the summed loss when L̂
    broadcasts over chains (``vectorised``), else ``vmap(grad(L̂))``."""
    if vectorised:

        def grad_fn(x: torch.Tensor, eta: torch.Tensor, /) -> torch.Tensor:
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                return torch.autograd.grad(loss_hat(x, eta).sum(), x)[0]

        batched_loss = loss_hat
    else:
        grad_fn = vmap(grad(loss_hat))
        batched_loss = vmap(loss_hat)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return batched_loss(x, zero_eta)

    return grad_fn, loss_fn


class _Path:
    """What a run keeps of its chains: positions and losses at the recorded steps, the divergence record
    (alive, step of divergence) and the time averages of w and w wᵀ from ``average_from``."""

    def __init__(
        self,
        record_steps: list[int],
        w: torch.Tensor,
        loss_fn: Callable[[torch.Tensor], torch.Tensor],
        average_from: int | None,
    ) -> None:
        R, d = w.shape
        self.record_steps, self.loss_fn, self.average_from = record_steps, loss_fn, average_from
        self.positions = np.full((len(record_steps), R, d), np.nan)
        self.loss = np.full((len(record_steps), R), np.nan)
        self.alive = torch.ones(R, dtype=torch.bool)
        self.diverged_at = torch.full((R,), -1, dtype=torch.int64)
        self.acc1 = torch.zeros(R, d, dtype=torch.float64)
        self.acc2 = torch.zeros(R, d, d, dtype=torch.float64)
        self.n_avg, self.j_next = 0, 1
        self._record(0, w)

    def _record(self, j: int, w: torch.Tensor) -> None:
        alive = self.alive.numpy()
        self.positions[j, alive] = w.numpy()[alive]
        self.loss[j, alive] = self.loss_fn(w).detach().numpy()[alive]

    def before_step(self, k: int, w: torch.Tensor) -> None:
        """Add the iterate w_k to the time averages once k ≥ ``average_from``."""
        if self.average_from is not None and k >= self.average_from:
            self.acc1 += w
            self.acc2 += w[:, :, None] * w[:, None, :]
            self.n_avg += 1

    def after_step(self, k: int, w: torch.Tensor) -> None:
        """Record w_k if k is a recorded step."""
        if self.j_next < len(self.record_steps) and k == self.record_steps[self.j_next]:
            self._record(self.j_next, w)
            self.j_next += 1

    def freeze_diverged(
        self, k: int, w_new: torch.Tensor, w: torch.Tensor, alpha: torch.Tensor, limit: torch.Tensor
    ) -> torch.Tensor:
        """Mark the live chains of ``w_new`` past ``limit`` (or non-finite) as diverged at step k and freeze
        them (α = 0, w kept); return the next iterate."""
        bad = self.alive & ~(w_new.abs() <= limit).all(1)
        self.diverged_at[bad] = k
        self.alive &= ~bad
        alpha[bad] = 0.0
        return torch.where(self.alive[:, None], w_new, w)

    def result(
        self, steps: int, w: torch.Tensor, chain_ids: np.ndarray, lr: np.ndarray, sigma: np.ndarray
    ) -> NGDResult:
        self.before_step(steps, w)  # the time averages include the last iterate
        dead = ~self.alive.numpy()
        R, d = w.shape
        if self.n_avg:
            mean = (self.acc1 / self.n_avg).numpy()
            cov = (self.acc2 / self.n_avg).numpy() - mean[:, :, None] * mean[:, None, :]
            mean[dead], cov[dead] = np.nan, np.nan
        else:
            mean, cov = np.full((R, d), np.nan), np.full((R, d, d), np.nan)
        return NGDResult(
            steps=np.asarray(self.record_steps),
            positions=self.positions,
            loss=self.loss,
            chains=chain_ids,
            lr=lr,
            sigma=sigma,
            diverged=dead,
            diverged_at=self.diverged_at.numpy(),
            mean=mean,
            cov=cov,
        )


def simulate_noise(
    noise: Noise,
    w0: np.ndarray | Sequence[float],
    *,
    lr: float | Sequence[float],
    steps: int,
    sigma: float | Sequence[float] | None = None,
    **kwargs: Any,
) -> NGDResult:
    """:func:`noisy_gd` for a :class:`~noiseprobe.limits.noises.Noise` (its L̂, m and sampler; its L̂
    broadcasts over chains, so the gradient of the summed loss is used). ``sigma=None``: the noise's own σ."""
    sigma = noise.sigma if sigma is None else sigma
    if sigma is None:
        raise ConfigError("sigma", sigma, f"a noise level >= 0 ({noise.name} has no default level)")
    w0 = check_array("w0", w0, last_dim=noise.d)
    return noisy_gd(
        noise.loss_hat,
        w0,
        lr=lr,
        steps=steps,
        sigma=sigma,
        eta_dim=noise.eta_dim,
        sampler=noise.sample,
        vectorised=True,
        **kwargs,
    )
