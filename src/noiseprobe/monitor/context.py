"""One measurement's :class:`Context`: the batch, the model and optimizer, and the ingredients metrics share.

A context lives for one measurement: each shared ingredient (per-sample gradients, their Gram matrix, the
noise scale, the Hessian operator, its top eigenpairs) is computed at most once, when a metric first asks
for it, and dropped with the context. What a metric carries from one measurement to the next (warm
starts, pools, buffers) lives in the metric object itself (:mod:`noiseprobe.monitor.metric`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from noiseprobe.core.errors import ConfigError, NoPerSampleGradients, NumericalError
from noiseprobe.monitor import ddp
from noiseprobe.monitor.gns import NoiseScale, noise_scale, noise_scale_from_gram, noise_scale_from_sums
from noiseprobe.monitor.microbatch import (
    EstimatorChoice,
    MicroBatchGradients,
    batch_samples,
    micro_batch_gradients,
    split,
)
from noiseprobe.probes.eigensolvers import Eigenpairs, lanczos
from noiseprobe.probes.operators import Hessian, ParamOperator
from noiseprobe.probes.persample import (
    HookFactors,
    PerSampleGradients,
    Selection,
    parameter_owners,
    per_sample_gradients,
    per_sample_grams,
    select_parameters,
)
from noiseprobe.probes.rules.base import BatchAxisError

#: Lanczos stops at this relative accuracy of the eigenvalues (Cohen et al. track sharpness to ~1 %)
LANCZOS_TOL = 1e-2
#: Krylov dimensions before a cold start may stop (the first call; warm starts use lanczos's default k + 7)
COLD_MIN_DIM = 10


class TooFewSamples(ValueError):
    """The measured batch has fewer samples than an estimator needs (a status of the monitor's row, never
    an exception in the user's loop)."""


class Refused(ValueError):
    """The measured batch is not what a metric is defined on (e.g. a gradient-accumulation micro-batch for
    batch sharpness): ``status`` is the row's status for that metric, never an exception in the user's loop."""

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status


def top_eigen(op: ParamOperator, k: int, warm: Eigenpairs | None) -> Eigenpairs:
    """Top-k eigenpairs of ``op`` by Lanczos, warm-started from ``warm`` (a previous measurement's pairs;
    ignored when the parameter count changed)."""
    if warm is not None and warm.eigenvectors.shape[0] != op.num_params:
        warm = None
    return lanczos(op, k, warm_start=warm, tol=LANCZOS_TOL, min_dim=None if warm is not None else k + COLD_MIN_DIM)


class Context:
    """One measurement at optimizer step ``step`` on the batch (``inputs``, ``targets``).

    N is the number of samples in the measured batch (over all ranks under DDP), ``batch_size`` the batch
    size S of the update (default N), g_i the gradient of sample i's loss, ḡ their mean. ``params``: the
    parameters measured (:func:`~noiseprobe.probes.persample.select_parameters`; default all trainable);
    ``per_sample``: per-sample gradients already at hand (the inline mode's, :mod:`.inline`), used as given.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Tensor],
        inputs: Any,
        targets: Any,
        forward: Callable[[nn.Module, Any], Tensor] | None,
        optimizer: torch.optim.Optimizer | None,
        batch_size: int | None,
        top_k: int,
        step: int,
        group: Any = None,
        estimator: EstimatorChoice | None = None,
        per_module: bool = False,
        factors: bool = False,
        params: Selection | None = None,
        per_sample: PerSampleGradients | None = None,
    ) -> None:
        self.model, self.loss_fn, self.inputs, self.targets = model, loss_fn, inputs, targets
        self.forward, self.optimizer, self.top_k, self.step = forward, optimizer, top_k, step
        self._batch_size, self.group = batch_size, group
        self._hessian_top: dict[int, Eigenpairs] = {}
        self._choice = estimator if estimator is not None else EstimatorChoice()
        self.per_module = per_module  # a layer metric is measured: the Gram matrix is summed from module_grams
        # a metric needs products beyond the Gram (ctx.grads): factors are kept from the start; else the Gram
        # matrices are streamed layer by layer (per_sample_grams) and factors built only if asked for; the
        # inline mode hands its factors over (per_sample)
        self.factors = factors or group is not None or per_sample is not None
        self.params, self._given = params, per_sample

    @cached_property
    def estimator(self) -> str:
        """The noise estimator of this measurement: "per-sample" where the per-sample gradients exist and
        are reachable, else "micro-batch" (``estimator=`` of the monitor; :mod:`.microbatch`)."""
        return self._choice.resolve(self.model, lambda: self._per_sample if self.factors else self._grams)

    @cached_property
    def micro(self) -> MicroBatchGradients:
        """The mean gradients of the measured batch's micro-batches (the micro-batch estimator's data)."""
        try:
            split(batch_samples(self.inputs), self._choice.micro_batches)
        except ConfigError as err:
            raise TooFewSamples(f"{err.value}; the micro-batch estimator needs at least 3 micro-batches") from None
        return micro_batch_gradients(
            self.model, self.loss_fn, self.inputs, self.targets, self._choice.micro_batches, self.forward, self.params
        )

    @property
    def micro_batch_size(self) -> int:
        """b: 1 for the per-sample estimator, else the samples per micro-batch (0: too few samples)."""
        if self.estimator == "per-sample":
            return 1
        try:
            return split(batch_samples(self.inputs), self._choice.micro_batches)[1]
        except ConfigError:  # too few samples: the measurement's status says so
            return 0

    @cached_property
    def _per_sample(self) -> PerSampleGradients:
        if self._given is not None:
            return self._given
        try:
            return per_sample_gradients(
                self.model, self.loss_fn, self.inputs, self.targets, forward=self.forward, params=self.params
            )
        except BatchAxisError as exc:  # advise what the monitor offers (it has no `method`)
            raise BatchAxisError(exc.field, exc.value, exc.n, "make the model batch-first") from None

    @cached_property
    def _grams(self) -> dict[str, Tensor]:
        """The per-sample Gram matrices, per parameter-owning module when a layer metric is measured (else
        one, key ""), streamed layer by layer without keeping factors (:func:`per_sample_grams`)."""
        try:
            return per_sample_grams(
                self.model,
                self.loss_fn,
                self.inputs,
                self.targets,
                self._module_key if self.per_module else None,
                self.forward,
                self.params,
            )
        except BatchAxisError as exc:  # advise what the monitor offers (it has no `method`)
            raise BatchAxisError(exc.field, exc.value, exc.n, "make the model batch-first") from None

    @property
    def _streamed(self) -> bool:
        """The Gram matrices come from :attr:`_grams` (no factors kept, none computed yet)."""
        return not self.factors and "_per_sample" not in self.__dict__

    @cached_property
    def _module_key(self) -> dict[int, str]:
        """id(p) -> its owning module's key (:func:`~noiseprobe.probes.persample.parameter_owners`)."""
        owners = parameter_owners(self.model)
        return {id(p): owners[id(p)][0] for _, p in select_parameters(self.model, self.params)}

    @property
    def grads(self) -> PerSampleGradients:
        """The per-sample gradients g_i of this rank's batch (factored); under the micro-batch estimator
        NoPerSampleGradients (a metric that needs the individual g_i gets the status "no per-sample
        gradients" and NaN values)."""
        if self.estimator == "micro-batch":
            raise NoPerSampleGradients(
                "estimator", "micro-batch", "per-sample gradients, which this metric needs (docs/monitor.md)"
            )
        return self._per_sample

    @cached_property
    def num_params(self) -> int:
        """P, the number of measured parameters (the length of the flat gradient)."""
        return sum(p.numel() for _, p in select_parameters(self.model, self.params))

    @cached_property
    def hessian(self) -> Hessian:
        """H of the batch's mean loss."""
        return Hessian(self.model, self.loss_fn, self.inputs, self.targets, forward=self.forward)

    def hessian_top(self, k: int, warm: Eigenpairs | None) -> Eigenpairs:
        """Top-k eigenpairs of :attr:`hessian`, computed once per measurement and k (the first caller's
        ``warm`` start is used; later callers share its result)."""
        if k not in self._hessian_top:
            self._hessian_top[k] = top_eigen(self.hessian, k, warm)
        return self._hessian_top[k]

    @cached_property
    def n(self) -> int:
        """Samples in the measured batch (over all ranks under data parallelism)."""
        if self.estimator == "micro-batch":
            local = batch_samples(self.inputs)
        else:
            local = next(iter(self._grams.values())).shape[0] if self._streamed else self.grads.n
        if self.group is None:
            return local
        return int(ddp.all_sum(torch.tensor([local]), self.group))

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
        """S, the batch size of the update."""
        return self._batch_size if self._batch_size is not None else self.n

    @cached_property
    def gram(self) -> np.ndarray:
        """The Gram matrix g_i·g_j of this rank's per-sample gradients, (N, N) float64 (the sum of
        :attr:`module_grams` when a layer metric asked for those: computed once)."""
        if self.per_module and self.estimator == "per-sample":
            gram = sum(self.module_grams.values(), np.zeros((self.n, self.n)))
        elif self._streamed and self.estimator == "per-sample":
            gram = sum(self._grams.values(), torch.zeros(())).double().cpu().numpy()
        else:
            gram = self.grads.gram().double().cpu().numpy()
        if not np.isfinite(gram).all():
            raise NumericalError("non-finite per-sample gradients at the current weights")
        return gram

    @cached_property
    def noise(self) -> NoiseScale:
        """The unbiased noise scale (tr Σ, |G|², B_simple with SEs and interval) of the measured batch: the
        one place it is computed (:mod:`noiseprobe.monitor.gns`)."""
        if self.estimator == "micro-batch":
            return self._micro_noise()
        if self.n < 3:
            raise TooFewSamples(f"{self.n} samples; the unbiased noise scale needs at least 3")
        if self.group is None:
            return noise_scale(self.gram)
        s = self.grad_sum
        d = ddp.all_cat(self.grads.sq_norms().double(), self.group)
        r = ddp.all_cat(self.grads.jvp(s).double(), self.group)
        return noise_scale_from_sums(d.cpu().numpy(), r.cpu().numpy(), float(s.double() @ s.double()))

    @cached_property
    def module_grams(self) -> dict[str, np.ndarray]:
        """K_l (float64), the Gram matrix of the gradients restricted to the parameters of module l, per
        parameter-owning module in the model's order (:func:`~noiseprobe.probes.persample.parameter_owners`:
        each parameter once, a tied one under its first owner): of the per-sample gradients (N × N, from the
        factors' per-block Gram products, Σ_l K_l = :attr:`gram`), or of the micro-batch gradients (m × m)."""
        if self.group is not None:
            raise ConfigError("metrics", "layers under data parallelism", "a single-process run (docs/monitor.md)")
        selected = select_parameters(self.model, self.params)
        key = self._module_key
        order = list(dict.fromkeys(key.values()))
        if self.estimator == "micro-batch":
            rows, o = self.micro.rows.double(), 0
            cols: dict[str, list[Tensor]] = {}
            for _, p in selected:
                cols.setdefault(key[id(p)], []).append(rows[:, o : o + p.numel()])
                o += p.numel()
            grams = {k: torch.cat(c, 1) @ torch.cat(c, 1).T for k, c in cols.items()}
        elif self._streamed:
            grams = self._grams
        else:
            grads = self.grads
            if not isinstance(grads, HookFactors):
                raise ConfigError("per-sample gradients", type(grads).__name__, "factored per-sample gradients")
            grams = grads.grams_by(key)
        out = {k: grams[k].double().cpu().numpy() for k in order if k in grams}
        if not all(np.isfinite(k).all() for k in out.values()):
            raise NumericalError("non-finite per-sample gradients at the current weights")
        return out

    @cached_property
    def module_noise(self) -> dict[str, NoiseScale]:
        """The noise scale of each module's parameters alone (:attr:`module_grams`; per-sample or micro-batch
        as :attr:`noise`)."""
        b = self.noise.micro_batch_size  # (and too few samples is the status of self.noise)
        return {k: noise_scale_from_gram(g, b) for k, g in self.module_grams.items()}

    def _micro_noise(self) -> NoiseScale:
        """The micro-batch estimates, over the micro-batches of all ranks under data parallelism."""
        mb = self.micro
        if self.group is None:
            return mb.noise()
        s = ddp.all_sum(mb.rows.sum(0), self.group)
        d = ddp.all_cat((mb.rows * mb.rows).sum(1).double(), self.group)
        r = ddp.all_cat((mb.rows @ s).double(), self.group)
        total = float(s.double() @ s.double())
        return noise_scale_from_sums(d.cpu().numpy(), r.cpu().numpy(), total, micro_batch_size=mb.b)

    def c_eigenvalues(self) -> np.ndarray:
        """The top eigenvalues of C = Σ/S (this rank's batch): per sample min(top_k, N − 1) of
        M = (1/N) Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ over S; from micro-batches top_k values, those beyond m − 1 NaN."""
        if self.estimator == "micro-batch":
            return self.micro.c_eigenvalues(self.top_k, self.batch_size)
        n = self.gram.shape[0]
        centred = self.gram - self.gram.mean(0, keepdims=True)
        centred = (centred - centred.mean(1, keepdims=True)) / n
        return np.linalg.eigvalsh((centred + centred.T) / 2)[::-1][: min(self.top_k, n - 1)] / self.batch_size

    @cached_property
    def sigma_diagonal(self) -> Tensor:
        """diag Σ per parameter, unbiased: (N/(N−1)) [(1/N) Σ_i g_i² − ḡ²] (flat, trainable order); from
        micro-batches b/(M − 1) [Σ_j ḡ_j² − M ḡ²] over the M micro-batches of all ranks."""
        if self.estimator == "micro-batch":
            mb = self.micro
            sq, s = (mb.rows * mb.rows).sum(0), mb.rows.sum(0)
            count = mb.m if self.group is None else mb.m * dist.get_world_size(self.group)
            if self.group is not None:
                sq, s = ddp.all_sum(sq, self.group), ddp.all_sum(s, self.group)
            return (sq - s * s / count) * (mb.b / (count - 1))
        n, mean = self.n, self.grad_sum / self.n
        sq = self.grads.sq_sum()
        if self.group is not None:
            sq = ddp.all_sum(sq, self.group)
        return (sq / n - mean**2) * (n / (n - 1))

    def group_slices(self) -> list[tuple[float, list[tuple[int, int]]]]:
        """(lr, flat index ranges) per optimizer parameter group, in the flat order of the measured parameters."""
        if self.optimizer is None:
            return []
        params = [p for _, p in select_parameters(self.model, self.params)]
        start, pos = 0, {}
        for p in params:
            pos[id(p)] = (start, start + p.numel())
            start += p.numel()
        out = []
        for group in self.optimizer.param_groups:
            lr = float(group["lr"])
            out.append((lr, [pos[id(p)] for p in group["params"] if id(p) in pos]))
        return out
