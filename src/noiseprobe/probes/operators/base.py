"""The plumbing every operator shares: flat parameter vectors, the torch / SciPy interfaces, lazy
factored eigenvectors, and the float32-or-wider rule.

:class:`ParamOperator` is a symmetric P × P matrix over a chosen set of parameters, usable three ways
(``op.mv(v)`` / ``op @ v`` on tensors, as a :class:`scipy.sparse.linalg.LinearOperator`, and through the
model-free algorithms of :mod:`noiseprobe.probes.eigensolvers` and :mod:`noiseprobe.probes.estimators`); a
subclass writes only its product :meth:`ParamOperator._mm`.

Precision: every operator computes in float32 or wider whatever the ambient autocast (its construction
and its products run with autocast off), and a model whose chosen parameters are float16 / bfloat16 is
up-cast — a float32 copy of the model, with 16-bit floating inputs and targets cast alike — for the
operator's passes (:func:`full_precision`); the model itself is never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import wraps
from typing import Any, ParamSpec, TypeAlias, TypeVar

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor, nn

from noiseprobe.core.deprecation import renamed_arguments
from noiseprobe.core.errors import ConfigError, NumericalError
from noiseprobe.core.validation import check_instance, check_int
from noiseprobe.probes.capture import check_finite
from noiseprobe.probes.persample import (
    Forward,
    PerSampleGradients,
    PerSampleLoss,
    Selection,
    default_forward,
    select_parameters,
)
from noiseprobe.probes.rules import tensor_leaves
from noiseprobe.probes.sample_losses import model_output
from noiseprobe.probes.wrappers import eager, unwrap

_P = ParamSpec("_P")
_R = TypeVar("_R")
_LOW = (torch.float16, torch.bfloat16)


@contextmanager
def no_autocast(device: torch.device) -> Iterator[None]:
    """Autocast off (on the CPU and on ``device``'s type) for the block."""
    with ExitStack() as stack:
        for kind in dict.fromkeys(["cpu", device.type]):
            stack.enter_context(torch.autocast(kind, enabled=False))
        yield


def full_precision_method(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run an operator method (first argument: an object with ``device``) with autocast off."""

    @wraps(method)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with no_autocast(args[0].device):  # type: ignore[attr-defined]
            return method(*args, **kwargs)

    return run


def _upcast_leaves(obj: Any) -> Any:
    """``obj`` with every float16 / bfloat16 tensor (in dicts, tuples, lists) cast to float32."""
    if isinstance(obj, Tensor):
        return obj.float() if obj.dtype in _LOW else obj
    if isinstance(obj, dict):
        return type(obj)((k, _upcast_leaves(v)) for k, v in obj.items())
    if isinstance(obj, (tuple, list)):
        return type(obj)(_upcast_leaves(v) for v in obj)
    return obj


def check_finite_result(what: str, value: Tensor) -> Tensor:
    """``value`` if every entry is finite, else NumericalError (valid input, non-finite numbers: a NaN in the
    model or the operator, an overflow)."""
    if not bool(torch.isfinite(value).all()):
        raise NumericalError(f"{what}: the result of valid input is non-finite (a NaN or inf in the operator?)")
    return value


def full_precision(
    model: nn.Module, x: Any, y: Any, params: Selection | None
) -> tuple[nn.Module, Any, Any, Selection | None]:
    """(model, x, y, parameter selection) to build an operator on: the arguments themselves, or — when a
    chosen parameter is float16 / bfloat16 — a float32 deep copy of the model, with 16-bit floating tensors
    of x and y cast to float32 and the selection as parameter names of the copy (the copy costs the
    model's size in float32)."""
    check_instance("model", model, nn.Module, "a torch.nn.Module")
    for field, data in (("x", x), ("y", y)):
        check_finite(field, data)
        leaves = [t for t in tensor_leaves(data) if isinstance(t, Tensor)]
        allowed = "a non-empty tensor (or a dict, tuple or list of tensors) of real numbers"
        if not leaves:
            raise ConfigError(field, type(data).__name__, allowed)
        for leaf in leaves:
            if leaf.numel() == 0 or leaf.is_complex():
                raise ConfigError(field, f"tensor of shape {tuple(leaf.shape)}, dtype {leaf.dtype}", allowed)
    chosen = select_parameters(model, params)
    if not any(p.dtype in _LOW for _, p in chosen):
        return model, x, y, params
    return copy.deepcopy(model).float(), _upcast_leaves(x), _upcast_leaves(y), [n for n, _ in chosen]


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
        """A v for a finite tensor v of shape (P,) or (P, k), returned on the operator's device and dtype
        (a non-finite product of a finite v raises NumericalError). The checks cost two passes over v and
        A v; the algorithms of :mod:`~noiseprobe.probes.eigensolvers` and :mod:`~noiseprobe.probes.estimators`
        call :meth:`product` and check their results instead."""
        allowed = f"a finite tensor of shape ({self.num_params},) or ({self.num_params}, k)"
        if not isinstance(v, Tensor):
            raise ConfigError("v", type(v).__name__, allowed)
        if v.dim() not in (1, 2) or v.shape[0] != self.num_params or (v.dim() == 2 and v.shape[1] == 0):
            raise ConfigError("v", f"tensor of shape {tuple(v.shape)}", allowed)
        if v.dtype == torch.bool or v.is_complex():
            raise ConfigError("v", f"tensor of dtype {v.dtype}", allowed)
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ConfigError("v", "tensor with non-finite entries", allowed)
        out = self.product(v)
        check_finite_result(type(self).__name__ + ".mv", out)
        return out

    def product(self, v: Tensor) -> Tensor:
        """A v without checks (v of shape (P,) or (P, k), finite): the algorithms' inner loops."""
        vv = v.to(device=self.device, dtype=self.torch_dtype).reshape(self.num_params, -1)
        self.matvecs += vv.shape[1]
        with no_autocast(self.device):
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
        allowed = "a finite square (P, P) floating-point matrix, P >= 1"
        if a.dim() != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
            raise ConfigError("op", f"tensor of shape {tuple(a.shape)}", allowed)
        if not a.is_floating_point():
            raise ConfigError("op", f"tensor of dtype {a.dtype}", allowed)
        if not bool(torch.isfinite(a).all()):
            raise ConfigError("op", "tensor with non-finite entries", allowed)
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


#: what the model-free algorithms accept (see :func:`as_operator`)
Operator: TypeAlias = ParamOperator | Tensor | LinearOperator | np.ndarray


def as_operator(a: Operator) -> ParamOperator:
    """A :class:`ParamOperator` for ``a``: itself, a dense symmetric (P, P) tensor or array, or a
    (symmetric) scipy ``LinearOperator`` (products through NumPy, float64 unless it says otherwise)."""
    if isinstance(a, ParamOperator):
        return a
    if isinstance(a, Tensor):
        return MatrixOperator(a)
    if isinstance(a, np.ndarray):
        return MatrixOperator(torch.from_numpy(a))
    if isinstance(a, LinearOperator):
        return ScipyOperator(a)
    raise ConfigError("op", type(a).__name__, "a ParamOperator, a square tensor or array, or a scipy LinearOperator")


def operator_meta(
    chosen: list[tuple[str, nn.Parameter]],
) -> tuple[list[str], list[torch.Size], torch.device, torch.dtype]:
    """(names, shapes, device, dtype) of a :class:`ParamOperator` over the chosen parameters."""
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
        with no_autocast(self.coeffs.device):
            return self.grads.vjp(self.coeffs)

    def column(self, i: int) -> Tensor:
        """The i-th vector, shape (P,)."""
        with no_autocast(self.coeffs.device):
            return self.grads.vjp(self.coeffs[:, check_int("i", i, lo=0, hi=self.shape[1] - 1)])

    def dot(self, x: Tensor) -> Tensor:
        """Vᵀ x for x of shape (P,) or (P, m): (k,) or (k, m)."""
        with no_autocast(self.coeffs.device):
            return self.coeffs.T @ self.grads.jvp(x.to(self.coeffs.dtype))


@contextmanager
def double_backward_attention() -> Iterator[None]:
    """Force PyTorch's math kernel for ``scaled_dot_product_attention`` (the fused flash / memory-efficient
    kernels have no double backward), on every device."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


def mean_loss(loss_fn: PerSampleLoss, out: Tensor, y: Any) -> Tensor:
    """L = (1/N) Σ_i ℓ_i from the per-sample losses ``loss_fn(out, y)``, which must have shape (N,)."""
    losses = loss_fn(out, y)
    if not isinstance(losses, Tensor) or losses.dim() != 1 or losses.shape[0] < 1:
        shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ConfigError(
            "loss_fn", f"a loss returning {shape}", "a per-sample loss returning shape (N,), e.g. reduction='none'"
        )
    return losses.mean()


def output_and_loss(
    model: nn.Module, loss_fn: PerSampleLoss, x: Any, y: Any, forward: Forward | None
) -> tuple[Tensor, Tensor]:
    """(model output f on the batch, the mean loss L = (1/N) Σ ℓ_i(f_i)), graphs kept."""
    with eager():
        out = model_output((forward or default_forward)(unwrap(model), x))
    return out, mean_loss(loss_fn, out, y)


class ModelOperator(ParamOperator):
    """An operator on the mean loss of ``loss_fn(forward(model, inputs), targets)`` over the chosen
    parameters (``self.params``, in flat order), built on the model, inputs and targets of
    :func:`full_precision` (``self.model``, ``self.x``, ``self.y``): the one constructor of the autograd
    operators (its arguments, their checks, and the old keywords ``x=``, ``y=``); a subclass writes
    :meth:`_build`, run with gradients on, the math attention kernel and autocast off."""

    @renamed_arguments(x="inputs", y="targets")
    def __init__(
        self,
        model: nn.Module,
        loss_fn: PerSampleLoss,
        inputs: Any,
        targets: Any,
        *,
        params: Selection | None = None,
        forward: Forward | None = None,
    ) -> None:
        self.model, self.x, self.y, selection = full_precision(model, inputs, targets, params)
        chosen = select_parameters(self.model, selection)
        super().__init__(*operator_meta(chosen))
        self.params = [p for _, p in chosen]
        with torch.enable_grad(), double_backward_attention(), no_autocast(self.device):
            self._build(loss_fn, forward)

    def _build(self, loss_fn: PerSampleLoss, forward: Forward | None) -> None:
        """The graphs the products reuse, built once from ``self.model``, ``self.x``, ``self.y``."""
        raise NotImplementedError
