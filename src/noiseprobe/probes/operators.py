"""Curvature and gradient-noise matrices of a model as operators on flat parameter vectors.

Every operator here is a symmetric P × P matrix A over a chosen set of parameters (all trainable ones,
or a subset: :func:`select_params`), available three ways:

* on torch tensors, on the model's device and in its dtype: ``op.mv(v)`` / ``op @ v`` for v of shape
  (P,) or (P, k);
* as a :class:`scipy.sparse.linalg.LinearOperator` (it is one): ``scipy.sparse.linalg.eigsh(op, k)``,
  ``cg(op, b)``, ``op @ numpy_array`` (NumPy vectors are moved to the model's device and back);
* through the algorithms of :mod:`noiseprobe.probes.linalg` (Lanczos with warm start, Hutchinson and
  Hutch++ traces, diagonal estimates), which know no model.

``op.matvecs`` counts the matrix-vector products done so far (a (P, k) block counts k).

Batches and losses are those of :func:`~noiseprobe.probes.persample.per_sample_gradients`: ``x`` is
anything ``forward(model, x)`` takes (default ``model(**x)`` for a dict, ``model(*x)`` for a tuple, else
``model(x)``; integer token ids included), the output may be a tensor, a tuple or a ModelOutput
(:func:`~noiseprobe.probes.losses.model_output`), and ``loss_fn(output, y)`` returns per-sample losses
ℓ_i of shape (N,) whose mean L = (1/N) Σ ℓ_i is the training loss (token-mean language-model losses:
:class:`~noiseprobe.probes.losses.TokenMeanCrossEntropy`). With J ∈ R^{N×P} the per-sample-gradient matrix (rows ∇ℓ_i) and ḡ = ∇L:

* :class:`NoiseCovariance`    C = c(S, N) · (1/N) Jᵀ (I − 11ᵀ/N) J       minibatch-gradient covariance,
  c = 1/S with replacement, (N − S)/(S(N − 1)) without (paper 002, eqs. 2, 99a, 99b);
* :class:`EmpiricalFisher`    F = (1/N) Jᵀ J = (1/N) Σ ∇ℓ_i ∇ℓ_iᵀ = M + ḡḡᵀ  (uncentred second moment);
* :class:`Hessian`            H = ∇² L                                    (double-backward products);
* :class:`GaussNewton`        G = J_fᵀ (∂²L/∂f²) J_f                      (f = the model output on the batch;
  the generalised Gauss–Newton matrix, = H when the model is linear in its parameters).

C and F are built from the factored per-sample gradients of :mod:`noiseprobe.probes.persample`
(through :class:`~noiseprobe.probes.covariance.GradientNoise`), so their traces and diagonals are exact
(:meth:`NoiseCovariance.trace`, :meth:`~NoiseCovariance.diagonal`) and their top eigenpairs come from the
N × N Gram matrix, with eigenvectors returned lazily as :class:`FactoredVectors` (V = Jᵀ W).
H and G are products only; use :mod:`noiseprobe.probes.linalg` for their traces, diagonals and spectra.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor, nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_int
from noiseprobe.probes.covariance import GradientNoise, top_eigh
from noiseprobe.probes.local import param_hvp
from noiseprobe.probes.losses import model_output
from noiseprobe.probes.persample import (
    Forward,
    PerSampleGradients,
    PerSampleLoss,
    Selection,
    default_forward,
    select_parameters,
)
from noiseprobe.probes.wrappers import eager, unwrap


def select_params(model: nn.Module, params: Selection | None = None) -> list[tuple[str, Tensor]]:
    """The (name, parameter) pairs an operator acts on: :func:`~noiseprobe.probes.persample.select_parameters`
    (all trainable parameters, or a subset: parameter or module names, modules, parameters) in
    ``model.named_parameters()`` order, each under its first name (a tied parameter appears once)."""
    model = unwrap(model)
    names = {id(p): n for n, p in model.named_parameters()}
    return [(names[id(p)], p) for p in select_parameters(model, params)]


# scipy ships no type stubs, so its LinearOperator is Any to mypy
class ParamOperator(LinearOperator):  # type: ignore[misc]
    """A symmetric P × P operator on flat parameter vectors; subclasses implement :meth:`_mm` on (P, k)
    tensors on ``device`` in ``torch_dtype``. See the module docstring for the three ways to use it."""

    def __init__(self, names: list[str], shapes: list[torch.Size], device: torch.device, dtype: torch.dtype) -> None:
        self.names, self.shapes = names, shapes
        self.device, self.torch_dtype = device, dtype
        self.matvecs = 0
        p = sum(int(np.prod(s)) for s in shapes)
        np_dtype = (
            np.float32 if dtype == torch.bfloat16 else torch.empty(0, dtype=dtype).numpy().dtype
        )  # NumPy has no bf16
        super().__init__(dtype=np_dtype, shape=(p, p))

    @property
    def num_params(self) -> int:
        return int(self.shape[0])

    def _mm(self, v: Tensor) -> Tensor:
        """A v for v of shape (P, k) on the operator's device and dtype."""
        raise NotImplementedError

    def mv(self, v: Tensor) -> Tensor:
        """A v for a tensor v of shape (P,) or (P, k), returned on the operator's device and dtype."""
        if v.dim() not in (1, 2) or v.shape[0] != self.num_params:
            raise ConfigError(
                "v", f"tensor of shape {tuple(v.shape)}", f"shape ({self.num_params},) or ({self.num_params}, k)"
            )
        vv = v.to(device=self.device, dtype=self.torch_dtype).reshape(self.num_params, -1)
        self.matvecs += vv.shape[1]
        return self._mm(vv).reshape(v.shape)

    def dot(self, x: Any) -> Any:  # scipy's ``op @ x`` / ``op * x``; tensors stay tensors
        if isinstance(x, Tensor):
            return self.mv(x)
        return super().dot(x)

    def _matmat(self, x: np.ndarray) -> np.ndarray:
        return self.mv(torch.as_tensor(np.asarray(x))).cpu().to(torch.from_numpy(np.zeros(0, self.dtype)).dtype).numpy()

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return self._matmat(np.asarray(x).reshape(-1, 1)).reshape(np.shape(x))

    def _adjoint(self) -> ParamOperator:
        return self

    def dense(self) -> Tensor:
        """A as a (P, P) tensor, by P products (small operators only)."""
        return self.mv(torch.eye(self.num_params, device=self.device, dtype=self.torch_dtype))

    def unflatten(self, v: Tensor) -> dict[str, Tensor]:
        """A flat vector (P,) as {parameter name: tensor of the parameter's shape} (views of v)."""
        out, o = {}, 0
        for name, shape in zip(self.names, self.shapes):
            size = int(np.prod(shape))
            out[name] = v[o : o + size].view(shape)
            o += size
        return out


class MatrixOperator(ParamOperator):
    """A dense symmetric (P, P) tensor as an operator (tests, small problems), on its device and dtype."""

    def __init__(self, a: Tensor) -> None:
        if a.dim() != 2 or a.shape[0] != a.shape[1]:
            raise ConfigError("a", f"tensor of shape {tuple(a.shape)}", "a square (P, P) matrix")
        super().__init__(["x"], [a.shape[:1]], a.device, a.dtype)
        self.a = a

    def _mm(self, v: Tensor) -> Tensor:
        return self.a @ v


class ScipyOperator(ParamOperator):
    """A symmetric scipy ``LinearOperator`` seen as a torch operator (CPU; float64 unless it says otherwise)."""

    def __init__(self, a: LinearOperator) -> None:
        dtype = torch.from_numpy(np.zeros(0, dtype=a.dtype if a.dtype is not None else np.float64)).dtype
        super().__init__(["x"], [torch.Size([a.shape[0]])], torch.device("cpu"), dtype)
        self.a = a

    def _mm(self, v: Tensor) -> Tensor:
        return torch.from_numpy(np.asarray(self.a.matmat(v.numpy())))


def _meta(chosen: list[tuple[str, Tensor]]) -> tuple[list[str], list[torch.Size], torch.device, torch.dtype]:
    return [n for n, _ in chosen], [p.shape for _, p in chosen], chosen[0][1].device, chosen[0][1].dtype


class FactoredVectors:
    """k vectors in parameter space, V = Jᵀ W (P × k), held as the N × k coefficients W and the
    per-sample-gradient factors: N·k numbers instead of P·k.

    :meth:`materialize` forms V (one width-k vector-Jacobian product); :meth:`dot` gives Vᵀ x = Wᵀ (J x)
    (one Jacobian-vector product) without forming V; :meth:`column` forms one vector.
    """

    def __init__(self, grads: PerSampleGradients, coeffs: Tensor) -> None:
        self.grads, self.coeffs = grads, coeffs

    @property
    def shape(self) -> tuple[int, int]:
        return self.grads.num_params, self.coeffs.shape[1]

    def materialize(self) -> Tensor:
        """V, shape (P, k)."""
        return self.grads.vjp(self.coeffs)

    def column(self, i: int) -> Tensor:
        """The i-th vector, shape (P,)."""
        return self.grads.vjp(self.coeffs[:, check_int("i", i, lo=0, hi=self.shape[1] - 1)])

    def dot(self, x: Tensor) -> Tensor:
        """Vᵀ x for x of shape (P,) or (P, m): (k,) or (k, m)."""
        return self.coeffs.T @ self.grads.jvp(x.to(self.coeffs.dtype))


class _GramOperator(ParamOperator):
    """A = (c/N) Jᵀ P J with P = I − 11ᵀ/N (centred) or I, from the factors of a :class:`GradientNoise`."""

    centred: bool

    def __init__(self, noise: GradientNoise, chosen: list[tuple[str, Tensor]]) -> None:
        names, shapes, device, dtype = _meta(chosen)
        if sum(p.numel() for _, p in chosen) != noise.grads.num_params:
            raise ConfigError(
                "noise", f"{noise.grads.num_params} parameters", "per-sample gradients of the chosen parameters"
            )
        super().__init__(names, shapes, device, dtype)
        self.noise, self.grads, self.n = noise, noise.grads, noise.n

    def gram(self) -> Tensor:
        """The N × N matrix K whose non-zero eigenvalues are A's: (c/N) P JJᵀ P."""
        raise NotImplementedError

    def topk(self, k: int) -> tuple[Tensor, FactoredVectors]:
        """The k largest eigenvalues of A (descending) and their unit eigenvectors, lazily: A has rank
        ≤ N, and K u = λu ⇒ A (Jᵀ u') = λ Jᵀu' with u' = u/√(N λ / c) of unit norm in parameter space.
        A direction below the numerical rank threshold N·eps·λ_max gets a zero vector."""
        k = check_int("k", k, lo=1, hi=self.n)
        lam, u = top_eigh(self.gram(), k)
        tiny = torch.finfo(lam.dtype).tiny
        keep = lam > self.n * torch.finfo(lam.dtype).eps * max(float(lam[0]), 0.0)
        scale = torch.where(keep, (lam.clamp_min(tiny) * self.n / self.noise.factor).rsqrt(), torch.zeros_like(lam))
        return lam, FactoredVectors(self.grads, u * scale)


class NoiseCovariance(_GramOperator):
    """C, the covariance of the size-S minibatch gradient (paper 002, eqs. 2, 99): products, exact trace
    and diagonal, top eigenpairs through the centred Gram matrix. Build with :meth:`from_model`."""

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        loss_fn: PerSampleLoss,
        x: Any,
        y: Tensor,
        *,
        batch_size: int = 1,
        replacement: bool = True,
        params: Selection | None = None,
        **kwargs: Any,
    ) -> NoiseCovariance:
        """C over ``params`` (see :func:`select_params`); other keyword arguments go to :class:`GradientNoise`."""
        noise = GradientNoise(
            model, loss_fn, x, y, batch_size=batch_size, replacement=replacement, params=params, **kwargs
        )
        return cls(noise, select_params(model, params))

    def _mm(self, v: Tensor) -> Tensor:
        return self.noise.matvec(v)

    def trace(self) -> float:
        """Tr C = c [(1/N) Σ ‖∇ℓ_i‖² − ‖ḡ‖²], exact."""
        return self.noise.trace()

    def diagonal(self) -> Tensor:
        """diag C = c [(1/N) Σ (∇ℓ_i)² − ḡ²], exact, shape (P,)."""
        return self.noise.diagonal()

    def gram(self) -> Tensor:
        return self.noise.factor * self.noise.centred_gram()


class EmpiricalFisher(_GramOperator):
    """F = (1/N) Σ_i ∇ℓ_i ∇ℓ_iᵀ, the uncentred second moment of the per-sample gradients (= M + ḡḡᵀ with
    M the covariance of one sample's gradient). Build with :meth:`from_model`."""

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        loss_fn: PerSampleLoss,
        x: Any,
        y: Tensor,
        *,
        params: Selection | None = None,
        **kwargs: Any,
    ) -> EmpiricalFisher:
        """F over ``params`` (see :func:`select_params`); other keyword arguments go to :class:`GradientNoise`."""
        return cls(
            GradientNoise(model, loss_fn, x, y, batch_size=1, params=params, **kwargs), select_params(model, params)
        )

    def _mm(self, v: Tensor) -> Tensor:
        return self.grads.vjp(self.grads.jvp(v)) / self.n

    def trace(self) -> float:
        """Tr F = (1/N) Σ ‖∇ℓ_i‖², exact."""
        return float(self.grads.sq_norms().mean())

    def diagonal(self) -> Tensor:
        """diag F = (1/N) Σ (∇ℓ_i)², exact, shape (P,)."""
        return self.grads.sq_sum() / self.n

    def gram(self) -> Tensor:
        return self.grads.gram() / self.n


@contextmanager
def double_backward_attention() -> Iterator[None]:
    """Force PyTorch's math kernel for ``scaled_dot_product_attention`` (the fused flash / memory-efficient
    kernels have no double backward), on every device."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


def _mean_loss(loss_fn: PerSampleLoss, out: Tensor, y: Any) -> Tensor:
    """L = (1/N) Σ_i ℓ_i from the per-sample losses ``loss_fn(out, y)``, which must have shape (N,)."""
    losses = loss_fn(out, y)
    if not isinstance(losses, Tensor) or losses.dim() != 1 or losses.shape[0] < 1:
        shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ConfigError(
            "loss_fn", f"a loss returning {shape}", "a per-sample loss returning shape (N,), e.g. reduction='none'"
        )
    return losses.mean()


def _output_and_loss(
    model: nn.Module, loss_fn: PerSampleLoss, x: Any, y: Any, forward: Forward | None
) -> tuple[Tensor, Tensor]:
    """(model output f on the batch, the mean loss L = (1/N) Σ ℓ_i(f_i)), graphs kept."""
    with eager():
        out = model_output((forward or default_forward)(unwrap(model), x))
    return out, _mean_loss(loss_fn, out, y)


class _ModelOperator(ParamOperator):
    """An operator over the chosen parameters of a model (``self.params``, in flat order)."""

    def __init__(self, model: nn.Module, params: Selection | None) -> None:
        chosen = select_params(model, params)
        super().__init__(*_meta(chosen))
        self.params = [p for _, p in chosen]


class Hessian(_ModelOperator):
    """H = ∇²L of the mean loss L = (1/N) Σ ℓ_i over the chosen parameters, by double backward: the
    gradient graph is built once (under the math attention kernel) and kept, and each block of k
    products is one batched backward pass through it (``is_grads_batched``).

    Memory: the kept graph is about two forward+backward passes'. The model is used as it is (training
    mode: dropout draws at construction time and stays fixed for all products).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: PerSampleLoss,
        x: Any,
        y: Tensor,
        *,
        params: Selection | None = None,
        forward: Forward | None = None,
    ) -> None:
        super().__init__(model, params)
        with torch.enable_grad(), double_backward_attention():
            _, self.loss = _output_and_loss(model, loss_fn, x, y, forward)
            self._hvp = param_hvp(self.loss, self.params)

    def _mm(self, v: Tensor) -> Tensor:
        with double_backward_attention():
            return self._hvp(v.T).T


class GaussNewton(_ModelOperator):
    """G = J_fᵀ (∂²L/∂f²) J_f, the generalised Gauss–Newton matrix of the mean loss, f the model output
    on the whole batch (any shape) and ∂²L/∂f² the Hessian of L(f) = (1/N) Σ ℓ_i(f_i) in the output.

    Each product is three reverse passes on kept graphs: J_f v by the double-vjp trick
    (J_f v = ∂/∂u ⟨J_fᵀ u, v⟩, which differentiates the model's backward: math attention kernel), then
    (∂²L/∂f²)(J_f v) by double backward of L in f, then J_fᵀ(·); k products share each pass. G is PSD
    when ℓ is convex in the output (cross-entropy, squared error).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: PerSampleLoss,
        x: Any,
        y: Tensor,
        *,
        params: Selection | None = None,
        forward: Forward | None = None,
    ) -> None:
        super().__init__(model, params)
        with torch.enable_grad(), double_backward_attention():
            self.out, _ = _output_and_loss(model, loss_fn, x, y, forward)
            self.f = self.out.detach().requires_grad_(True)
            loss = _mean_loss(loss_fn, self.f, y)
            self.dloss = torch.autograd.grad(loss, self.f, create_graph=True)[0]  # ∂L/∂f, graph kept
            self.u = torch.zeros_like(self.out, requires_grad=True)
            self.jtu = torch.autograd.grad(self.out, self.params, self.u, create_graph=True, materialize_grads=True)

    def _mm(self, v: Tensor) -> Tensor:
        k = v.shape[1]  # the k products go through each backward pass at once
        chunks = torch.split(v.T, [int(np.prod(s)) for s in self.shapes], 1)
        parts = [t.reshape(k, *shape) for t, shape in zip(chunks, self.shapes)]
        with double_backward_attention():
            jv = torch.autograd.grad(self.jtu, self.u, parts, retain_graph=True, is_grads_batched=True)[0]
        hjv = torch.autograd.grad(self.dloss, self.f, jv, retain_graph=True, is_grads_batched=True)[0]
        g = torch.autograd.grad(
            self.out, self.params, hjv, retain_graph=True, is_grads_batched=True, materialize_grads=True
        )
        return torch.cat([t.reshape(v.shape[1], -1) for t in g], 1).T
