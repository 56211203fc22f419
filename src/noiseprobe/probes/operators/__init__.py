"""Curvature and gradient-noise matrices of a model as operators on flat parameter vectors, one per
module (each writes only its product; the shared plumbing is :mod:`.base`):

* :class:`NoiseCovariance` (:mod:`.noise_covariance`)  C = c(S, N) · (1/N) Jᵀ (I − 11ᵀ/N) J, the
  minibatch-gradient covariance, c = 1/S with replacement, (N − S)/(S(N − 1)) without (paper 002, eqs. 2,
  99a, 99b); ``GradientNoise`` is its earlier name;
* :class:`EmpiricalFisher` (:mod:`.fisher`)  F = (1/N) Jᵀ J = M + ḡḡᵀ (uncentred second moment);
* :class:`Hessian` (:mod:`.hessian`)  H = ∇² L (double-backward products);
* :class:`GaussNewton` (:mod:`.ggn`)  G = J_fᵀ (∂²L/∂f²) J_f (f = the model output on the batch; the
  generalised Gauss–Newton matrix, = H when the model is linear in its parameters).

J ∈ R^{N×P} is the per-sample-gradient matrix (rows ∇ℓ_i) and ḡ = ∇L, over a chosen set of parameters
(all trainable ones, or a subset: :func:`~noiseprobe.probes.persample.select_parameters`). Every operator
is usable three ways:

* on torch tensors, on the model's device: ``op.mv(v)`` / ``op @ v`` for v of shape (P,) or (P, k);
* as a :class:`scipy.sparse.linalg.LinearOperator` (it is one): ``scipy.sparse.linalg.eigsh(op, k)``,
  ``cg(op, b)``, ``op @ numpy_array`` (NumPy vectors are moved to the model's device and back);
* through the model-free algorithms of :mod:`noiseprobe.probes.eigensolvers` (Lanczos with warm start) and
  :mod:`noiseprobe.probes.estimators` (Hutchinson and Hutch++ traces, diagonal estimates).

``op.matvecs`` counts the matrix-vector products done so far (a (P, k) block counts k).

Every operator is built as ``Operator(model, loss_fn, inputs, targets, ...)`` (the old keywords ``x=``,
``y=`` still work, with a DeprecationWarning). Batches and losses are those of
:func:`~noiseprobe.probes.persample.per_sample_gradients`: ``inputs`` is anything ``forward(model, inputs)``
takes (default ``model(**inputs)`` for a dict, ``model(*inputs)`` for a tuple, else ``model(inputs)``;
integer token ids included), the output may be a tensor, a tuple or a ModelOutput
(:func:`~noiseprobe.probes.sample_losses.model_output`), and ``loss_fn(output, targets)`` returns per-sample losses
ℓ_i of shape (N,) whose mean L = (1/N) Σ ℓ_i is the training loss (token-mean language-model losses:
:class:`~noiseprobe.probes.sample_losses.TokenMeanCrossEntropy`).

C and F are built from the factored per-sample gradients of :mod:`noiseprobe.probes.persample`, so their
traces and diagonals are exact and their top eigenpairs come from the N × N Gram matrix, with
eigenvectors returned lazily as :class:`FactoredVectors` (V = Jᵀ W). H and G are products only; use
:mod:`noiseprobe.probes.estimators` and :mod:`noiseprobe.probes.eigensolvers` for their traces, diagonals and
spectra. All compute in float32 or wider whatever the ambient autocast; 16-bit models are up-cast
(:func:`~noiseprobe.probes.operators.base.full_precision`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> submodule that defines it; imported on first use (PEP 562), so that
#: :mod:`noiseprobe.probes.eigensolvers` can build on :mod:`.base` while :mod:`.gram` builds on it
_EXPORTS: dict[str, str] = {
    "EmpiricalFisher": "fisher",
    "FactoredVectors": "base",
    "GaussNewton": "ggn",
    "GradientNoise": "noise_covariance",
    "Hessian": "hessian",
    "MatrixOperator": "base",
    "NoiseCovariance": "noise_covariance",
    "Operator": "base",
    "ParamOperator": "base",
    "ScipyOperator": "base",
    "as_operator": "base",
    "batch_factor": "noise_covariance",
}

_MODULES = ("base", "gram", "noise_covariance", "fisher", "hessian", "ggn")

__all__ = [
    "EmpiricalFisher",
    "FactoredVectors",
    "GaussNewton",
    "GradientNoise",
    "Hessian",
    "MatrixOperator",
    "NoiseCovariance",
    "Operator",
    "ParamOperator",
    "ScipyOperator",
    "as_operator",
    "batch_factor",
    # the modules, one per operator (listed so that the API reference documents them)
    "base",
    "gram",
    "noise_covariance",
    "fisher",
    "hessian",
    "ggn",
]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from noiseprobe.probes.operators.base import (
        FactoredVectors,
        MatrixOperator,
        Operator,
        ParamOperator,
        ScipyOperator,
        as_operator,
    )
    from noiseprobe.probes.operators.fisher import EmpiricalFisher
    from noiseprobe.probes.operators.ggn import GaussNewton
    from noiseprobe.probes.operators.hessian import Hessian
    from noiseprobe.probes.operators.noise_covariance import GradientNoise, NoiseCovariance, batch_factor
