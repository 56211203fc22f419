"""Predicted next to measured: the papers' theories evaluated live on what the monitor measures.

``fluctuation`` (paper 002, Theorem 1, eq. 3): near a minimum, SGD with momentum μ and learning rate Λ
reaches a stationary covariance Σ of the parameters. The monitor restricts H and C to the top-k Hessian
eigendirections U (warm-started Lanczos; θ the Ritz values):

    H_k = diag(θ),  C_k = Uᵀ C U = P_cᵀ P_c / ((N − 1) S),  P_c = the centred projections (g_i − ḡ)·U,
    Λ_k = Uᵀ diag(lr) U  (a scalar with one learning rate),  weight decay λ_wd adds Uᵀ diag(λ_wd) U to H,

solves eq. (3) for Σ_k (:func:`noiseprobe.minibatch.fluctuation.solve_fluctuation`) and predicts the
stationary excess loss ½ tr(H_k Σ_k) and, for Gaussian w, Var L(w_t) = ½ tr((H_k Σ_k)²). The batch loss
the user records, L_B(w_t), fluctuates also because the batch changes: the batch is independent of w_t,
so Var L_B(w_t) = Var L(w_t) + E Var_i ℓ_i / S (sampling with replacement), the second term from the
measured batch's per-sample losses. The measured side is the sample variance (ddof 1) of the batch
losses passed to ``NoiseMonitor.step(..., loss=...)`` since the previous measurement (at most
``every`` of them), with a batch-means standard error. Thm 1's heavy ball m_t = μm_{t−1} + g_t,
w_t = w_{t−1} − Λm_t is ``torch.optim.SGD``'s update. The prediction applies near a minimum, once the
loss is stationary over that window, to the top-k directions only (flatter directions add to the
measured variance), with a single-momentum ``torch.optim.SGD`` (dampening d enters as Λ(1 − d);
Nesterov and other optimizers: NaN). Without a stationary state (a negative θ, or lr·θ above 2(1+μ))
the values are NaN and ``fluct_reason`` says why.

``label_noise_reg`` and ``dropout_reg`` (paper 003): the regulariser E of the noise in use on a fixed
probe batch (the first measured one) in eval mode, its measured change per step between measurements,
and the predicted slow drift along the zero-loss manifold Γ, dE/dk = −σ² Σ_i (lr_i/(1−μ))^q (P∇E)_i²,
P = I − UUᵀ removing the top-k Hessian eigenvectors U (the normal space of Γ when its codimension ≤ k):

* label noise of standard deviation σ (``LabelNoiseReg(sigma=σ)``; ℓ = ½|f − y|²): the library's
  regulariser is the constant ½ (Example 1.8 is degenerate, Theorem B), and the motion on the clock
  t = α²σ²k is ∂_tW = −(1/(4N)) P∇ tr∇²L (docs/theory/singular_limits.md §7.5) with N → the batch size S, so
  E = R = tr Ḡ/(4S), Ḡ = (1/N) Σ_n Σ_o ∇f_no ∇f_noᵀ (= ∇²L on Γ), by fixed Rademacher probes in output
  space, q = 2;
* dropout (every call m of an ``nn.Dropout``/``Dropout1d/2d/3d`` module of rate p_m, σ_m² = p_m/(1 − p_m);
  functional dropout, e.g. inside ``scaled_dot_product_attention``, is not seen): E = Σ_m σ_m² Reg_m with
  Reg_m = ½ Σ_{n,j} h_nj² ∂²L/∂h_nj² the Laplacian of eq. fthA:GF in PyTorch's per-sample, per-unit masks
  (per-channel for Dropout1d/2d/3d: h_nj the channel, ∂² along it) at the dropout input h (η = 0: eval
  mode), the leading-order excess loss E L̂ − L; q = 1 (Theorem A, t = ασ²k). It is the Bernoulli Reg_B
  exactly when the loss is quadratic in the masks (dropout before the last linear layer with a square
  loss; docs/theory/singular_limits.md §7.3), else its second-order approximation.

``niw_decay`` (paper 001, eq. 2 with docs/theory/noise_injection_nodes.md's factor-2 correction): with NINs declared by
``NIWDecay(handle)``, per NIN i the measured decay rate of ln‖W_NI‖ per step between the previous and this
measurement, beside η σ_ε² curv_niw/(1 − μ) (:func:`noiseprobe.nin.probe.niw_decay_rate`, form
"corrected") with curv_niw the local Hessian along the NIW rows on the measured batch at ε = 0 (the
library's :class:`~noiseprobe.nin.probe.NINRecorder`), and the phase so far
(:func:`noiseprobe.nin.phases.classify` on the NIW norms and clean batch losses of all measurements,
catapult by its transient proxy).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_real
from noiseprobe.minibatch.fluctuation import NoStationaryState, solve_fluctuation
from noiseprobe.monitor.context import COLD_MIN_DIM, Context, top_eigen
from noiseprobe.monitor.metric import Metric, register_metric
from noiseprobe.nin.injector import NINHandle
from noiseprobe.nin.phases import PHASES, classify
from noiseprobe.nin.probe import NINRecorder, niw_decay_rate
from noiseprobe.probes.eigensolvers import Eigenpairs
from noiseprobe.probes.operators import Hessian
from noiseprobe.probes.persample import default_forward
from noiseprobe.probes.sample_losses import model_output

#: Hutchinson probes of the NIN recorder's local Hessian trace (a by-product; curv_niw is exact)
NIN_HESSIAN_PROBES = 4
#: blocks of the batch-means standard error of the measured loss variance (needs >= 2 per block)
LOSS_BLOCKS = 10
#: fixed probes of the label-noise trace and of dropout Laplacians over more than DROPOUT_EXACT_MAX features
REG_PROBES, DROPOUT_EXACT_MAX = 16, 64
#: the multiplicative dropout modules (per-feature masks; per-channel for the 1d/2d/3d ones)
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
FLUCT_KEYS = (
    "fluct_excess_pred",
    "fluct_loss_sd_pred",
    "fluct_sampling_var",
    "fluct_batch_loss_var_pred",
    "fluct_batch_loss_var",
    "fluct_batch_loss_var_se",
    "fluct_losses",
)


@contextmanager
def kept_flags(model: nn.Module) -> Iterator[None]:
    """Restore every module's train/eval flag on exit (metrics after this one see the run's own flags)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t


def _sgd_parameters(ctx: Context) -> tuple[Tensor, Tensor, float] | str:
    """(per-parameter lr·(1 − dampening), per-parameter weight decay, μ), flat in trainable order, or the
    reason Theorem 1 does not describe this optimizer."""
    opt = ctx.optimizer
    if opt is None:
        return "needs the optimizer (mon.step(batch, optimizer))"
    if not isinstance(opt, torch.optim.SGD):
        return "needs torch.optim.SGD (paper 002 Thm 1: heavy-ball SGD)"
    groups = opt.param_groups
    if any(g.get("nesterov", False) for g in groups):
        return "Nesterov momentum is not Thm 1's heavy ball"
    mus = {float(g.get("momentum", 0.0)) for g in groups}
    if len(mus) > 1:
        return "parameter groups with different momenta"
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    lr, wd = torch.full((len(params),), math.nan, dtype=torch.float64), torch.zeros(len(params), dtype=torch.float64)
    pos = {id(p): i for i, p in enumerate(params)}
    for g in groups:
        mu = float(g.get("momentum", 0.0))
        damp = float(g.get("dampening", 0.0)) if mu > 0 else 0.0
        for p in g["params"]:
            if id(p) in pos:
                lr[pos[id(p)]] = float(g["lr"]) * (1.0 - damp)
                wd[pos[id(p)]] = float(g.get("weight_decay", 0.0))
    if bool(torch.isnan(lr).any()):
        return "a trainable parameter is not in the optimizer"
    sizes = torch.tensor([p.numel() for p in params])
    return lr.repeat_interleave(sizes), wd.repeat_interleave(sizes), mus.pop()


def _restricted(u: Tensor, diag: Tensor) -> np.ndarray:
    """Uᵀ diag(d) U, (k, k) float64."""
    u = u.double()
    m = u.T @ (diag.to(u.device).reshape(-1, 1) * u)
    return ((m + m.T) / 2).cpu().numpy()


def _output(ctx: Context, inputs: Any) -> Tensor:
    return model_output((ctx.forward or default_forward)(ctx.model, inputs))


# -- paper 002: stationary loss fluctuation -----------------------------------------------------------
@register_metric
class Fluctuation(Metric):
    """Paper 002's stationary loss fluctuation on the top-k Hessian directions (Thm 1, eq. 3) beside the
    measured batch-loss variance (module docstring): ``fluct_excess_pred`` ½ tr(H_kΣ_k),
    ``fluct_loss_sd_pred`` √(½ tr((H_kΣ_k)²)), ``fluct_batch_loss_var_pred`` = that squared + Var_i ℓ_i/S,
    ``fluct_batch_loss_var`` (± ``_se``) from the ``loss=`` values passed to ``mon.step`` since the last
    measurement, ``fluct_reason`` when there is no prediction."""

    name = "fluctuation"
    per_sample_products = True

    def __init__(self) -> None:
        self.losses: list[Tensor] = []  # since the last measurement, as tensors: no device sync per step
        self._warm: Eigenpairs | None = None

    def on_step(self, step: int, loss: Tensor | None) -> None:
        if loss is not None:
            self.losses.append(loss)

    def _measured_losses(self) -> tuple[float, float, int]:
        """(sample variance of the batch losses recorded since the last measurement, its standard error by
        ``LOSS_BLOCKS`` batch means of the squared deviations (autocorrelation-robust while a block outlasts
        the loss's correlation time), their count); empties the buffer."""
        if not self.losses:
            return math.nan, math.nan, 0
        vals = torch.stack([v.reshape(()).double().cpu() for v in self.losses]).numpy()
        self.losses.clear()
        n = len(vals)
        if n < 2:
            return math.nan, math.nan, n
        dev = (vals - vals.mean()) ** 2 * (n / (n - 1))
        blocks = [b.mean() for b in np.array_split(dev, LOSS_BLOCKS)] if n >= 2 * LOSS_BLOCKS else []
        se = float(np.std(blocks, ddof=1) / math.sqrt(len(blocks))) if blocks else math.nan
        return float(dev.mean()), se, n

    def param_vectors(self, top_k: int) -> int:
        """The top-k Hessian pairs by Lanczos (shared with ``top_k_h``): 2·(k + COLD_MIN_DIM + 7)."""
        return 2 * (top_k + COLD_MIN_DIM + 7)

    def measure(self, ctx: Context) -> dict[str, Any]:
        measured, se, count = self._measured_losses()
        out: dict[str, Any] = dict.fromkeys(FLUCT_KEYS, math.nan)
        out.update(
            fluct_batch_loss_var=measured, fluct_batch_loss_var_se=se, fluct_losses=float(count), fluct_reason=""
        )
        sgd = _sgd_parameters(ctx)
        if isinstance(sgd, str):
            out["fluct_reason"] = sgd
            return out
        lr, wd, mu = sgd
        k = min(ctx.top_k, ctx.hessian.num_params)
        pairs = self._warm = ctx.hessian_top(k, self._warm)  # the same operator and k as top_k_h: computed once
        u, theta = pairs.eigenvectors, pairs.eigenvalues.double().cpu().numpy()
        proj = ctx.grads.jvp(u.to(ctx.grads.dtype)).double()  # (N, k): g_i·u_j
        proj = proj - proj.mean(0, keepdim=True)
        c_k = (proj.T @ proj).cpu().numpy() / ((ctx.grads.n - 1) * ctx.batch_size)
        h_k = np.diag(theta)
        lam = lr[0].item() if bool((lr == lr[0]).all()) else _restricted(u, lr)
        try:
            sigma = solve_fluctuation(H=h_k + _restricted(u, wd), C=(c_k + c_k.T) / 2, lr=lam, momentum=mu)
        except NoStationaryState as exc:
            out["fluct_reason"] = str(exc)
            return out
        hs = h_k @ sigma
        var_l = 0.5 * float(np.trace(hs @ hs))
        with torch.no_grad():
            per_sample = ctx.loss_fn(_output(ctx, ctx.inputs), ctx.targets).double()
        sampling = float(per_sample.var()) / ctx.batch_size
        out.update(
            fluct_excess_pred=0.5 * float(np.trace(hs)),
            fluct_loss_sd_pred=math.sqrt(max(var_l, 0.0)),
            fluct_sampling_var=sampling,
            fluct_batch_loss_var_pred=var_l + sampling,
        )
        return out


# -- paper 001: NIW decay ------------------------------------------------------------------------------
@register_metric
class NIWDecay(Metric):
    """``NIWDecay(handle)``, the NINs :func:`noiseprobe.nin.injector.attach_nins` attached to the monitored
    model. Per NIN i: measured ``nin{i}_rate`` = −Δ ln‖W_NI‖/Δstep since the previous measurement, paper
    001's eq. (2) corrected now (``nin{i}_rate_pred``) and averaged over the interval (trapezoid,
    ``_pred_interval``), ``nin{i}_niw_norm``, ``nin{i}_curv`` and the phase so far ``nin{i}_phase``."""

    name = "niw_decay"
    in_all = False
    needs = "handle"

    def __init__(self, handle: NINHandle) -> None:
        if not isinstance(handle, NINHandle):
            raise ConfigError("handle", type(handle).__name__, "the NINHandle returned by attach_nins")
        self.handle = handle
        self.recorder: NINRecorder | None = None
        self.steps: list[int] = []
        self.norms: list[list[float]] = []
        self.losses: list[float] = []
        self.pred: dict[int, float] = {}

    def _lr(self, ctx: Context, i: int) -> tuple[float, float]:
        """(lr, momentum) of the optimizer group holding NIN i's weight (NaN, 0 when not in the optimizer)."""
        niw = self.handle.niws[i]
        for g in [] if ctx.optimizer is None else ctx.optimizer.param_groups:
            if any(p is niw for p in g["params"]):
                return float(g["lr"]), float(g.get("momentum", 0.0))
        return math.nan, 0.0

    def measure(self, ctx: Context) -> dict[str, Any]:
        batch = (ctx.inputs, ctx.targets)
        rec = self.recorder
        if rec is None:
            rec = self.recorder = NINRecorder(
                model=ctx.model, handle=self.handle, probe=batch, hessian_probes=NIN_HESSIAN_PROBES
            )
        per_sample = ctx.loss_fn  # not ctx itself: the recorder outlives this measurement's graphs
        rec.loss_fn = lambda out, y: per_sample(out, y).mean()
        rec.probe = batch
        with kept_flags(ctx.model):  # record() leaves every module in the model's top-level mode
            rows = rec.record(epoch=len(self.steps), step=ctx.step)
            ctx.model.eval()  # ε = 0
            with torch.no_grad():
                clean = float(ctx.loss_fn(_output(ctx, ctx.inputs), ctx.targets).mean())
        step, prev_step = ctx.step, (self.steps[-1] if self.steps else None)
        self.steps.append(step)
        self.losses.append(clean)
        self.norms.append([r["niw_norm"] for r in rows])
        out: dict[str, Any] = {}
        for i, r in enumerate(rows):
            lr, mu = self._lr(ctx, i)
            pred = (
                niw_decay_rate(sigma=r["sigma"], lr=lr, curv_niw=r["curv_niw"], momentum=mu, form="corrected")
                if math.isfinite(lr) and math.isfinite(r["curv_niw"])
                else math.nan
            )
            norms = np.asarray([n[i] for n in self.norms])
            rate = (
                -math.log(norms[-1] / norms[-2]) / (step - prev_step)
                if prev_step is not None and step > prev_step
                else math.nan
            )
            phase = (
                PHASES[int(classify(niw_norm=norms[None, :], loss=np.asarray(self.losses)[None, :])[0])]
                if len(norms) >= 2
                else ""
            )
            out.update(
                {
                    f"nin{i}_niw_norm": r["niw_norm"],
                    f"nin{i}_curv": r["curv_niw"],
                    f"nin{i}_rate": rate,
                    f"nin{i}_rate_pred": pred,
                    f"nin{i}_rate_pred_interval": 0.5 * (self.pred.get(i, math.nan) + pred),
                    f"nin{i}_phase": phase,
                }
            )
            self.pred[i] = pred
        return out


# -- paper 003: regularisers of label noise and dropout ----------------------------------------------
class _Regulariser(Metric):
    """E on a fixed probe batch (the first measured batch), its measured change per step since the previous
    measurement, and the predicted one dE/dk = −σ² Σ_i (α_i/(1−μ))^q (P∇E)_i², P = I − UUᵀ with U the
    top-k Hessian eigenvectors of the probe batch (the normal space of Γ), all in eval mode."""

    prefix: str  # the columns' name
    power: int  # q
    sigma2: float  # σ² in front (1 for dropout: its rates are inside E)

    def __init__(self) -> None:
        self.batch: tuple[Any, Any] | None = None
        self.step: int | None = None
        self.value, self.pred = math.nan, math.nan
        self._warm: Eigenpairs | None = None

    def value_on(self, ctx: Context, inputs: Any, targets: Any) -> Tensor:
        """E on (inputs, targets), differentiable in the parameters."""
        raise NotImplementedError

    def param_vectors(self, top_k: int) -> int:
        """Its probe block and gradients (2·REG_PROBES) beside the top-k Hessian pairs of its projector."""
        return 2 * REG_PROBES + 2 * (top_k + COLD_MIN_DIM + 7)

    def measure(self, ctx: Context) -> dict[str, Any]:
        if self.batch is None:
            self.batch = (ctx.inputs, ctx.targets)
        inputs, targets = self.batch
        name = self.prefix
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        sgd = _sgd_parameters(ctx)
        with kept_flags(ctx.model), torch.enable_grad():
            ctx.model.eval()
            e = self.value_on(ctx, inputs, targets)
            grads = torch.autograd.grad(e, params, allow_unused=True)
            grad = torch.cat(
                [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads, strict=True)]
            ).detach()
            hess = (
                None if isinstance(sgd, str) else Hessian(ctx.model, ctx.loss_fn, inputs, targets, forward=ctx.forward)
            )
        step, val = ctx.step, float(e.detach())
        out: dict[str, Any] = {
            name: val,
            f"{name}_rate": math.nan,
            f"{name}_rate_pred": math.nan,
            f"{name}_rate_pred_interval": math.nan,
            f"{name}_reason": "",
        }
        if self.step is not None and step > self.step:
            out[f"{name}_rate"] = (val - self.value) / (step - self.step)
        pred = math.nan
        if isinstance(sgd, str) or hess is None:
            out[f"{name}_reason"] = str(sgd)
        else:
            lr, _, mu = sgd
            self._warm = top_eigen(hess, min(ctx.top_k, hess.num_params), self._warm)
            u = self._warm.eigenvectors.to(grad)
            pg = (grad - u @ (u.T @ grad)).double()
            pred = -self.sigma2 * float(((lr.to(pg.device) / (1 - mu)) ** self.power * pg**2).sum())
        out[f"{name}_rate_pred"], out[f"{name}_rate_pred_interval"] = pred, 0.5 * (self.pred + pred)
        self.step, self.value, self.pred = step, val, pred
        return out


@register_metric
class LabelNoiseReg(_Regulariser):
    """``LabelNoiseReg(sigma=σ)``: the training loop adds label noise of standard deviation σ to the targets
    (per sample and output, square loss ℓ = ½|f − y|²; for ℓ = c|f − y|² declare 2cσ). Paper 003 Example
    1.8, Theorem B (docs/theory/singular_limits.md §7.5): ``reg_label`` R = tr Ḡ/(4S) (= tr∇²L/(4S) on Γ),
    drift per step ΔW = −(α/(1−μ))² σ² P∇R (clock t = α²σ²k, N → the batch size S): ``reg_label_rate``
    beside ``reg_label_rate_pred`` (``_pred_interval``, ``_reason``)."""

    name = "label_noise_reg"
    in_all = False
    needs = "sigma=..."
    prefix, power = "reg_label", 2

    def __init__(self, *, sigma: float) -> None:
        super().__init__()
        self.sigma = check_real("sigma", sigma, lo=0.0, lo_open=True)
        self.sigma2 = self.sigma**2

    def value_on(self, ctx: Context, inputs: Any, targets: Any) -> Tensor:
        """R = tr Ḡ/(4S), Ḡ = (1/N) Σ_n Σ_o ∇f_no ∇f_noᵀ (= ∇²L on Γ), by ``REG_PROBES`` fixed Rademacher
        probes r in output space: ‖J‖_F² = E|Jᵀr|² (one batched backward, graph kept for ∇R)."""
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        out = _output(ctx, inputs)
        gen = torch.Generator().manual_seed(0)
        r = (torch.randint(0, 2, (REG_PROBES, *out.shape), generator=gen) * 2 - 1).to(out)
        jtr = torch.autograd.grad(out, params, grad_outputs=r, is_grads_batched=True, create_graph=True)
        sq = torch.stack([(g.reshape(REG_PROBES, -1) ** 2).sum(1) for g in jtr]).sum(0)  # |Jᵀr_p|²
        return sq.mean() / (4 * ctx.batch_size * out.shape[0])


@register_metric
class DropoutReg(_Regulariser):
    """Dropout (paper 003 §7.3, Theorem A), every ``nn.Dropout``/``Dropout1d/2d/3d`` module of the model
    with p > 0: ``reg_dropout`` E = Σ_m σ_m² Reg_m (the leading-order excess loss E L̂ − L), drift per step
    ΔW = −(α/(1−μ)) P∇E (clock t = ασ²k): ``reg_dropout_rate`` beside ``reg_dropout_rate_pred``."""

    name = "dropout_reg"
    in_all = False
    prefix, power, sigma2 = "reg_dropout", 1, 1.0

    def value_on(self, ctx: Context, inputs: Any, targets: Any) -> Tensor:
        """Σ_m σ_m² Reg_m over the calls m of the model's dropout modules (σ_m² = p/(1−p)),
        Reg_m = ½ Σ_{n,j} h_nj² ∂²L/∂h_nj², the Laplacian of eq. fthA:GF in the per-sample, per-feature masks
        η_nj at the dropout input h (eval mode: η = 0). Exact per feature (one product per feature, up to
        ``DROPOUT_EXACT_MAX``), else ``REG_PROBES`` fixed Rademacher feature probes; samples do not couple
        in eval mode, so each probe covers all samples."""
        drops = [m for m in ctx.model.modules() if isinstance(m, DROPOUTS) and m.p > 0]
        if not drops:
            raise ConfigError("metrics", "dropout_reg", "a model with nn.Dropout/Dropout1d/2d/3d modules of p > 0")
        seen: list[tuple[nn.Module, Tensor]] = []  # per call: a module may run several times
        hooks = [m.register_forward_hook(lambda mod, _a, out: seen.append((mod, out))) for m in drops]
        try:
            loss = ctx.loss_fn(_output(ctx, inputs), targets).mean()
        finally:
            for hook in hooks:
                hook.remove()
        grads = torch.autograd.grad(loss, [h for _, h in seen], create_graph=True)
        gen = torch.Generator().manual_seed(0)
        total = loss.new_zeros(())
        for (m, h), g in zip(seen, grads, strict=True):
            # one mask entry per feature (nn.Dropout) or per channel, broadcast over the rest (nn.Dropout1d/2d/3d)
            mask = tuple(h.shape[1:]) if type(m) is nn.Dropout else (h.shape[1],) + (1,) * (h.dim() - 2)
            feat = math.prod(mask)
            if feat <= DROPOUT_EXACT_MAX:
                z, scale = torch.eye(feat), 1.0
            else:
                z, scale = torch.randint(0, 2, (REG_PROBES, feat), generator=gen) * 2.0 - 1.0, 1.0 / REG_PROBES
            v = h.unsqueeze(0) * z.to(h).reshape(z.shape[0], 1, *mask)
            (hv,) = torch.autograd.grad(g, h, grad_outputs=v, is_grads_batched=True, create_graph=True)
            p = float(m.p)  # type: ignore[arg-type]  # m is a dropout module: its p is a float, typed Tensor | Module
            total = total + p / (1 - p) * 0.5 * scale * (v * hv).sum()
        return total
