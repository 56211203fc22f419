"""Operators of the form A = (c/N) Jᵀ P J, J the factored per-sample-gradient matrix (N × P) and P the
centring I − 11ᵀ/N or I: their non-zero eigenpairs come from an N × N Gram matrix, their eigenvectors
lazily as :class:`~noiseprobe.probes.operators.base.FactoredVectors` (V = Jᵀ W)."""

from __future__ import annotations

from typing import Any, Literal, overload

import torch
from torch import Tensor, nn

from noiseprobe.core.deprecation import renamed_arguments
from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_choice, check_int
from noiseprobe.probes.eigensolvers import lanczos
from noiseprobe.probes.operators.base import (
    FactoredVectors,
    ParamOperator,
    full_precision,
    no_autocast,
    operator_meta,
)
from noiseprobe.probes.persample import (
    Forward,
    PerSampleGradients,
    PerSampleLoss,
    Selection,
    per_sample_gradients,
    select_parameters,
)

Vectors = Literal["factored", "param", "sample", "none"]
#: the relative residual at which the Gram matrix's top eigenpairs stop (float32, float64): eigenvalue errors
#: of order residual²/gap
GRAM_TOL = (1e-4, 1e-6)


class GramOperator(ParamOperator):
    """A = factor · (1/N) Jᵀ P J over the chosen parameters, J from
    :func:`~noiseprobe.probes.persample.per_sample_gradients` (``method``, ``chunk_size``, ``forward``,
    ``check``, ``params`` are its arguments), built with autocast off and on a float32 copy of a 16-bit
    model (:func:`~noiseprobe.probes.operators.base.full_precision`). Subclasses set ``factor`` and
    write :meth:`_mm` and :meth:`gram`."""

    factor: float
    #: the largest k of :meth:`topk` is N − ``rank_deficit`` (1 for a centred operator)
    rank_deficit: int = 0

    @renamed_arguments(x="inputs", y="targets")
    def __init__(
        self,
        model: nn.Module,
        loss_fn: PerSampleLoss,
        inputs: Any,
        targets: Any,
        *,
        method: Literal["auto", "hooks", "func"] = "auto",
        chunk_size: int | None = None,
        forward: Forward | None = None,
        check: bool = False,
        params: Selection | None = None,
    ) -> None:
        model, inputs, targets, params = full_precision(model, inputs, targets, params)
        chosen = select_parameters(model, params)
        super().__init__(*operator_meta(chosen))
        with no_autocast(self.device):
            self.grads: PerSampleGradients = per_sample_gradients(
                model, loss_fn, inputs, targets, method, chunk_size, forward, check, params
            )
        self.n = self.grads.n

    def gram(self) -> Tensor:
        """The N × N matrix K with A's non-zero eigenvalues equal to ``factor`` times K's: (1/N) P JJᵀ P."""
        raise NotImplementedError

    @overload
    def topk(self, k: int, vectors: Literal["factored"] = ...) -> tuple[Tensor, FactoredVectors]: ...
    @overload
    def topk(self, k: int, vectors: Literal["param", "sample"]) -> tuple[Tensor, Tensor]: ...
    @overload
    def topk(self, k: int, vectors: Literal["none"]) -> tuple[Tensor, None]: ...

    def topk(self, k: int, vectors: Vectors = "factored") -> tuple[Tensor, FactoredVectors | Tensor | None]:
        """The k largest eigenvalues of A (descending) and their eigenvectors as columns.

        Eigenpairs of K come from :func:`~noiseprobe.probes.eigensolvers.lanczos` on the explicit K (residuals
        ≤ 1e-6 λ_1 in float64, 1e-4 in float32: :data:`GRAM_TOL`); K u = λu ⇒
        A (Jᵀu) = factor·λ (Jᵀu) with ‖Jᵀu‖² = Nλ. ``vectors``: "factored" (default) = the unit
        eigenvectors of A as :class:`FactoredVectors` Jᵀ (u/√(Nλ)), N·k numbers; "param" = the same
        formed, (P, k), one batched vector-Jacobian product; "sample" = the unit eigenvectors u of K
        (N, k); "none". A direction below the numerical rank threshold N·eps·λ_max gets a zero vector
        (it is not determined).
        """
        check_choice("vectors", vectors, ("factored", "param", "sample", "none"))
        k = check_int("k", k, lo=1, hi=max(self.n - self.rank_deficit, 1))
        with no_autocast(self.device):
            gram = self.gram()
            try:  # k is checked above: lanczos refuses only a non-finite matrix
                top = lanczos(gram, k, tol=GRAM_TOL[gram.dtype == torch.float64])
            except ConfigError:
                raise ConfigError(
                    "model", "per-sample gradients", "finite values (the loss or its gradient is not finite)"
                ) from None
            lam, u = top.eigenvalues, top.eigenvectors
            if vectors == "none":
                return self.factor * lam, None
            keep = lam > self.n * torch.finfo(lam.dtype).eps * max(float(lam[0]), 0.0)  # numerical rank
            if vectors == "sample":
                return self.factor * lam, u * keep
            scale = torch.where(
                keep, (self.n * lam.clamp_min(torch.finfo(lam.dtype).tiny)).rsqrt(), torch.zeros_like(lam)
            )
            coeffs = (u * keep * scale).to(self.grads.dtype)
            if vectors == "param":
                return self.factor * lam, self.grads.vjp(coeffs)
            return self.factor * lam, FactoredVectors(self.grads, coeffs)
