"""Batched training of K ReLU MLPs, each with one noise injection node (NIN), one array op per step.

The speed path of the σε sweeps (paper 001, Figs. 1-3). Replica k is an MLP
``d_in -> hidden... -> n_classes`` whose pre-activations at hidden layer ``nin_layer`` (0 = first) are
shifted by its NIN (Sec. 2, before eq. 1):

    z^(ℓ_NI) -> z^(ℓ_NI) + W_NI ε,    ε = σε ξ,  ξ ~ N(0, 1), one scalar per sample,

with its own σε, weights, data order and noise. Weights are stacked as ``(K, fan_in, fan_out)``
tensors, every layer is one ``torch.baddbmm`` (or, when all replicas share one data order, the first
layer is one wide ``(B, d_in) × (d_in, K·d_1)`` product) and one ``autograd.grad`` call gives all K
gradients (the summed loss is block-diagonal in the replicas).

Conventions (shared with :func:`noiseprobe.nin.probe.train`, which this reproduces replica by replica,
see :meth:`MLPEnsemble.member`):

* Loss: ``"ce"`` softmax cross-entropy on integer labels, batch mean; ``"mse"`` Keras-style mean squared
  error on one-hot targets, mean over the batch *and* the C outputs, **no ½**: ℓ = (1/C) Σ_c (f_c − y_c)².
* Sampling: SGD without replacement, a fresh permutation per epoch and replica, last incomplete batch
  dropped (``n_train // batch_size`` steps per epoch); plain SGD, no momentum, no weight decay.
* NIN values ξ are attached to training samples: ``"epoch"`` mode redraws the table ξ (n_train,) at every
  epoch after the first (the paper's default); ``"fixed"`` keeps the table drawn before training
  (Fig. 1 centre, light blue). Evaluation always uses ε = 0 (App. B).
* Init (App. B, docs/theory/noise_injection_nodes.md §2 ambiguity 2 read as LeCun normal): W^(ℓ) ~ N(0, 1/fan_in), b = 0;
  W_NI ~ N(0, ``niw_init_std``²) (reference reading: 1, the NIN's fan-in is 1).
* Randomness of replica r (its *global* index) and experiment seed s: weights from
  ``torch_generator(s, r, 0)`` in layer order; the NIW and then the ξ tables from
  ``torch_generator(s, r, 2)`` (what :func:`~noiseprobe.nin.injector.attach_nins` draws with that
  generator); data order from ``torch.Generator().manual_seed(order_seed(s, r))``, whose first
  permutation also picks the ``probe_samples`` samples for the curvature (as ``probe.train`` does).
  σε is a hyper-parameter: replicas with equal r and different σε share weights, order and ξ (common
  random numbers across a σε sweep), and nothing depends on how replicas are grouped into calls.
* Divergence (:mod:`noiseprobe.core.divergence`): a replica whose batch loss becomes non-finite (checked
  every step), or whose weights are non-finite or exceed 10⁸ × its scale in magnitude, the scale being its
  largest initial weight (checked at initialisation and at the end of every epoch), is recorded as
  diverged at that step and dropped from the batch; its later records are NaN with ``diverged = True``;
  the other replicas are unaffected.

Records (epoch 0 = initialisation): clean train/test loss and accuracy, ``noisy_loss`` (mean training
batch loss with the NIN since the previous record), ``niw_norm`` = ‖W_NI‖₂, ``next_norm`` =
‖W^(ℓ_NI+1)‖_F and ``curv_niw`` = Ŵᵀ⟨H⟩Ŵ, the eq. (3) local Hessian at z^(ℓ_NI) along the unit NIW
(batch-averaged over the probe samples). It sets the NIW decay of eq. (2): d ln‖W_NI‖/dt = −η σε² curv_niw
per step (corrected, docs/theory/noise_injection_nodes.md §4.1) or half of it (the paper's eq. (2) as printed); see
:func:`noiseprobe.nin.probe.niw_decay_rate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from noiseprobe.core import divergence
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.seeding import seed_sequence, torch_generator
from noiseprobe.core.validation import check_choice, check_int, check_real

LOSSES = ("ce", "mse")
NIN_MODES = ("epoch", "fixed")
STREAM_INIT, STREAM_ORDER, STREAM_NOISE = 0, 1, 2
RECORD_COLUMNS = (
    "member",
    "replica",
    "sigma",
    "nin_mode",
    "epoch",
    "step",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "noisy_loss",
    "niw_norm",
    "next_norm",
    "curv_niw",
    "diverged",
    "diverged_step",
)


def order_seed(seed: int, replica: int) -> int:
    """The integer seed of replica ``replica``'s data-order generator (pass it as ``probe.train(seed=...)``)."""
    check_int("replica", replica, lo=0)
    return int(seed_sequence(seed, replica, STREAM_ORDER).generate_state(1, np.uint64)[0] >> np.uint64(2))


@dataclass
class MLPEnsemble:
    """K stacked MLPs with one NIN each: ``weights[m]`` (K, d_m, d_{m+1}), ``biases[m]`` (K, d_{m+1}),
    ``niw`` (K, d_{ℓ_NI+1}), ``sigma`` (K,) = σε per replica."""

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

    def select(self, keep: torch.Tensor) -> MLPEnsemble:
        """The sub-ensemble of replicas ``keep`` (indices), as new leaf tensors."""
        take = [p.detach()[keep].clone() for p in self.parameters()]
        n = len(self.weights)
        return MLPEnsemble(
            [wide_layout(take[0]), *take[1:n]], take[n : 2 * n], take[-1], self.sigma[keep].clone(), self.nin_layer
        )

    def forward(
        self, x: torch.Tensor, xi: torch.Tensor | None = None, keep: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (K, n, C) for inputs ``x`` (K, n, d_in) or shared (n, d_in) and unit NIN values ``xi``
        (K, n) (``None``: ε = 0); with ``keep`` also the pre-activations z^(m) of every layer. A shared
        input makes the first layer one (n, d_in) × (d_in, K·d_1) product instead of K small ones."""
        h = x
        zs: list[torch.Tensor] = []
        last = len(self.weights) - 1
        for m, (w, b) in enumerate(zip(self.weights, self.biases)):
            if h.dim() == 2:
                wide = w.transpose(0, 1).reshape(w.shape[1], -1)  # a view for the first layer (wide_layout)
                z = torch.addmm(b.reshape(-1), h, wide).view(h.shape[0], self.k, -1).transpose(0, 1)
            else:
                z = torch.baddbmm(b.unsqueeze(1), h, w)
            if m == self.nin_layer and xi is not None:  # z + W_NI ε, one pass
                z = torch.addcmul(z, (self.sigma[:, None] * xi).unsqueeze(-1), self.niw.unsqueeze(1))
            if keep:
                zs.append(z)
            h = torch.relu(z) if m < last else z
        return h, zs

    def niw_curvature(self, x: torch.Tensor, loss: str) -> torch.Tensor:
        """Ŵᵀ⟨H⟩Ŵ per replica (K,) over the samples ``x`` (n, d_in) or (K, n, d_in): eq. (3) at z^(ℓ_NI)
        along the unit NIW. Exact for ReLU nets away from the kinks (zero second derivative a.e.):
        H = Jᵀ H_out J with J = ∂f/∂z^(ℓ_NI), so ŴᵀHŴ = uᵀ H_out u with u = J Ŵ (one forward-mode pass);
        H_out = diag(p) − ppᵀ for CE, (2/C) I for the MSE above."""
        check_choice("loss", loss, LOSSES)
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
                q: torch.Tensor = (p * u * u).sum(-1) - (p * u).sum(-1) ** 2
            else:
                q = (2.0 / u.shape[-1]) * (u * u).sum(-1)
            return q.mean(1)

    def member(self, k: int) -> tuple[nn.Sequential, str]:
        """Replica ``k`` (without its NIN) as an ``nn.Sequential`` of Linear/ReLU (a copy), and the name of
        the module whose output receives the NIN (for :class:`~noiseprobe.nin.injector.NINSpec`)."""
        layers: list[nn.Module] = []
        for m, (w, b) in enumerate(zip(self.weights, self.biases)):
            lin = nn.Linear(w.shape[1], w.shape[2], dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w[k].T)
                lin.bias.copy_(b[k])
            layers += [lin, nn.ReLU()] if m < len(self.weights) - 1 else [lin]
        return nn.Sequential(*layers), str(2 * self.nin_layer)


def wide_layout(w: torch.Tensor) -> torch.Tensor:
    """``w`` (K, d_in, d_out) with the same values stored as (d_in, K, d_out), so that the shared-input
    product's ``(d_in, K·d_out)`` matrix is a view of it (no copy in the forward or backward pass)."""
    return w.transpose(0, 1).contiguous().transpose(0, 1)


def init_ensemble(
    sizes: Sequence[int],
    sigmas: Sequence[float],
    replicas: Sequence[int],
    seed: int,
    *,
    nin_layer: int = 0,
    niw_init_std: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> MLPEnsemble:
    """K freshly initialised MLPs with NINs (init and streams as in the module docstring)."""
    sizes = [check_int("sizes", s, lo=1) for s in sizes]
    if len(sizes) < 3:
        raise ConfigError("sizes", sizes, "[d_in, hidden..., n_classes] with at least one hidden layer")
    check_int("nin_layer", nin_layer, lo=0, hi=len(sizes) - 3)
    check_real("niw_init_std", niw_init_std, lo=0.0)
    if len(sigmas) != len(replicas) or not replicas:
        raise ConfigError("sigmas", list(sigmas), f"one σε per replica ({len(replicas)} replicas, at least 1)")
    for s in sigmas:
        check_real("sigma", s, lo=0.0)
    ws: list[list[torch.Tensor]] = [[] for _ in range(len(sizes) - 1)]
    niws = []
    for r in replicas:
        g = torch_generator(seed, int(r), STREAM_INIT)
        for m in range(len(sizes) - 1):
            ws[m].append(torch.randn(sizes[m], sizes[m + 1], generator=g, dtype=torch.float64) / math.sqrt(sizes[m]))
        niws.append(
            torch.randn(1, sizes[nin_layer + 1], generator=torch_generator(seed, int(r), STREAM_NOISE))[0]
            * niw_init_std
        )
    k = len(replicas)
    return MLPEnsemble(
        weights=[
            wide_layout(torch.stack(w).to(dtype)) if m == 0 else torch.stack(w).to(dtype) for m, w in enumerate(ws)
        ],
        biases=[torch.zeros(k, sizes[m + 1], dtype=dtype) for m in range(len(sizes) - 1)],
        niw=torch.stack(niws).to(dtype),
        sigma=torch.tensor([float(s) for s in sigmas], dtype=dtype),
        nin_layer=nin_layer,
    )


def batch_losses(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-sample losses (K, n) for labels ``y`` (K, n) or (n,); conventions in the module docstring."""
    check_choice("loss", loss, LOSSES)
    c = logits.shape[-1]
    y = y.expand(logits.shape[:-1])
    if loss == "ce":
        return torch.nn.functional.cross_entropy(logits.reshape(-1, c), y.reshape(-1), reduction="none").reshape(
            y.shape
        )
    onehot = torch.nn.functional.one_hot(y, c).to(logits.dtype)
    return ((logits - onehot) ** 2).mean(-1)


def _evaluate(
    ens: MLPEnsemble, x: torch.Tensor, y: torch.Tensor, loss: str, block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean (ε = 0) mean loss and accuracy per replica over a shared data set, in blocks."""
    tot_l = torch.zeros(ens.k, dtype=torch.float64)
    tot_a = torch.zeros(ens.k, dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, x.shape[0], block):
            logits, _ = ens.forward(x[i : i + block])
            yb = y[i : i + block]
            tot_l += batch_losses(logits, yb, loss).double().sum(1)
            tot_a += (logits.argmax(-1) == yb).double().sum(1)
    return tot_l / x.shape[0], tot_a / x.shape[0]


def _scale(params: list[torch.Tensor]) -> torch.Tensor:
    """(K,) the replica's largest |weight| (its start, when called at initialisation)."""
    return torch.stack([p.detach().flatten(1).abs().amax(1).double() for p in params]).amax(0)


def _healthy(params: list[torch.Tensor], limit: torch.Tensor) -> torch.Tensor:
    """(K,) True where every parameter of the replica is finite and at most ``limit[k]`` in magnitude."""
    return torch.stack([(p.detach().flatten(1).abs().double() <= limit[:, None]).all(1) for p in params]).all(0)


@dataclass
class EnsembleRun:
    """``records``: one row per ensemble member and recorded epoch (columns ``RECORD_COLUMNS``; ``member``
    is the position in the call's ``sigmas``); ``steps``: the noisy batch loss of every SGD step
    (member, replica, sigma, nin_mode, step, noisy_loss)."""

    records: pd.DataFrame
    steps: pd.DataFrame


def train_ensemble(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    hidden: Sequence[int],
    sigmas: Sequence[float],
    replicas: Sequence[int],
    seed: int,
    loss: str = "ce",
    lr: float = 0.01,
    batch_size: int = 1000,
    epochs: int = 10,
    nin_layer: int = 0,
    nin_mode: str | Sequence[str] = "epoch",
    niw_init_std: float = 1.0,
    record_epochs: Sequence[int] | None = None,
    probe_samples: int = 2000,
    eval_block: int = 4096,
    dtype: torch.dtype = torch.float32,
    ensemble: MLPEnsemble | None = None,
) -> EnsembleRun:
    """Train K = len(sigmas) MLPs with NINs by plain SGD, all replicas in one batched op per step.

    ``replicas[k]`` is replica k's global index (its random streams), ``sigmas[k]`` its σε,
    ``nin_mode`` "epoch"/"fixed" for all or per replica. Records at epoch 0, at ``record_epochs``
    (default: every epoch) and at the last epoch. ``ensemble`` starts from (a copy of) given weights
    instead of :func:`init_ensemble` (``hidden``, ``niw_init_std`` then unused). Data are float tensors
    (n, d) and integer labels (n,), shared by all replicas.
    """
    modes = _check_training(x_train, sigmas, loss, nin_mode, lr, epochs, batch_size, probe_samples, eval_block)
    if record_epochs is not None:
        for e in record_epochs:
            check_int("record_epochs", e, lo=0, hi=epochs)
    data = (x_train.to(dtype), y_train.long(), x_test.to(dtype), y_test.long())
    ens = (
        ensemble.select(torch.arange(ensemble.k))
        if ensemble is not None
        else init_ensemble(
            [data[0].shape[1], *hidden, int(max(data[1].max(), data[3].max())) + 1],
            sigmas,
            replicas,
            seed,
            nin_layer=nin_layer,
            niw_init_std=niw_init_std,
            dtype=dtype,
        )
    )
    if len(replicas) != ens.k:
        raise ConfigError("replicas", list(replicas), f"one index per ensemble member ({ens.k})")
    wanted = set(range(1, epochs + 1)) if record_epochs is None else {int(e) for e in record_epochs} | {epochs}
    n = data[0].shape[0]
    order_gens = [torch.Generator().manual_seed(order_seed(seed, int(r))) for r in replicas]
    noise_gens = [torch_generator(seed, int(r), STREAM_NOISE) for r in replicas]
    for g in noise_gens:  # the NIW draw comes first in this stream (init_ensemble)
        torch.randn(1, ens.niw.shape[1], generator=g)
    probe_idx = torch.stack([torch.randperm(n, generator=g)[:probe_samples] for g in order_gens])
    xi = torch.stack([torch.randn(n, 1, generator=g)[:, 0] for g in noise_gens]).to(dtype)
    run = _Training(ens, data, loss, eval_block, probe_idx, n // batch_size, epochs, replicas, modes)
    limit = torch.from_numpy(divergence.bound(torch.nan_to_num(_scale(ens.parameters()), nan=0.0).numpy()))
    bad = ~_healthy(ens.parameters(), limit)
    if bad.any():
        run.drop(bad, 0)
    run.record(0)
    shared = len(set(int(r) for r in replicas)) == 1  # one data order for all: shared-input fast path
    for epoch in range(1, epochs + 1):
        perm = torch.stack([torch.randperm(n, generator=g) for g in order_gens])
        if epoch > 1:
            for j, g in enumerate(noise_gens):
                if modes[j] != "fixed":
                    xi[j] = torch.randn(n, 1, generator=g)[:, 0].to(dtype)
        run.sgd_epoch(epoch, perm, xi, lr=lr, batch_size=batch_size, shared=shared, limit=limit)
        if epoch in wanted:
            run.record(epoch)
    return run.result()


def _check_training(
    x_train: torch.Tensor,
    sigmas: Sequence[float],
    loss: str,
    nin_mode: str | Sequence[str],
    lr: float,
    epochs: int,
    batch_size: int,
    probe_samples: int,
    eval_block: int,
) -> list[str]:
    """Validate :func:`train_ensemble`'s arguments (ConfigError naming the first bad one); the NIN mode of
    each replica."""
    check_choice("loss", loss, LOSSES)
    modes = [nin_mode] * len(sigmas) if isinstance(nin_mode, str) else list(nin_mode)
    if len(modes) != len(sigmas):
        raise ConfigError("nin_mode", nin_mode, f"one mode or one per replica ({len(sigmas)})")
    for m in modes:
        check_choice("nin_mode", m, NIN_MODES)
    check_real("lr", lr, lo=0.0, lo_open=True)
    check_int("epochs", epochs, lo=0)
    for s in sigmas:
        check_real("sigma", s, lo=0.0)
    check_int("batch_size", batch_size, lo=1, hi=x_train.shape[0])
    check_int("probe_samples", probe_samples, lo=1)
    check_int("eval_block", eval_block, lo=1)
    return modes


class _Training:
    """The state of one :func:`train_ensemble` call: the replicas still training (``active``, original
    indices; ``ens`` holds only them), each replica's divergence step (−1: none), the per-step batch
    losses, the running noisy-loss sum since the last record, and the records so far."""

    RECORDED = ("train_loss", "train_acc", "test_loss", "test_acc", "noisy_loss", "niw_norm", "next_norm", "curv_niw")

    def __init__(
        self,
        ens: MLPEnsemble,
        data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
        loss: str,
        eval_block: int,
        probe_idx: torch.Tensor,
        steps_per_epoch: int,
        epochs: int,
        replicas: Sequence[int],
        modes: list[str],
    ) -> None:
        k = ens.k
        self.ens, self.data, self.loss, self.eval_block = ens, data, loss, eval_block
        self.probe_idx, self.steps_per_epoch = probe_idx, steps_per_epoch
        self.active = torch.arange(k)
        self.div_step = np.full(k, -1, dtype=np.int64)
        self.step_loss = np.full((k, epochs * steps_per_epoch), np.nan)
        self.noisy_sum, self.noisy_n = torch.zeros(k, dtype=torch.float64), 0
        self.rows: list[dict[str, np.ndarray]] = []
        self.base = {
            "member": np.arange(k),
            "replica": np.asarray(replicas, dtype=np.int64),
            "sigma": ens.sigma.double().numpy().copy(),
            "nin_mode": np.asarray(modes, dtype=object),
        }

    def record(self, epoch: int) -> None:
        """Append the records of ``epoch`` (NaN for diverged replicas) and restart the noisy-loss mean."""
        k, ens, (xtr, ytr, xte, yte) = len(self.div_step), self.ens, self.data
        full = {key: np.full(k, np.nan) for key in self.RECORDED}
        if len(self.active):
            a = self.active.numpy()
            for part, (xs, ys) in (("train", (xtr, ytr)), ("test", (xte, yte))):
                lo, ac = _evaluate(ens, xs, ys, self.loss, self.eval_block)
                full[f"{part}_loss"][a], full[f"{part}_acc"][a] = lo.numpy(), ac.numpy()
            full["curv_niw"][a] = ens.niw_curvature(xtr[self.probe_idx[self.active]], self.loss).double().numpy()
            full["niw_norm"][a] = ens.niw.detach().double().norm(dim=1).numpy()
            full["next_norm"][a] = ens.weights[ens.nin_layer + 1].detach().double().flatten(1).norm(dim=1).numpy()
            if self.noisy_n:
                full["noisy_loss"][a] = (self.noisy_sum[self.active] / self.noisy_n).numpy()
        step = np.full(k, epoch * self.steps_per_epoch)
        self.rows.append(
            {**self.base, "epoch": np.full(k, epoch), "step": step, **full, "diverged": self.div_step >= 0}
        )
        self.noisy_sum.zero_()
        self.noisy_n = 0

    def drop(self, bad: torch.Tensor, step: int) -> None:
        """Record the active replicas ``bad`` (a mask over them) as diverged at ``step`` and drop them."""
        self.div_step[self.active[bad].numpy()] = step
        keep = torch.nonzero(~bad).flatten()
        self.ens, self.active = self.ens.select(keep), self.active[keep]

    def sgd_epoch(
        self,
        epoch: int,
        perm: torch.Tensor,
        xi: torch.Tensor,
        *,
        lr: float,
        batch_size: int,
        shared: bool,
        limit: torch.Tensor,
    ) -> None:
        """One epoch of SGD in data order ``perm`` (K, n) with unit NIN values ``xi`` (K, n); the batch loss
        is checked every step, the weights against ``limit`` (K,) at the epoch's last step."""
        xtr, ytr = self.data[0], self.data[1]
        params = self.ens.parameters()
        for p in params:
            p.requires_grad_(True)
        for s in range(self.steps_per_epoch):
            if not len(self.active):
                break
            active = self.active
            idx = perm[active, s * batch_size : (s + 1) * batch_size]
            rows = idx[0] if shared else idx
            logits, _ = self.ens.forward(xtr[rows], torch.gather(xi[active], 1, idx))
            lk = batch_losses(logits, ytr[rows], self.loss).mean(1)
            grads = torch.autograd.grad(lk.sum(), params)
            step = (epoch - 1) * self.steps_per_epoch + s + 1
            with torch.no_grad():
                for p, gp in zip(params, grads):
                    p.add_(gp, alpha=-lr)  # torch.optim.SGD's update, one pass
                self.step_loss[active.numpy(), step - 1] = lk.double().numpy()
                self.noisy_sum[active] += lk.double()
                bad = ~torch.isfinite(lk)
                if s == self.steps_per_epoch - 1:
                    bad |= ~_healthy(params, limit[active])
            self.noisy_n += 1
            if bad.any():
                self.drop(bad, step)
                params = self.ens.parameters()
                for p in params:
                    p.requires_grad_(True)
        for p in self.ens.parameters():
            p.requires_grad_(False)

    def result(self) -> EnsembleRun:
        """The records (one row per member and recorded epoch) and the per-step noisy losses."""
        rows, base, step_loss = self.rows, self.base, self.step_loss
        records = pd.DataFrame({key: np.concatenate([r[key] for r in rows]) for key in rows[0]})
        records["diverged_step"] = np.tile(self.div_step, len(rows))
        records = records[list(RECORD_COLUMNS)].astype({"diverged": bool, "nin_mode": str})
        t = step_loss.shape[1]
        steps = pd.DataFrame(
            {
                "member": np.repeat(base["member"], t),
                "replica": np.repeat(base["replica"], t),
                "sigma": np.repeat(base["sigma"], t),
                "nin_mode": np.repeat(base["nin_mode"], t).astype(str),
                "step": np.tile(np.arange(1, t + 1), len(base["member"])),
                "noisy_loss": step_loss.ravel(),
            }
        )
        return EnsembleRun(records.sort_values(["member", "epoch"], kind="stable").reset_index(drop=True), steps)
