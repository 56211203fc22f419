"""Batched training of K ReLU MLPs, each with one noise injection node (NIN), in one array op per step.

The speed path of the σε sweeps (paper 001, Figs. 1-3): replica k is an MLP
``d_in -> hidden... -> n_classes`` whose first-layer pre-activations (or those of hidden layer
``nin_layer``) are shifted by the NIN, eq. (1):

    z^(ℓ_NI) -> z^(ℓ_NI) + W_NI ε,    ε ~ N(0, σε²), one scalar per sample,

with its own σε, its own initialisation and its own data order. All K replicas advance together:
weights are stacked as ``(K, fan_in, fan_out)`` tensors and every layer is one ``torch.baddbmm``.

Conventions
-----------
* Loss: ``"ce"`` = softmax cross-entropy (sparse labels), batch mean; ``"mse"`` = Keras-style
  mean squared error on one-hot targets, mean over the batch *and* the C outputs, **no ½**
  (ℓ = (1/C) Σ_c (f_c − y_c)²).
* Sampling: SGD *without* replacement, a fresh permutation of the training set each epoch per replica;
  the last incomplete batch is dropped (``n_train // batch_size`` steps per epoch).
* NIN values ε are attached to training *samples*: ``resample="epoch"`` redraws ε for every sample at
  each epoch (the paper's default); ``"fixed"`` draws them once before training (Fig. 1 centre,
  light blue). Evaluation always uses ε = 0 (App. B).
* Init (App. B, ambiguity 2 of the reference read as LeCun normal): W^(ℓ) ~ N(0, 1/fan_in), b = 0;
  the NIW has fan-in 1, so W_NI ~ N(0, ``niw_init_std``²) with ``niw_init_std = 1``.
* Randomness: replica index r (global) owns the streams ``torch_generator(seed, r, s)`` with s = 0 for
  the init, 1 for the data order and 2 for the NIN values; σε is a hyper-parameter, so two replicas with
  the same r and different σε share init, order and the unit-variance noise ξ (ε = σε ξ): common
  random numbers across the σε sweep.
* Divergence: a replica whose batch loss or weights become non-finite, or whose weights exceed
  ``overflow`` in magnitude, is recorded as diverged (epoch and step), its weights are set to zero and
  frozen, and its later metrics are NaN; the other replicas are unaffected.

Recorded per replica and epoch (epoch 0 = initialisation): clean (ε = 0) train/test loss and accuracy,
the epoch-mean noisy batch loss, ``niw_norm`` = ‖W_NI‖₂, ``next_norm`` = ‖W^(ℓ_NI+1)‖_F, and
``curv_niw`` = Ŵᵀ⟨H⟩Ŵ, the local Hessian of eq. (3) at z^(ℓ_NI), averaged over the training set, along
the unit NIW Ŵ = W_NI/‖W_NI‖. It sets the NIW decay rate of eq. (2): per SGD step
d ln‖W_NI‖ ≈ −η σε² Ŵᵀ⟨H⟩Ŵ (corrected; the paper's eq. (2) has ησε²/2, see
:func:`predicted_log_decay`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from noiseprobe.core.errors import check_choice, check_int, check_real
from noiseprobe.core.seeding import torch_generator

LOSSES = ("ce", "mse")
RESAMPLE = ("epoch", "fixed")
#: stream numbers within a replica (see module docstring)
STREAM_INIT, STREAM_ORDER, STREAM_NOISE = 0, 1, 2


@dataclass
class MLPEnsemble:
    """K stacked MLPs with one NIN each. ``weights[m]``: (K, d_m, d_{m+1}); ``biases[m]``: (K, d_{m+1});
    ``niw``: (K, d_{ℓ_NI+1}); ``sigma``: (K,). Parameters are plain tensors (float32 by default)."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    niw: torch.Tensor
    sigma: torch.Tensor
    nin_layer: int = 0

    @property
    def k(self) -> int:
        return self.niw.shape[0]

    def parameters(self) -> list[torch.Tensor]:
        return [*self.weights, *self.biases, self.niw]

    def forward(self, x: torch.Tensor, xi: torch.Tensor | None = None,
                keep: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (K, n, C) for inputs ``x`` (K, n, d_in) or shared (n, d_in) and unit NIN values
        ``xi`` (K, n) (ε = σε ξ; ``None`` means ε = 0). With ``keep`` also the pre-activations z^(m)."""
        h = x if x.dim() == 3 else x.expand(self.k, *x.shape)
        zs: list[torch.Tensor] = []
        last = len(self.weights) - 1
        for m, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = torch.baddbmm(b.unsqueeze(1), h, w)
            if m == self.nin_layer and xi is not None:
                z = z + (self.sigma[:, None] * xi).unsqueeze(-1) * self.niw.unsqueeze(1)  # eq. (1)
            if keep:
                zs.append(z)
            h = torch.relu(z) if m < last else z
        return h, zs

    def niw_curvature(self, x: torch.Tensor, loss: str) -> torch.Tensor:
        """Ŵᵀ⟨H⟩Ŵ per replica (K,): the eq. (3) local Hessian at z^(ℓ_NI), batch-averaged over ``x``,
        along the unit NIW. Exact for ReLU nets (zero second derivative a.e.): H = Jᵀ H_out J with
        J = ∂f/∂z^(ℓ_NI), so Ŵᵀ H Ŵ = uᵀ H_out u with u = J Ŵ (one forward-mode pass)."""
        with torch.no_grad():
            logits, zs = self.forward(x, keep=True)
            v = self.niw / self.niw.norm(dim=1, keepdim=True).clamp_min(1e-30)
            u = (zs[self.nin_layer] > 0) * v.unsqueeze(1)
            last = len(self.weights) - 1
            for m in range(self.nin_layer + 1, last + 1):
                u = torch.bmm(u, self.weights[m])
                if m < last:
                    u = u * (zs[m] > 0)
            if loss == "ce":
                p = torch.softmax(logits, dim=-1)
                q = (p * u * u).sum(-1) - (p * u).sum(-1) ** 2
            else:
                q = (2.0 / u.shape[-1]) * (u * u).sum(-1)
            return q.mean(1)


def init_ensemble(sizes: Sequence[int], sigmas: Sequence[float], replicas: Sequence[int], seed: int, *,
                  nin_layer: int = 0, niw_init_std: float = 1.0,
                  dtype: torch.dtype = torch.float32) -> MLPEnsemble:
    """Stack K freshly initialised MLPs (App. B init, see module docstring); replica k uses stream
    ``torch_generator(seed, replicas[k], STREAM_INIT)`` and draws, in order, W^(0), W^(1), ..., W_NI."""
    sizes = [check_int("sizes", int(s), lo=1) for s in sizes]
    if len(sizes) < 3:
        raise ValueError("sizes needs input, at least one hidden layer and output")
    check_int("nin_layer", nin_layer, lo=0, hi=len(sizes) - 3)
    if len(sigmas) != len(replicas):
        raise ValueError("sigmas and replicas must have the same length")
    ws: list[list[torch.Tensor]] = [[] for _ in range(len(sizes) - 1)]
    niws = []
    for r in replicas:
        g = torch_generator(seed, int(r), STREAM_INIT)
        for m in range(len(sizes) - 1):
            ws[m].append(torch.randn(sizes[m], sizes[m + 1], generator=g, dtype=torch.float64)
                         / math.sqrt(sizes[m]))
        niws.append(torch.randn(sizes[nin_layer + 1], generator=g, dtype=torch.float64) * niw_init_std)
    k = len(replicas)
    return MLPEnsemble(
        weights=[torch.stack(w).to(dtype) for w in ws],
        biases=[torch.zeros(k, sizes[m + 1], dtype=dtype) for m in range(len(sizes) - 1)],
        niw=torch.stack(niws).to(dtype),
        sigma=torch.as_tensor(np.asarray(sigmas, dtype=np.float64), dtype=dtype),
        nin_layer=nin_layer,
    )


def batch_losses(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-sample losses (K, n) for labels ``y`` (K, n) or (n,); conventions in the module docstring."""
    c = logits.shape[-1]
    y = y.expand(logits.shape[:-1])
    if loss == "ce":
        return torch.nn.functional.cross_entropy(logits.reshape(-1, c), y.reshape(-1),
                                                 reduction="none").reshape(y.shape)
    onehot = torch.nn.functional.one_hot(y, c).to(logits.dtype)
    return ((logits - onehot) ** 2).mean(-1)


def predicted_log_decay(lr: float, sigma: np.ndarray, curv: np.ndarray, steps: np.ndarray,
                        form: str = "corrected") -> np.ndarray:
    """Integrated eq. (2)/(9) prediction of −ln(‖W_NI(t)‖/‖W_NI(0)‖) after ``steps`` SGD steps, from
    the curvature ``curv`` = Ŵᵀ⟨H⟩Ŵ recorded at those steps (trapezoid rule over the record).

    ``form="corrected"``: drift −η σε² ⟨H⟩ W_NI (gradient of ½ σε² Wᵀ⟨H⟩W; reference §4 item 1);
    ``form="paper"``: the paper's eq. (2), −(η σε²/2) ⟨H⟩ W_NI, i.e. half the corrected rate.
    Arrays broadcast as (..., T) over the record axis.
    """
    check_choice("form", form, ("corrected", "paper"))
    rate = lr * np.asarray(sigma)[..., None] ** 2 * np.asarray(curv)
    steps = np.asarray(steps, dtype=float)
    inc = 0.5 * (rate[..., 1:] + rate[..., :-1]) * np.diff(steps)
    out = np.concatenate([np.zeros(rate.shape[:-1] + (1,)), np.cumsum(inc, axis=-1)], axis=-1)
    return out if form == "corrected" else 0.5 * out


def _evaluate(ens: MLPEnsemble, x: torch.Tensor, y: torch.Tensor, loss: str,
              block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean (ε = 0) mean loss and accuracy per replica over a shared data set, in blocks."""
    tot_l = torch.zeros(ens.k, dtype=torch.float64)
    tot_a = torch.zeros(ens.k, dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, x.shape[0], block):
            logits, _ = ens.forward(x[i:i + block])
            yb = y[i:i + block]
            tot_l += batch_losses(logits, yb, loss).double().sum(1)
            tot_a += (logits.argmax(-1) == yb).double().sum(1)
    return tot_l / x.shape[0], tot_a / x.shape[0]


def train_ensemble(x_train: torch.Tensor | np.ndarray, y_train: torch.Tensor | np.ndarray,
                   x_test: torch.Tensor | np.ndarray, y_test: torch.Tensor | np.ndarray, *,
                   hidden: Sequence[int], sigmas: Sequence[float], replicas: Sequence[int], seed: int,
                   loss: str = "ce", lr: float = 0.01, batch_size: int = 1000, epochs: int = 10,
                   nin_layer: int = 0, resample: str = "epoch", niw_init_std: float = 1.0,
                   record_every: int = 1, overflow: float = 1e8, curvature_samples: int = 2000,
                   eval_block: int = 4096,
                   dtype: torch.dtype = torch.float32,
                   ensemble: MLPEnsemble | None = None) -> pd.DataFrame:
    """Train K = len(sigmas) MLPs with NINs by SGD, one batched op per step; return a tidy per-(replica,
    epoch) DataFrame (columns: replica, sigma, epoch, step, train_loss, train_acc, test_loss, test_acc,
    noisy_loss, niw_norm, next_norm, curv_niw, diverged, diverged_step); ``noisy_loss`` is the mean
    training batch loss (with the NIN) since the previous record.

    ``replicas[k]`` is replica k's global index (its random streams); ``sigmas[k]`` its σε. Metrics are
    recorded at epoch 0, every ``record_every`` epochs and at the last epoch. Pass
    ``ensemble`` to start from given weights (``hidden``, ``seed`` and ``niw_init_std`` are then only
    used for the data order and NIN values). ``curvature_samples`` training samples (the first ones)
    are used for ``curv_niw`` (0 disables it: NaN).
    """
    check_choice("loss", loss, LOSSES)
    check_choice("resample", resample, RESAMPLE)
    check_real("lr", lr, lo=0.0, lo_open=True)
    check_int("epochs", epochs, lo=0)
    check_int("record_every", record_every, lo=1)
    check_real("overflow", overflow, lo=0.0, lo_open=True)
    for s in sigmas:
        check_real("sigma", s, lo=0.0)
    xtr, xte = (torch.as_tensor(np.asarray(a), dtype=dtype) for a in (x_train, x_test))
    ytr, yte = (torch.as_tensor(np.asarray(a), dtype=torch.long) for a in (y_train, y_test))
    n = xtr.shape[0]
    check_int("batch_size", batch_size, lo=1, hi=n)
    n_classes = int(max(ytr.max(), yte.max())) + 1
    ens = ensemble if ensemble is not None else init_ensemble(
        [xtr.shape[1], *hidden, n_classes], sigmas, replicas, seed, nin_layer=nin_layer,
        niw_init_std=niw_init_std, dtype=dtype)
    k = ens.k
    params = ens.parameters()
    for p in params:
        p.requires_grad_(True)
    order_gens = [torch_generator(seed, int(r), STREAM_ORDER) for r in replicas]
    noise_gens = [torch_generator(seed, int(r), STREAM_NOISE) for r in replicas]
    steps_per_epoch = n // batch_size
    alive = torch.ones(k, dtype=torch.bool)
    div_step = np.full(k, -1, dtype=np.int64)
    xcurv = xtr[:curvature_samples]
    rows: list[dict[str, np.ndarray]] = []
    xi_all = torch.empty(k, n, dtype=dtype)

    def draw_noise() -> None:
        for j, g in enumerate(noise_gens):
            xi_all[j] = torch.randn(n, generator=g, dtype=dtype)

    def kill(dead: torch.Tensor, step: int) -> None:
        idx = torch.nonzero(dead).flatten()
        div_step[idx.numpy()] = step
        alive[idx] = False
        with torch.no_grad():
            for p in params:
                p[idx] = 0.0

    def record(epoch: int, noisy: np.ndarray) -> None:
        tl, ta = _evaluate(ens, xtr, ytr, loss, eval_block)
        vl, va = _evaluate(ens, xte, yte, loss, eval_block)
        curv = (ens.niw_curvature(xcurv, loss).double() if curvature_samples > 0
                else torch.full((k,), float("nan"), dtype=torch.float64))
        with torch.no_grad():
            niw = ens.niw.double().norm(dim=1)
            nxt = ens.weights[ens.nin_layer + 1].double().flatten(1).norm(dim=1)
        dead = ~alive.numpy()
        cols = {"train_loss": tl, "train_acc": ta, "test_loss": vl, "test_acc": va,
                "niw_norm": niw, "next_norm": nxt, "curv_niw": curv}
        row = {key: np.where(dead, np.nan, v.numpy()) for key, v in cols.items()}
        row.update(replica=np.asarray(replicas), sigma=ens.sigma.double().numpy(),
                   epoch=np.full(k, epoch), step=np.full(k, epoch * steps_per_epoch),
                   noisy_loss=np.where(dead, np.nan, noisy), diverged=dead.copy())
        rows.append(row)

    with torch.no_grad():
        bad = ~torch.stack([torch.isfinite(p).flatten(1).all(1) & (p.abs().flatten(1).amax(1) <= overflow)
                            for p in params]).all(0)
    if bad.any():
        kill(bad, 0)
    record(0, np.full(k, np.nan))
    noisy_sum, noisy_n = torch.zeros(k, dtype=torch.float64), 0
    if resample == "fixed":
        draw_noise()
    for epoch in range(1, epochs + 1):
        perm = torch.stack([torch.randperm(n, generator=g) for g in order_gens])
        if resample == "epoch":
            draw_noise()
        for s in range(steps_per_epoch):
            idx = perm[:, s * batch_size:(s + 1) * batch_size]
            xb = xtr[idx]
            xib = torch.gather(xi_all, 1, idx)
            logits, _ = ens.forward(xb, xib)
            lk = batch_losses(logits, ytr[idx], loss).mean(1)
            grads = torch.autograd.grad(torch.where(alive, lk, 0.0).sum(), params)
            with torch.no_grad():
                for p, gr in zip(params, grads):
                    p.sub_(lr * gr)
                step = (epoch - 1) * steps_per_epoch + s + 1
                bad = alive & ~(torch.isfinite(lk) & torch.stack(
                    [torch.isfinite(p).flatten(1).all(1) & (p.abs().flatten(1).amax(1) <= overflow)
                     for p in params]).all(0))
                if bad.any():
                    kill(bad, step)
                noisy_sum += torch.where(alive, lk.double(), 0.0)
                noisy_n += 1
        if epoch % record_every == 0 or epoch == epochs:
            record(epoch, (noisy_sum / max(noisy_n, 1)).numpy())
            noisy_sum.zero_()
            noisy_n = 0
    for p in params:
        p.requires_grad_(False)
    df = pd.DataFrame({key: np.concatenate([r[key] for r in rows]) for key in rows[0]})
    df["diverged_step"] = np.tile(div_step, len(rows))
    df["diverged"] = df["diverged"].astype(bool)
    return df.sort_values(["replica", "sigma", "epoch"], kind="stable").reset_index(drop=True)
