"""The monitor's metrics: each a function of a measurement :class:`Context` returning named values.

Quantities compute, instruments draw (as in Cockpit): a metric reads what it needs from the context,
which computes each shared ingredient (per-sample gradients, their Gram matrix, the noise scale) once per
measurement. N is the number of samples in the measured batch, S the batch size of the update
(``effective_batch_size``, default N), g_i the gradient of sample i's loss, ḡ their mean.

========================  ===========================================================================
``tr_sigma`` (+ ``_se``)  unbiased tr Σ = Σ_i |g_i − ḡ|²/(N − 1), jackknife SE (:mod:`.gns`)
``g_sq`` (+ ``_se``)      unbiased |G|² = |ḡ|² − tr Σ/N (McCandlish et al. 2018, App. A)
``b_simple``              tr Σ / |G|² with ``b_simple_lo``/``b_simple_hi``: 95 % Fieller–jackknife
``temperature``           Σ_g lr_g tr Σ_g / S over the optimizer's parameter groups g (= lr·tr C for
                          sampling with replacement, C = Σ/S; paper 002, eq. 2)
``top_k_c``               ``c_eig_1`` … ``c_eig_k``: the k largest eigenvalues of C = M/S,
                          M = (1/N) Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ (paper 002, Prop. 1)
``sharpness``             λ_max of the Hessian H of the batch's mean loss by block Lanczos, warm-started
                          from the previous measurement's vector (Cohen et al. 2021); with Adam the
                          preconditioned sharpness λ_max(P⁻¹H) (Cohen et al. 2022); with per-group
                          learning rates λ_max(Λ^½HΛ^½)/lr₀ (lr₀: the first group's). ``eos_ratio``:
                          curvature over the optimizer's stability threshold, 1 at the edge of
                          stability (:mod:`.stability`); ``sharpness_hvps``: products this call used
``batch_sharpness``       g_Bᵀ H_B g_B / |g_B|² of the measured batch along its own gradient (one
                          Hessian-vector product; Andreyev & Beneventano, arXiv 2412.20553), with its
                          running mean and SE over recent measurements (:mod:`.stochastic_stability`);
                          NaN with ``batch_sharpness_reason`` on a gradient-accumulation micro-batch
``eoss_ratio``            (s⊙g_B)ᵀ H_B (s⊙g_B) / (g_Bᵀ(s⊙g_B)), s the step scale of ``eos_ratio``
                          (= lr·batch_sharpness/2 for plain SGD), ``eoss_reason``
``top_k_h``               ``h_eig_1`` … ``h_eig_k`` (Lanczos, warm-started) and ``overlap_ch``: the
                          overlap ‖U_Cᵀ U_H‖_F²/k of the top-k eigenspaces of C and H (1: equal)
``b_noise``               B_noise = tr(HΣ)/(GᵀHG) (McCandlish et al. eq. 2.6) with the unbiased
                          denominator ḡᵀHḡ − tr(HΣ)/N; tr(HΣ) = tr(J_c H J_cᵀ)/(N−1) by Hutchinson
                          probes J_cᵀr (r Rademacher in sample space; ``tr_h_sigma_se`` from the probes)
``tail_index``            tail index of the per-sample gradient projections (g_i − ḡ)·v on the top
                          ``TAIL_DIRECTIONS`` eigenvectors v of C *from the previous measurement's batch*
                          (so directions and samples are independent), each standardised, pooled over
                          recent measurements (the last ``TAIL_POOL`` values; NaN until ≥ 1000):
                          ``tail_hill`` (top 10 %) and ``tail_mle`` (Clauset et al. 2009) with SEs, and
                          ``tail_normal_p``, D'Agostino–Pearson's test of Gaussianity (paper 002 §5)
``fluctuation``           paper 002's stationary loss fluctuation on the top-k Hessian directions (Thm 1,
                          eq. 3, Σ_k by :func:`~noiseprobe.minibatch.fluctuation.solve_fluctuation`):
                          ``fluct_excess_pred`` ½ tr(H_kΣ_k), ``fluct_loss_sd_pred`` √(½ tr((H_kΣ_k)²)),
                          ``fluct_batch_loss_var_pred`` = that squared + Var_i ℓ_i/S, beside
                          ``fluct_batch_loss_var``: the variance of the ``loss=`` values passed to
                          ``step`` since the last measurement; ``fluct_reason`` (:mod:`.predictions`)
``label_noise_reg``       paper 003, label noise σ (:func:`.predictions.declare_label_noise`):
                          ``reg_label`` R = tr Ḡ/(4S) (Gauss–Newton trace = tr∇²L/(4S) on Γ;
                          Theorem B, reference §7.5), measured ``reg_label_rate`` = ΔR/Δstep on a fixed
                          probe batch beside −σ²(lr/(1−μ))²|P∇R|² (``_rate_pred``, ``_pred_interval``)
``dropout_reg``           paper 003, dropout modules: ``reg_dropout`` Σ_m σ_m² Reg_m, Reg_m = ½ Σ h²∂²L/∂h²
                          at the dropout inputs (Theorem A), measured rate beside −lr/(1−μ)|P∇E|²
``niw_decay``             with NINs declared (:func:`.predictions.watch_nins`), per NIN i: measured
                          ``nin{i}_rate`` = −Δ ln‖W_NI‖/Δstep beside paper 001's eq. (2), corrected
                          (``nin{i}_rate_pred``, ``_pred_interval``) and ``nin{i}_phase``
``two_batch``             DDP only: McCandlish et al.'s App. A estimator from per-rank gradient norms
                          taken before the all-reduce (:mod:`.ddp`)
========================  ===========================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.monitor import ddp
from noiseprobe.monitor.gns import NoiseScale, noise_scale, noise_scale_from_sums, two_batch
from noiseprobe.monitor.predictions import dropout_reg, fluctuation, label_noise_reg, niw_decay
from noiseprobe.monitor.stability import step_scale
from noiseprobe.monitor.stochastic_stability import batch_sharpness_metric, eoss_ratio_metric
from noiseprobe.probes.linalg import Eigenpairs, lanczos
from noiseprobe.probes.operators import Hessian, ParamOperator
from noiseprobe.probes.persample import PerSampleGradients, per_sample_gradients

#: Lanczos stops at this relative accuracy of the eigenvalues (Cohen et al. track sharpness to ~1 %)
LANCZOS_TOL = 1e-2
#: Krylov dimensions before a cold start may stop (the first call; warm starts use lanczos's default k + 7)
COLD_MIN_DIM = 10
#: Rademacher probes for tr(HΣ) (one batched block of Hessian-vector products)
B_NOISE_PROBES = 16
#: noise directions whose per-sample projections feed the tail index, and the pool it is fitted on
TAIL_DIRECTIONS, TAIL_POOL, TAIL_MIN = 3, 4000, 1000


class _Scaled(ParamOperator):
    """D^½ A D^½ for a diagonal scale d = D^½ (flat), e.g. per-parameter learning rates."""

    def __init__(self, a: ParamOperator, d: Tensor) -> None:
        super().__init__(a.names, a.shapes, a.device, a.torch_dtype)
        self.a, self.d = a, d.to(device=a.device, dtype=a.torch_dtype).reshape(-1, 1)

    def _mm(self, v: Tensor) -> Tensor:
        return self.d * self.a.mv(self.d * v)


class Context:
    """One measurement: the batch, the model and optimizer, and the ingredients metrics share."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Tensor],
        inputs: Any,
        targets: Any,
        forward: Callable[[nn.Module, Any], Tensor] | None,
        optimizer: torch.optim.Optimizer | None,
        batch_size: int | None,
        top_k: int,
        state: dict[str, Any],
        group: Any = None,
        hook: ddp.GradNormHook | None = None,
    ) -> None:
        self.model, self.loss_fn, self.inputs, self.targets = model, loss_fn, inputs, targets
        self.forward, self.optimizer, self.top_k, self.state = forward, optimizer, top_k, state
        self._batch_size, self.group, self.hook = batch_size, group, hook

    @cached_property
    def grads(self) -> PerSampleGradients:
        return per_sample_gradients(self.model, self.loss_fn, self.inputs, self.targets, forward=self.forward)

    @cached_property
    def hessian(self) -> Hessian:
        return Hessian(self.model, self.loss_fn, self.inputs, self.targets, forward=self.forward)

    def top_eigen(self, op: ParamOperator, k: int, key: str) -> Eigenpairs:
        """Top-k eigenpairs of ``op`` by Lanczos, warm-started from this monitor's previous call under ``key``."""
        warm = self.state.get(key)
        if warm is not None and warm.eigenvectors.shape[0] != op.num_params:
            warm = None
        pairs = lanczos(op, k, warm_start=warm, tol=LANCZOS_TOL, min_dim=None if warm is not None else k + COLD_MIN_DIM)
        self.state[key] = pairs
        return pairs

    @cached_property
    def n(self) -> int:
        """Samples in the measured batch (over all ranks under data parallelism)."""
        if self.group is None:
            return self.grads.n
        return int(ddp.all_sum(torch.tensor([self.grads.n]), self.group))

    @cached_property
    def grad_sum(self) -> Tensor:
        """s = Σ_i g_i over the batch (all ranks), flat."""
        s = self.grads.vjp(torch.ones(self.grads.n, dtype=self.grads.dtype, device=self.device))
        return s if self.group is None else ddp.all_sum(s, self.group)

    @property
    def device(self) -> torch.device:
        return next((p.device for p in self.model.parameters()), torch.device("cpu"))

    @property
    def batch_size(self) -> int:
        return self._batch_size if self._batch_size is not None else self.n

    @cached_property
    def gram(self) -> np.ndarray:
        return self.grads.gram().double().cpu().numpy()

    @cached_property
    def noise(self) -> NoiseScale:
        if self.n < 3:
            raise ConfigError("batch", f"{self.n} samples", "at least 3 samples to measure gradient noise")
        if self.group is None:
            return noise_scale(self.gram)
        s = self.grad_sum
        d = ddp.all_cat(self.grads.sq_norms().double(), self.group)
        r = ddp.all_cat(self.grads.jvp(s).double(), self.group)
        return noise_scale_from_sums(d.cpu().numpy(), r.cpu().numpy(), float(s.double() @ s.double()))

    @cached_property
    def sigma_diagonal(self) -> Tensor:
        """diag Σ per parameter, unbiased: (N/(N−1)) [(1/N) Σ_i g_i² − ḡ²] (flat, trainable order)."""
        n, mean = self.n, self.grad_sum / self.n
        sq = self.grads.sq_sum()
        if self.group is not None:
            sq = ddp.all_sum(sq, self.group)
        return (sq / n - mean**2) * (n / (n - 1))

    def group_slices(self) -> list[tuple[float, list[tuple[int, int]]]]:
        """(lr, flat index ranges) per optimizer parameter group, in the flat trainable order."""
        if self.optimizer is None:
            return []
        params = [p for p in self.model.parameters() if p.requires_grad]
        start, pos = 0, {}
        for p in params:
            pos[id(p)] = (start, start + p.numel())
            start += p.numel()
        out = []
        for group in self.optimizer.param_groups:
            lr = float(group["lr"])
            out.append((lr, [pos[id(p)] for p in group["params"] if id(p) in pos]))
        return out


def _tr_sigma(ctx: Context) -> dict[str, float]:
    return {"tr_sigma": ctx.noise.tr_sigma, "tr_sigma_se": ctx.noise.tr_sigma_se}


def _g_sq(ctx: Context) -> dict[str, float]:
    return {"g_sq": ctx.noise.g_sq, "g_sq_se": ctx.noise.g_sq_se}


def _b_simple(ctx: Context) -> dict[str, float]:
    ns = ctx.noise
    return {"b_simple": ns.b_simple, "b_simple_lo": ns.b_simple_lo, "b_simple_hi": ns.b_simple_hi}


def _temperature(ctx: Context) -> dict[str, float]:
    groups = ctx.group_slices()
    if not groups:
        return {"temperature": float("nan")}
    n_trained = sum(b - a for _, ranges in groups for a, b in ranges)
    if len({lr for lr, _ in groups}) == 1 and n_trained == ctx.grads.num_params:
        # one learning rate for every parameter: lr·tr Σ/S, no per-parameter diagonal needed
        return {"temperature": groups[0][0] * ctx.noise.tr_sigma / ctx.batch_size}
    diag = ctx.sigma_diagonal
    total = sum(lr * float(sum(diag[a:b].sum() for a, b in ranges)) for lr, ranges in groups)
    return {"temperature": total / ctx.batch_size}


def _top_k_c(ctx: Context) -> dict[str, float]:
    n = ctx.n
    k = min(ctx.top_k, n - 1)
    centred = ctx.gram - ctx.gram.mean(0, keepdims=True)
    centred = (centred - centred.mean(1, keepdims=True)) / n
    lam = np.linalg.eigvalsh((centred + centred.T) / 2)[::-1][:k] / ctx.batch_size
    return {f"c_eig_{i + 1}": float(v) for i, v in enumerate(lam)}


def _sharpness(ctx: Context) -> dict[str, float]:
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    scaled = None if ctx.optimizer is None else step_scale(ctx.optimizer, params)
    if scaled is None:  # no optimizer (or its state is not there yet): the plain Hessian
        pairs = ctx.top_eigen(ctx.hessian, 1, "sharpness")
        return {
            "sharpness": float(pairs.eigenvalues[0]),
            "eos_ratio": float("nan"),
            "sharpness_hvps": float(pairs.matvecs),
        }
    s, rule = scaled
    pairs = ctx.top_eigen(_Scaled(ctx.hessian, s.sqrt()), 1, "sharpness")
    ratio = float(pairs.eigenvalues[0])
    group = ctx.optimizer.param_groups[0]
    lr0 = float(group["lr"])
    if rule == "adam":
        b1 = group["betas"][0]
        threshold = (2 + 2 * b1) / ((1 - b1) * lr0)
    else:
        mu = float(group.get("momentum", 0.0))
        threshold = (2 + 2 * mu) / (((1 + 2 * mu) if rule == "sgd-nesterov" else 1.0) * lr0)
    return {"sharpness": ratio * threshold, "eos_ratio": ratio, "sharpness_hvps": float(pairs.matvecs)}


def _top_k_h(ctx: Context) -> dict[str, float]:
    k = min(ctx.top_k, ctx.hessian.num_params)
    pairs = ctx.top_eigen(ctx.hessian, k, "top_k_h")
    out = {f"h_eig_{i + 1}": float(v) for i, v in enumerate(pairs.eigenvalues)}
    kc = min(k, ctx.n - 1)
    centred = torch.as_tensor(ctx.gram)
    centred = centred - centred.mean(0, keepdim=True)
    centred = centred - centred.mean(1, keepdim=True)
    lam, u = torch.linalg.eigh(centred)
    lam, u = lam.flip(0)[:kc], u.flip(1)[:, :kc]
    keep = lam > ctx.n * torch.finfo(lam.dtype).eps * float(lam[0].clamp_min(0))
    coeffs = (u * torch.where(keep, lam.clamp_min(1e-300).rsqrt(), torch.zeros_like(lam))).to(ctx.grads.dtype)
    proj = coeffs.T @ ctx.grads.jvp(pairs.eigenvectors[:, :kc].to(ctx.grads.dtype))  # U_Cᵀ U_H, (kc, kc)
    out["overlap_ch"] = float((proj.double() ** 2).sum()) / kc
    return out


def _b_noise(ctx: Context) -> dict[str, float]:
    n, grads = ctx.n, ctx.grads
    gen = torch.Generator().manual_seed(int(ctx.state.setdefault("b_noise_calls", 0)))
    ctx.state["b_noise_calls"] += 1
    r = (torch.randint(0, 2, (n, B_NOISE_PROBES), generator=gen) * 2 - 1).to(grads.dtype)
    r = r.to(ctx.hessian.device)
    u = grads.vjp(r - r.mean(0, keepdim=True))  # J_cᵀ r, (P, m)
    hu = ctx.hessian.mv(u)
    samples = (u * hu).sum(0).double() / (n - 1)
    tr_h_sigma, se = float(samples.mean()), float(samples.std() / B_NOISE_PROBES**0.5)
    gbar = grads.mean()
    g_h_g = float(gbar @ ctx.hessian.mv(gbar)) - tr_h_sigma / n
    return {
        "b_noise": tr_h_sigma / g_h_g if g_h_g > 0 else float("nan"),
        "tr_h_sigma": tr_h_sigma,
        "tr_h_sigma_se": se,
        "g_h_g": g_h_g,
    }


def _tail_index(ctx: Context) -> dict[str, float]:
    from scipy.stats import normaltest

    from noiseprobe.core.powerlaw import hill, powerlaw_mle

    grads, n = ctx.grads, ctx.grads.n
    dirs = ctx.state.get("tail_dirs")
    pool: list[np.ndarray] = ctx.state.setdefault("tail_pool", [])
    if dirs is not None and dirs.shape[0] == grads.num_params:
        proj = grads.jvp(dirs.to(grads.dtype)).double().cpu().numpy()  # (n, k) = g_i·v
        proj = proj - proj.mean(0)
        sd = proj.std(0, ddof=1)
        pool.append((proj[:, sd > 0] / sd[sd > 0]).ravel())
        while sum(len(p) for p in pool) - len(pool[0]) >= TAIL_POOL:
            pool.pop(0)
    # this batch's top noise directions, for the next measurement
    centred = ctx.gram - ctx.gram.mean(0, keepdims=True)
    centred = centred - centred.mean(1, keepdims=True)
    lam, u = np.linalg.eigh((centred + centred.T) / 2)
    k = min(TAIL_DIRECTIONS, n - 1)
    lam, u = lam[::-1][:k], u[:, ::-1][:, :k]
    keep = lam > n * np.finfo(float).eps * max(lam[0], 0.0)
    coeffs = torch.as_tensor(u[:, keep] / np.sqrt(lam[keep]), dtype=grads.dtype, device=ctx.device)
    ctx.state["tail_dirs"] = grads.vjp(coeffs).detach() if keep.any() else None
    x = np.concatenate(pool) if pool else np.zeros(0)
    out = {
        "tail_hill": math.nan,
        "tail_hill_se": math.nan,
        "tail_mle": math.nan,
        "tail_mle_se": math.nan,
        "tail_normal_p": math.nan,
        "tail_samples": float(len(x)),
    }
    if len(x) >= TAIL_MIN:
        a = np.abs(x[x != 0])
        h = hill(a, max(10, len(a) // 10))
        m = powerlaw_mle(a)
        out.update(
            tail_hill=h.beta,
            tail_hill_se=h.se,
            tail_mle=m.beta,
            tail_mle_se=m.se,
            tail_normal_p=float(normaltest(x).pvalue),
        )
    return out


def _two_batch(ctx: Context) -> dict[str, float]:
    if ctx.hook is None or ctx.group is None:
        raise ConfigError("metrics", "two_batch", "a DistributedDataParallel model in a world of >= 2 ranks")
    small, big = ctx.hook.take()
    world = ddp.dist.get_world_size(ctx.group)
    b_big = ctx.batch_size
    g_sq, tr = two_batch(small, big, b_big // world, b_big)
    return {
        "two_batch_g_sq": g_sq,
        "two_batch_tr_sigma": tr,
        "two_batch_b_simple": tr / g_sq if g_sq > 0 else float("nan"),
    }


#: name -> metric function (a context in, named values out)
METRICS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "tr_sigma": _tr_sigma,
    "g_sq": _g_sq,
    "b_simple": _b_simple,
    "temperature": _temperature,
    "top_k_c": _top_k_c,
    "sharpness": _sharpness,
    "top_k_h": _top_k_h,
    "batch_sharpness": batch_sharpness_metric,
    "eoss_ratio": eoss_ratio_metric,
    "b_noise": _b_noise,
    "two_batch": _two_batch,
    "tail_index": _tail_index,
    "fluctuation": fluctuation,
    "niw_decay": niw_decay,
    "label_noise_reg": label_noise_reg,
    "dropout_reg": dropout_reg,
}
#: metrics that need something declared (DDP, NINs, label noise, dropout modules): not in "all"
DECLARED: tuple[str, ...] = ("two_batch", "niw_decay", "label_noise_reg", "dropout_reg")
DEFAULT: tuple[str, ...] = ("tr_sigma", "g_sq", "b_simple", "temperature", "top_k_c")


def resolve_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """ "default", "all", or a list of metric names, checked."""
    if metrics == "default":
        return DEFAULT
    if metrics == "all":
        return tuple(m for m in METRICS if m not in DECLARED)
    if isinstance(metrics, str) or not all(isinstance(m, str) for m in metrics):
        raise ConfigError("metrics", metrics, '"default", "all" or a list of names from ' + ", ".join(METRICS))
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise ConfigError("metrics", metrics, "names from " + ", ".join(METRICS))
    return tuple(dict.fromkeys(metrics))
