"""The NIN probe (paper 001): recorders for the user's own training loop, and a plain-SGD trainer.

Per record (usually per epoch), with ε = 0 and ``model.eval()`` for every evaluation (App. B):

* ``train_loss``/``train_acc``, ``test_loss``/``test_acc``: clean loss and accuracy on the full sets;
  ``noisy_loss``: the mean training batch loss (with the NINs) over the steps since the last record;
* per NIN: ``niw_norm`` = ‖W_NI‖_F, ``next_norm`` = ‖W‖_F of the "subsequent layer" (the first module
  with parameters that runs after the NIN's module; :func:`noiseprobe.probes.local.consumer_module`),
  ``grad_rms`` = ‖√⟨g²⟩‖₂ and ``hess_trace`` ± ``hess_trace_se`` = Tr⟨H⟩ (eq. 3, Hutchinson with
  Hessian-vector products) at the NIN module's output, and ``curv_niw`` = Σ_a w_aᵀ⟨H⟩w_a / ‖W_NI‖_F²,
  the local Hessian along the NIW rows w_a, which sets the NIW decay of eq. (2):

      corrected (docs/theory/noise_injection_nodes.md §4.1; the loss as implemented):  d ln‖W_NI‖/dt = −η σ_ε² curv_niw
      paper's eq. (2)/(14):                                        d ln‖W_NI‖/dt = −η σ_ε² curv_niw / 2

  (t in SGD steps; with momentum β the long-run step is η/(1−β)). ``rate_corrected``/``rate_paper``
  hold both per step; :func:`niw_decay_check` compares their integral with the measured decay;
  ``rate_mc`` ± ``rate_mc_se`` (``drift_draws`` > 0) is the same rate without the second-order
  truncation of eq. (1)→(2): η Ŵ·E_ε[∂L/∂W_NI]/‖W_NI‖ (the SGD step eq. 13 averaged over ε), from
  fresh noise draws on the probe
  batch (it differs from ``rate_corrected`` where σ_ε|W_NI| is not small against the scale on which
  the loss bends, e.g. the ReLU kinks, which the local Hessian at ε = 0 does not see);
* optionally ``full_hess_trace`` ± ``full_hess_trace_se``: Tr ∇²_θ L of all model parameters.

Losses (batch means): ``"ce"`` softmax cross-entropy on integer labels; ``"mse"`` Keras-style mean
squared error on one-hot targets, mean over the batch and the C outputs, no ½ (docs/theory/noise_injection_nodes.md §2 ambiguity 4).
Local Hessians are those of this loss, so the factor 2 of MSE is included in ``curv_niw``.

The result frame is tidy: one row per record and NIN (one row per record without NINs, ``nin`` = −1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_choice, check_int, check_real
from noiseprobe.nin.injector import NINHandle
from noiseprobe.probes.estimators import hutchinson_trace
from noiseprobe.probes.local import LocalObjective, consumer_module, full_hessian_trace

LOSSES = ("ce", "mse")
#: per-record columns shared by all NINs, then the per-NIN columns
COMMON = (
    "epoch",
    "step",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "noisy_loss",
    "full_hess_trace",
    "full_hess_trace_se",
    "diverged",
)
PER_NIN = (
    "nin",
    "module",
    "sigma",
    "niw_norm",
    "next_norm",
    "grad_rms",
    "hess_trace",
    "hess_trace_se",
    "curv_niw",
    "rate_corrected",
    "rate_paper",
    "rate_mc",
    "rate_mc_se",
)


def make_loss(loss: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The batch-mean loss ``f(output, labels)`` for ``"ce"`` or ``"mse"`` (module docstring)."""
    check_choice("loss", loss, LOSSES)
    if loss == "ce":
        return F.cross_entropy

    def mse(out: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(out, F.one_hot(y, out.shape[-1]).to(out.dtype))

    return mse


def niw_decay_rate(
    *, sigma: float, lr: float, curv_niw: float, momentum: float = 0.0, form: str = "corrected"
) -> float:
    """Per-step decay rate of ln‖W_NI‖ predicted by eq. (2): ``"corrected"`` η σ² curv (the gradient of
    ½ σ² Wᵀ⟨H⟩W; docs/theory/noise_injection_nodes.md §4.1), ``"paper"`` η σ² curv / 2 (eq. 2/14 as printed)."""
    check_choice("form", form, ("corrected", "paper"))
    check_real("sigma", sigma, lo=0.0)
    check_real("lr", lr, lo=0.0, lo_open=True)
    check_real("momentum", momentum, lo=0.0, hi=1.0, hi_open=True)
    rate = lr / (1.0 - momentum) * sigma**2 * curv_niw
    return rate if form == "corrected" else 0.5 * rate


class NINRecorder:
    """Records the probe's quantities inside any training loop.

    Call :meth:`step` after every optimiser step (noisy batch loss, step count) and :meth:`record`
    whenever a row is wanted (e.g. each epoch); :meth:`frame` returns the tidy table. ``train``/``test``
    are (X, y) pairs evaluated in full; ``probe`` is the (X, y) batch for local and full Hessians.
    ``lr``/``momentum`` enable the eq. (2) rate columns; ``drift_draws`` > 0 adds the Monte-Carlo rate.
    ``tensorboard_dir`` logs every number with ``torch.utils.tensorboard`` (optional extra ``tensorboard``).
    """

    def __init__(
        self,
        model: nn.Module,
        handle: NINHandle | None,
        *,
        loss: str = "ce",
        train: tuple[Tensor, Tensor] | None = None,
        test: tuple[Tensor, Tensor] | None = None,
        probe: tuple[Tensor, Tensor] | None = None,
        lr: float | None = None,
        momentum: float = 0.0,
        hessian_probes: int = 8,
        full_hessian: bool = False,
        drift_draws: int = 0,
        consumers: dict[str, str] | None = None,
        seed: int = 0,
        eval_batch: int = 4096,
        tensorboard_dir: str | Path | None = None,
    ) -> None:
        self.model, self.handle = model, handle
        self.loss_fn = make_loss(loss)
        self.train, self.test, self.probe = train, test, probe
        self.lr = None if lr is None else check_real("lr", lr, lo=0.0, lo_open=True)
        self.momentum = check_real("momentum", momentum, lo=0.0, hi=1.0, hi_open=True)
        self.hessian_probes = check_int("hessian_probes", hessian_probes, lo=0)
        self.full_hessian = bool(full_hessian)
        self.drift_draws = check_int("drift_draws", drift_draws, lo=0)
        self.eval_batch = check_int("eval_batch", eval_batch, lo=1)
        if (self.hessian_probes or full_hessian or drift_draws) and probe is None:
            raise ConfigError("probe", None, "an (X, y) batch when hessian_probes > 0, full_hessian or drift_draws > 0")
        self.generator = torch.Generator().manual_seed(check_int("seed", seed))
        self.rows: list[dict[str, Any]] = []
        self._noisy: list[Tensor] = []
        self._steps = 0
        self.consumers = self._find_consumers(consumers or {})
        self.writer = _summary_writer(tensorboard_dir) if tensorboard_dir is not None else None

    def _find_consumers(self, given: dict[str, str]) -> list[nn.Module | None]:
        if self.handle is None:
            return []
        x = next((d[0][:2] for d in (self.probe, self.train, self.test) if d is not None), None)
        modules = dict(self.model.named_modules())
        out: list[nn.Module | None] = []
        for name in self.handle.names:
            cname = given.get(name) or (None if x is None else consumer_module(self.model, name, x))
            if cname is not None and cname not in modules:
                raise ConfigError("consumers", cname, "a submodule name of the model")
            out.append(None if cname is None else modules[cname])
        return out

    def step(self, batch_loss: Tensor | float) -> None:
        """Note one optimiser step and its (noisy) batch loss (kept as a tensor: no device sync)."""
        self._noisy.append(torch.as_tensor(batch_loss).detach().double())
        self._steps += 1

    def _evaluate(self, data: tuple[Tensor, Tensor] | None) -> tuple[float, float]:
        if data is None:
            return math.nan, math.nan
        X, y = data
        tot_l = tot_a = 0.0
        with torch.no_grad():
            for i in range(0, X.shape[0], self.eval_batch):
                out, yb = self.model(X[i : i + self.eval_batch]), y[i : i + self.eval_batch]
                tot_l += float(self.loss_fn(out, yb)) * yb.shape[0]
                tot_a += float((out.argmax(-1) == yb).sum())
        return tot_l / X.shape[0], tot_a / X.shape[0]

    def _drift(self) -> tuple[np.ndarray, np.ndarray]:
        """Per NIN, Ŵ·E_ε[∂L/∂W_NI]/‖W_NI‖ on the probe batch over ``drift_draws`` fresh noise draws:
        (mean, standard error)."""
        assert self.handle is not None and self.probe is not None  # drift_draws > 0 needs both (__init__)
        X, y = self.probe
        niws = self.handle.niws
        ws = [w.detach() for w in niws]
        vals = []
        with torch.enable_grad(), self.handle.fresh_noise(self.generator):
            for _ in range(self.drift_draws):
                grads = torch.autograd.grad(self.loss_fn(self.model(X), y), niws, allow_unused=True)
                vals.append(
                    [
                        0.0 if g is None else float((g * w).sum() / w.pow(2).sum().clamp_min(1e-300))
                        for g, w in zip(grads, ws)
                    ]
                )
        v = np.asarray(vals)
        se = v.std(0, ddof=1) / math.sqrt(len(v)) if len(v) > 1 else np.full(v.shape[1], math.nan)
        return v.mean(0), se

    def _nin_rows(self, finite: bool) -> list[dict[str, Any]]:
        rows = []
        use_mc = finite and self.drift_draws and self.lr is not None
        mc_mean, mc_se = self._drift() if use_mc else (None, None)
        assert self.handle is not None  # rows per NIN are taken only with a handle
        for i, (name, node) in enumerate(zip(self.handle.names, self.handle.node_list)):
            w = node.weight.detach()
            consumer = self.consumers[i]
            nxt = getattr(consumer, "weight", None) if consumer is not None else None
            row: dict[str, Any] = {
                "nin": i,
                "module": name,
                "sigma": float(node.sigma),
                "niw_norm": float(w.norm()),
                "next_norm": math.nan if nxt is None else float(nxt.detach().norm()),
            }
            row.update(grad_rms=math.nan, hess_trace=math.nan, hess_trace_se=math.nan, curv_niw=math.nan)
            if finite and self.hessian_probes:
                assert self.probe is not None  # required when hessian_probes > 0 (__init__)
                obj = LocalObjective(self.model, name, self.loss_fn, *self.probe)
                row["grad_rms"] = obj.grad_rms()
                row["hess_trace"], row["hess_trace_se"] = hutchinson_trace(
                    obj.hvp,
                    tuple(obj.z.shape),
                    self.hessian_probes,
                    self.generator,
                    dtype=obj.z.dtype,
                    device=obj.z.device,
                    block=self.hessian_probes,
                )
                n, z = obj.z.shape[0], obj.z
                rows_dir = torch.stack([node.expand(wa.expand(n, -1), z.dim()).expand_as(z) for wa in w.to(z.dtype)])
                row["curv_niw"] = obj.curvature(rows_dir) / max(float(w.pow(2).sum()), 1e-300)
            for form in ("corrected", "paper"):
                row[f"rate_{form}"] = (
                    math.nan
                    if self.lr is None
                    else niw_decay_rate(
                        sigma=row["sigma"], lr=self.lr, curv_niw=row["curv_niw"], momentum=self.momentum, form=form
                    )
                )
            lr_eff = math.nan if self.lr is None else self.lr / (1.0 - self.momentum)
            row["rate_mc"] = lr_eff * mc_mean[i] if mc_mean is not None else math.nan
            row["rate_mc_se"] = lr_eff * mc_se[i] if mc_se is not None else math.nan
            rows.append(row)
        return rows

    def record(self, epoch: int, *, step: int | None = None) -> list[dict[str, Any]]:
        """Evaluate (ε = 0, eval mode) and append one row per NIN; returns the new rows. ``epoch`` is
        the record's index (also the TensorBoard step); ``step`` defaults to the count of :meth:`step` calls."""
        was_training = self.model.training
        self.model.eval()
        try:
            tl, ta = self._evaluate(self.train)
            vl, va = self._evaluate(self.test)
            losses = [v for v, d in ((tl, self.train), (vl, self.test)) if d is not None]
            finite = all(math.isfinite(v) for v in losses)
            params = list(self.model.parameters()) + (self.handle.niws if self.handle is not None else [])
            finite = finite and all(bool(torch.isfinite(p).all()) for p in params)
            common = {
                "epoch": epoch,
                "step": self._steps if step is None else step,
                "train_loss": tl,
                "train_acc": ta,
                "test_loss": vl,
                "test_acc": va,
                "noisy_loss": float(torch.stack(self._noisy).mean()) if self._noisy else math.nan,
                "full_hess_trace": math.nan,
                "full_hess_trace_se": math.nan,
                "diverged": not finite,
            }
            if finite and self.full_hessian:
                assert self.probe is not None  # required with full_hessian (__init__)
                common["full_hess_trace"], common["full_hess_trace_se"] = full_hessian_trace(
                    self.model,
                    self.loss_fn,
                    *self.probe,
                    n_probes=max(self.hessian_probes, 1),
                    generator=self.generator,
                )
            nin_rows = self._nin_rows(finite) if self.handle is not None else [{"nin": -1, "module": ""}]
        finally:
            self.model.train(was_training)
        self._noisy = []
        rows = [{**common, **r} for r in nin_rows]
        self.rows.extend(rows)
        if self.writer is not None:
            self._log(rows)
        return rows

    def _log(self, rows: list[dict[str, Any]]) -> None:
        assert self.writer is not None  # called only with a writer
        step = rows[0]["epoch"]
        for key in COMMON[2:-1]:
            if math.isfinite(rows[0][key]):
                self.writer.add_scalar(f"nin/{key}", rows[0][key], step)
        for r in rows:
            for key in PER_NIN[2:]:
                if key in r and isinstance(r[key], float) and math.isfinite(r[key]):
                    self.writer.add_scalar(f"nin{r['nin']}_{r['module']}/{key}", r[key], step)
        self.writer.flush()

    def frame(self) -> pd.DataFrame:
        """All rows so far, as a tidy DataFrame (columns ``COMMON + PER_NIN``)."""
        df: pd.DataFrame = pd.DataFrame(self.rows, columns=list(COMMON + PER_NIN))
        typed: pd.DataFrame = df.astype({"diverged": bool})
        return typed

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _summary_writer(logdir: str | Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ConfigError(
            "tensorboard_dir",
            str(logdir),
            "a path, with the optional 'tensorboard' package installed (pip install tensorboard)",
        ) from err
    return SummaryWriter(log_dir=str(logdir))


def _unpack(data: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if all(hasattr(data, a) for a in ("X_train", "y_train", "X_test", "y_test")):
        return data.X_train, data.y_train, data.X_test, data.y_test
    if isinstance(data, Sequence) and len(data) == 4:
        return tuple(data)
    raise ConfigError("data", type(data).__name__, "(X_train, y_train, X_test, y_test) tensors or a Dataset")


def train(
    model: nn.Module,
    handle: NINHandle | None,
    data: Any,
    *,
    loss: str = "ce",
    lr: float,
    batch_size: int,
    epochs: int,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    seed: int = 0,
    record_every: int = 1,
    hessian_probes: int = 8,
    probe_samples: int = 2000,
    full_hessian: bool = False,
    drift_draws: int = 0,
    tensorboard_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Train ``model`` (with the NINs of ``handle``, or none) by minibatch SGD and probe it.

    Sampling without replacement: a fresh permutation of the training set per epoch (seeded by ``seed``),
    the last incomplete batch dropped; "epoch"-mode NINs redraw ε at each epoch after the first.
    ``weight_decay`` applies to the model's parameters, not to the NIWs. Records at epoch 0, every
    ``record_every`` epochs and at the last epoch; local Hessians on ``probe_samples`` fixed training
    samples. A non-finite batch loss or parameter stops training with a final row ``diverged = True``.
    Returns the recorder's tidy frame (one row per recorded epoch and NIN).
    """
    X_tr, y_tr, X_te, y_te = _unpack(data)
    check_real("lr", lr, lo=0.0, lo_open=True)
    check_int("batch_size", batch_size, lo=1, hi=X_tr.shape[0])
    check_int("epochs", epochs, lo=0)
    check_real("weight_decay", weight_decay, lo=0.0)
    check_int("record_every", record_every, lo=1)
    check_int("probe_samples", probe_samples, lo=1)
    tables = [len(node.table) for node in handle.node_list if hasattr(node, "table")] if handle is not None else []
    if any(n != X_tr.shape[0] for n in tables):
        raise ConfigError("n_train", tables[0], f"the training-set size {X_tr.shape[0]} (attach_nins(n_train=...))")
    gen = torch.Generator().manual_seed(check_int("seed", seed))
    probe_idx = torch.randperm(X_tr.shape[0], generator=gen)[:probe_samples]
    rec = NINRecorder(
        model,
        handle,
        loss=loss,
        train=(X_tr, y_tr),
        test=(X_te, y_te),
        probe=(X_tr[probe_idx], y_tr[probe_idx]),
        lr=lr,
        momentum=momentum,
        hessian_probes=hessian_probes,
        full_hessian=full_hessian,
        drift_draws=drift_draws,
        seed=seed,
        tensorboard_dir=tensorboard_dir,
    )
    groups = [
        {"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay},
        {"params": handle.niws if handle is not None else [], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError("model", type(model).__name__, "a model or NINs with trainable parameters")
    opt = torch.optim.SGD(groups, lr=lr, momentum=momentum)
    try:
        rec.record(0)
        _epochs(model, handle, rec, opt, X_tr, y_tr, gen, batch_size=batch_size, epochs=epochs, every=record_every)
    finally:
        rec.close()
    return rec.frame()


def _epochs(
    model: nn.Module,
    handle: NINHandle | None,
    rec: NINRecorder,
    opt: torch.optim.Optimizer,
    X_tr: Tensor,
    y_tr: Tensor,
    gen: torch.Generator,
    *,
    batch_size: int,
    epochs: int,
    every: int,
) -> None:
    """The SGD epochs of :func:`train` (after the record at epoch 0): one permutation per epoch, recorded
    every ``every`` epochs, at the last and at a non-finite batch loss, which ends training."""
    n_batches = X_tr.shape[0] // batch_size
    model.train()
    for epoch in range(1, epochs + 1):
        if handle is not None and epoch > 1:
            handle.new_epoch()
        perm = torch.randperm(X_tr.shape[0], generator=gen)
        bad_step = False
        for b in range(n_batches):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            if handle is not None:
                handle.set_sample_indices(idx)
            batch_loss = rec.loss_fn(model(X_tr[idx]), y_tr[idx])
            if not torch.isfinite(batch_loss):
                bad_step = True
                break
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            opt.step()
            if handle is not None:
                handle.new_step()
            rec.step(batch_loss.detach())
        if bad_step or epoch % every == 0 or epoch == epochs:
            rows = rec.record(epoch)
            for r in rows:
                r["diverged"] = r["diverged"] or bad_step
            if rows[0]["diverged"]:
                break


def _series(frame: pd.DataFrame, nin: int) -> pd.DataFrame:
    sub: pd.DataFrame = frame[(frame["nin"] == nin) & ~frame["diverged"].astype(bool)].sort_values("step")
    if len(sub) < 2:
        raise ConfigError("frame", f"{len(sub)} finite records of NIN {nin}", "at least 2 records")
    return sub


def decay_times(
    frame: pd.DataFrame,
    *,
    nin: int = 0,
    x: str = "epoch",
    method: str = "efold",
    window: tuple[float, float] | None = (0.9, 0.1),
) -> dict[str, float]:
    """τ_NIW, τ_train, τ_test (Fig. 1 centre) from a probe frame, in units of column ``x`` (epoch/step).

    ``"efold"`` (docs/theory/noise_injection_nodes.md §7, primary): first e-fold time of ‖W_NI‖/‖W_NI(0)‖ and of the loss excess
    (L − L_∞)/(L_0 − L_∞), L_∞ the median of the last 10 % of the records. ``"exp"`` (secondary, what the
    paper appears to have done): least-squares fit A e^{−t/τ} + C over ``window``; adds ``*_err``.
    Uses :mod:`noiseprobe.core.fitting`. NaN where no decay is seen.
    """
    from noiseprobe.core.fitting import efold_time, fit_exponential

    check_choice("method", method, ("efold", "exp"))
    check_choice("x", x, ("epoch", "step"))
    sub = _series(frame, nin)
    t = sub[x].to_numpy(float)
    out: dict[str, float] = {}
    for key, col in (("niw", "niw_norm"), ("train", "train_loss"), ("test", "test_loss")):
        y = sub[col].to_numpy(float)
        if method == "efold":
            excess = y if key == "niw" else y - np.median(y[-max(1, len(y) // 10) :])
            out[f"tau_{key}"] = float(efold_time(t, excess))
        else:
            fit = fit_exponential(t, y, offset=True, window=window)
            out[f"tau_{key}"], out[f"tau_{key}_err"] = float(fit.tau[0]), float(fit.tau_err[0])
    return out


def niw_decay_check(frame: pd.DataFrame, *, nin: int = 0) -> pd.DataFrame:
    """Measured −ln(‖W_NI(t)‖/‖W_NI(0)‖) against the eq. (2) prediction integrated over steps
    (trapezoid rule over the records of ``rate_corrected`` / ``rate_paper``; docs/theory/noise_injection_nodes.md §7: use the
    current curvature, not its t = 0 value). Columns: epoch, step, measured, corrected, paper."""
    from scipy.integrate import cumulative_trapezoid

    sub = _series(frame, nin)
    steps = sub["step"].to_numpy(float)
    out: pd.DataFrame = pd.DataFrame(
        {
            "epoch": sub["epoch"].to_numpy(),
            "step": steps,
            "measured": -np.log(sub["niw_norm"].to_numpy(float) / sub["niw_norm"].iloc[0]),
        }
    )
    for form in ("corrected", "paper"):
        out[form] = cumulative_trapezoid(sub[f"rate_{form}"].to_numpy(float), steps, initial=0.0)
    return out


def efold_exponent(frame: pd.DataFrame, *, nin: int = 0, form: str = "corrected") -> float:
    """The eq. (9)-style diagnostic of docs/theory/noise_injection_nodes.md §7: the integrated eq. (2) exponent
    Σ_t η σ_ε² curv_niw(t) at the first e-fold step of ‖W_NI‖ (≈ 1 when eq. (2) holds; NaN if no e-fold)."""
    from noiseprobe.core.fitting import efold_time

    check_choice("form", form, ("corrected", "paper"))
    chk = niw_decay_check(frame, nin=nin)
    t_e = float(efold_time(chk["step"].to_numpy(float), np.exp(-chk["measured"].to_numpy(float))))
    return float(np.interp(t_e, chk["step"], chk[form])) if math.isfinite(t_e) else math.nan
