"""Noise Injection Nodes (NINs) on any ``nn.Module`` (paper 001, Levi et al., arXiv 2210.13599, Sec. 2).

A NIN attached to a named submodule shifts that module's output ``z`` (the pre-activation
z^(ℓ_NI) = W^(ℓ_NI) x^(ℓ_NI) + b^(ℓ_NI) of the paper) by a trainable rank-1 term (Sec. 2, before eq. 1):

    z  →  z + ε W_NI,        ε ∈ R^k per sample,  W_NI ∈ R^{k×d},  Var ε_a = σ_ε²,

with k noise nodes (the paper uses k = 1) and d the size of the output's *feature axis*:

* convolutions (``nn.Conv1d/2d/3d`` and transposed) and channel norms (BatchNorm, InstanceNorm,
  GroupNorm): axis 1, the channels; one ε per sample is shared by every spatial location, so the NIW
  holds one weight per channel;
* every other module: the last axis (``nn.Linear`` on (N, d) or (N, L, d) inputs, ``nn.Embedding``, ...).

``NINSpec.feature_axis`` overrides the rule. Axis 0 is always the sample (batch) axis.

Noise ε = σ_ε ξ with ξ of zero mean and unit variance: ``"normal"`` N(0, 1), ``"uniform"``
U(−√3, √3), ``"rademacher"`` ±1, or a callable ``f(shape, generator) -> Tensor`` returning unit-variance
draws. Modes (docs/theory/noise_injection_nodes.md §2 ambiguity 9):

* ``"step"``: a fresh ξ for every sample at every training-mode forward pass;
* ``"epoch"`` (the paper): one ξ per training sample per epoch, looked up by the sample indices of the
  batch (:meth:`NINHandle.set_sample_indices`); :meth:`NINHandle.new_epoch` draws the next epoch's table;
* ``"fixed"`` (Fig. 1 centre): one ξ per training sample drawn once at attach time, so it acts as an
  extra input feature tied to that sample.

Evaluation (``model.eval()``) and :meth:`NINHandle.clean` use ε = 0 (App. B: tests "with the NIN output
set to 0"). NIW initialisation (App. B): W_NI ~ N(0, 1/fan_in) with fan_in = k, overridable by
``NINSpec.init_std``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, cast

import torch
from torch import Tensor, nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_choice, check_instance, check_int, check_real
from noiseprobe.probes.local import eval_no_grad

#: a user noise distribution: ``f(shape, generator) -> Tensor`` of zero-mean, unit-variance draws
NoiseFn = Callable[[tuple[int, ...], torch.Generator], Tensor]

DISTRIBUTIONS = ("normal", "uniform", "rademacher")
MODES = ("step", "epoch", "fixed")
_CHANNEL_MODULES = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm)


@dataclass
class NINSpec:
    """One NIN (k = ``n_nodes`` noise nodes) on the output of the submodule named ``module``.

    ``sigma`` is σ_ε, the standard deviation of each noise node. ``init_std`` defaults to 1/√n_nodes
    (App. B). ``features`` and ``feature_axis`` are needed only where the module's output size cannot be
    read from its attributes (else pass ``example_input`` to :func:`attach_nins`).
    """

    module: str
    sigma: float
    n_nodes: int = 1
    distribution: str | NoiseFn = "normal"
    mode: str = "epoch"
    init_std: float | None = None
    feature_axis: int | None = None
    features: int | None = None

    def __post_init__(self) -> None:
        """Everything a spec says on its own is checked when it is made (the module name at attach time)."""
        check_real("sigma", self.sigma, lo=0.0)
        check_int("n_nodes", self.n_nodes, lo=1)
        if not callable(self.distribution) and self.distribution not in DISTRIBUTIONS:
            raise ConfigError(
                "distribution",
                self.distribution,
                "one of " + ", ".join(map(repr, DISTRIBUTIONS)) + " or a callable f(shape, generator)",
            )
        check_choice("mode", self.mode, MODES)
        if self.init_std is not None:
            check_real("init_std", self.init_std, lo=0.0)
        if self.features is not None:
            check_int("features", self.features, lo=1)
        if self.feature_axis is not None:
            check_int("feature_axis", self.feature_axis)
            if self.feature_axis == 0:
                raise ConfigError("feature_axis", 0, "a non-zero axis (axis 0 is the batch axis)")


def _draw(distribution: str | NoiseFn, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Unit-variance, zero-mean draws of ``shape`` (float32, CPU, from ``generator``)."""
    if callable(distribution):
        out = torch.as_tensor(distribution(shape, generator), dtype=torch.float32)
        if tuple(out.shape) != shape:
            raise ConfigError("distribution", distribution, f"a callable returning a tensor of shape {shape}")
        return out
    if distribution == "normal":
        return torch.randn(shape, generator=generator)
    if distribution == "uniform":
        return (torch.rand(shape, generator=generator) * 2.0 - 1.0) * math.sqrt(3.0)
    return torch.randint(0, 2, shape, generator=generator).float() * 2.0 - 1.0  # rademacher


def _feature_axis(module: nn.Module) -> int:
    return 1 if isinstance(module, _CHANNEL_MODULES) else -1


def _features_from_attributes(module: nn.Module) -> int | None:
    for attr in ("out_features", "out_channels", "num_features", "num_channels", "embedding_dim"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None


def _output_shape(model: nn.Module, module: nn.Module, name: str, example_input: Any) -> tuple[int, ...]:
    """Shape of ``module``'s output in one forward pass of ``model`` on ``example_input``."""
    seen: list[Any] = []
    hook = module.register_forward_hook(lambda _m, _a, out: seen.append(out))
    try:
        with eval_no_grad(model):
            model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        hook.remove()
    if not seen:
        raise ConfigError("module", name, "a submodule that runs in the model's forward pass")
    out = seen[0]
    if not isinstance(out, Tensor):
        raise ConfigError("module", name, f"a submodule whose output is one tensor (got {type(out).__name__})")
    return tuple(out.shape)


class NoiseInjectionNode(nn.Module):
    """The state of one NIN: the NIW ``weight`` (k, d), σ_ε and, for "epoch"/"fixed" modes, the table
    of unit-variance draws ξ (n_train, k) indexed by training-sample index."""

    sigma: Tensor  # buffers, registered in __init__
    table: Tensor

    def __init__(
        self,
        spec: NINSpec,
        features: int,
        axis: int,
        n_train: int | None,
        generator: torch.Generator,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.spec, self.axis, self.generator = spec, axis, generator
        std = 1.0 / math.sqrt(spec.n_nodes) if spec.init_std is None else spec.init_std
        self.weight = nn.Parameter((torch.randn(spec.n_nodes, features, generator=generator) * std).to(device, dtype))
        self.register_buffer("sigma", torch.tensor(float(spec.sigma), dtype=torch.float64))
        if spec.mode in ("epoch", "fixed"):
            assert n_train is not None  # _validate requires it in these modes
            self.register_buffer("table", _draw(spec.distribution, (n_train, spec.n_nodes), generator).to(device))

    @property
    def features(self) -> int:
        return self.weight.shape[1]

    def redraw(self) -> None:
        """Draw a new ξ table (the next epoch in "epoch" mode)."""
        self.table.copy_(_draw(self.spec.distribution, tuple(self.table.shape), self.generator))

    def expand(self, shift: Tensor, ndim: int) -> Tensor:
        """Reshape a per-sample shift (N, d) to broadcast against an output with ``ndim`` axes."""
        axis = self.axis % ndim
        shape = [shift.shape[0]] + [1] * (ndim - 1)
        shape[axis] = shift.shape[1]
        return shift.reshape(shape)

    def inject(
        self,
        out: Tensor,
        name: str,
        indices: Tensor | None,
        fresh: torch.Generator | None = None,
        in_place: bool = False,
    ) -> Tensor:
        """``out + ε W_NI``: one fused ``addmm`` for a (N, d) output with the features last, written into
        ``out`` itself when ``in_place`` (no new N×d buffer), else ``out`` plus :meth:`shift` broadcast."""
        if out.dim() == 2 and self.axis % 2 == 1:
            eps = self.epsilon(tuple(out.shape), name, indices, fresh)
            return out.addmm_(eps, self.weight) if in_place else torch.addmm(out, eps, self.weight)
        return out + self.shift(tuple(out.shape), name, indices, fresh)

    def shift(
        self, out_shape: tuple[int, ...], name: str, indices: Tensor | None, fresh: torch.Generator | None = None
    ) -> Tensor:
        """ε W_NI for a batch, broadcastable to ``out_shape``; raises ConfigError on a shape mismatch.
        With ``fresh`` a generator, ξ is a fresh draw from it whatever the mode."""
        return self.expand(self.epsilon(out_shape, name, indices, fresh) @ self.weight, len(out_shape))

    def epsilon(
        self, out_shape: tuple[int, ...], name: str, indices: Tensor | None, fresh: torch.Generator | None = None
    ) -> Tensor:
        """ε = σ_ε ξ (N, k) for a batch whose output has ``out_shape`` (checked against the NIW)."""
        ndim = len(out_shape)
        if ndim < 2 or self.axis % ndim == 0:
            raise ConfigError(
                "module",
                name,
                f"a submodule whose output has a feature axis besides the batch axis "
                f"(got output shape {out_shape}, feature axis {self.axis})",
            )
        if out_shape[self.axis % ndim] != self.features:
            raise ConfigError(
                "module",
                name,
                f"an output with {self.features} features on axis {self.axis} (got output shape {out_shape})",
            )
        n = out_shape[0]
        if self.spec.mode == "step" or fresh is not None:
            gen = self.generator if fresh is None else fresh
            xi = _draw(self.spec.distribution, (n, self.spec.n_nodes), gen).to(self.weight.device)
        else:
            if indices is None or indices.shape != (n,):
                got = None if indices is None else tuple(indices.shape)
                raise ConfigError(
                    "sample_indices",
                    got,
                    f"a LongTensor of shape ({n},) set by "
                    f"handle.set_sample_indices(idx) before each training forward ({self.spec.mode!r} mode)",
                )
            xi = self.table[indices.to(self.table.device)]
        return xi.to(self.weight.dtype) * self.sigma.to(self.weight.dtype)


class NINHandle:
    """The NINs attached to one model. Removing it restores the model's forward exactly.

    ``niws``/``parameters()`` give the NIWs to an optimiser; ``state_dict()`` (NIWs, σ_ε, ξ tables,
    generator state, epoch and step counters) saves with ``torch.save`` and loads with ``torch.load(weights_only=True)``.
    """

    def __init__(
        self, model: nn.Module, names: list[str], nodes: list[NoiseInjectionNode], generator: torch.Generator
    ) -> None:
        self.model, self.names, self.generator = model, names, generator
        self.nodes = nn.ModuleList(nodes)
        self.indices: Tensor | None = None
        self.epoch = 0
        self.steps = 0
        self._clean = 0
        self._fresh: torch.Generator | None = None
        modules = dict(model.named_modules())
        self._hooks = [
            modules[name].register_forward_hook(self._make_hook(name, node)) for name, node in zip(names, nodes)
        ]

    def _make_hook(self, name: str, node: NoiseInjectionNode) -> Callable[..., Tensor | None]:
        def hook(module: nn.Module, _args: Any, out: Any) -> Tensor | None:
            if (not module.training and self._fresh is None) or self._clean:
                return None
            if not isinstance(out, Tensor):
                raise ConfigError("module", name, f"a submodule whose output is one tensor (got {type(out).__name__})")
            return node.inject(out, name, self.indices, self._fresh, in_place=self._owns_output(module, hook, out))

        return hook

    @staticmethod
    def _owns_output(module: nn.Module, hook: Callable[..., Any], out: Tensor) -> bool:
        """Whether the NIN may add into ``out`` in place: an ``nn.Linear``'s fresh output (its backward keeps
        its input and weight, not its output), not a view, and no earlier forward hook of the module (or a
        global one) can have kept a reference to it."""
        hooks = list(module._forward_hooks.values())
        return (
            type(module) is nn.Linear
            and out._base is None
            and bool(hooks)
            and hooks[0] is hook
            and not torch.nn.modules.module._global_forward_hooks
        )

    @property
    def node_list(self) -> list[NoiseInjectionNode]:
        """The nodes of ``self.nodes`` (an ``nn.ModuleList``, which types its items as ``nn.Module``)."""
        return cast("list[NoiseInjectionNode]", list(self.nodes))

    @property
    def specs(self) -> list[NINSpec]:
        return [node.spec for node in self.node_list]

    @property
    def niws(self) -> list[nn.Parameter]:
        return [node.weight for node in self.node_list]

    def parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.niws)

    @property
    def sigmas(self) -> list[float]:
        return [float(node.sigma) for node in self.node_list]

    def to(self, *args: Any, **kwargs: Any) -> NINHandle:
        """Move NIWs and tables like ``nn.Module.to`` (the NIW Parameter objects are kept)."""
        self.nodes.to(*args, **kwargs)
        return self

    def set_sigma(self, i: int, sigma: float) -> None:
        """Set σ_ε of NIN ``i`` (its ξ draws are unit-variance, so tables stay valid)."""
        check_int("i", i, lo=0, hi=len(self.nodes) - 1)
        self.node_list[i].sigma.fill_(check_real("sigma", sigma, lo=0.0))
        self.node_list[i].spec.sigma = float(sigma)

    def set_sample_indices(self, idx: Tensor) -> None:
        """Indices (into the training set, 0..n_train−1) of the samples of the next training batch."""
        tables = [getattr(node, "table", None) for node in self.node_list]  # "step" mode has none
        sizes = [int(tab.shape[0]) for tab in tables if isinstance(tab, Tensor)]
        allowed = "a 1-d array of integer sample indices" + (f" in [0, {min(sizes)})" if sizes else "")
        try:
            t = torch.as_tensor(idx)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError("idx", type(idx).__name__, allowed) from None
        if t.dim() != 1 or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ConfigError("idx", f"tensor of shape {tuple(t.shape)} and dtype {t.dtype}", allowed)
        if t.numel() and (int(t.min()) < 0 or (sizes and int(t.max()) >= min(sizes))):
            raise ConfigError("idx", f"indices in [{int(t.min())}, {int(t.max())}]", allowed)
        self.indices = t.to(torch.long)

    def new_epoch(self) -> None:
        """Start the next epoch: "epoch"-mode NINs draw a fresh ξ per training sample."""
        self.epoch += 1
        for node in self.node_list:
            if node.spec.mode == "epoch":
                node.redraw()

    def new_step(self) -> None:
        """Count one optimiser step (``steps``). "step"-mode noise is fresh at every forward anyway."""
        self.steps += 1

    @contextmanager
    def clean(self) -> Iterator[None]:
        """Within the block the NINs inject nothing (ε = 0), also in training mode."""
        self._clean += 1
        try:
            yield
        finally:
            self._clean -= 1

    @contextmanager
    def fresh_noise(self, generator: torch.Generator) -> Iterator[None]:
        """Within the block every NIN injects fresh ξ drawn from ``generator`` (any mode), also in eval
        mode: for Monte-Carlo averages over the noise without touching the training noise stream."""
        self._fresh = generator
        try:
            yield
        finally:
            self._fresh = None

    def remove(self) -> None:
        """Detach every NIN; the model's forward and parameters are exactly as before attaching."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def state_dict(self) -> dict[str, Tensor]:
        sd = dict(self.nodes.state_dict())
        sd["generator_state"] = self.generator.get_state()
        sd["epoch"] = torch.tensor(self.epoch)
        sd["steps"] = torch.tensor(self.steps)
        return sd

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        self.generator.set_state(state.pop("generator_state"))
        self.epoch = int(state.pop("epoch"))
        self.steps = int(state.pop("steps", 0))
        self.nodes.load_state_dict(state)
        for node in self.node_list:
            node.spec.sigma = float(node.sigma)


def _validate(spec: NINSpec, modules: dict[str, nn.Module], n_train: int | None) -> None:
    if spec.module not in modules or spec.module == "":
        names = [n for n in modules if n]
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise ConfigError("module", spec.module, f"a submodule name of the model: {shown}")
    if spec.mode in ("epoch", "fixed") and n_train is None:
        raise ConfigError("n_train", None, f"the training-set size (an integer >= 1) for mode {spec.mode!r}")


def attach_nins(
    model: nn.Module,
    specs: Sequence[NINSpec] | NINSpec,
    *,
    n_train: int | None = None,
    generator: torch.Generator | None = None,
    example_input: Any = None,
) -> NINHandle:
    """Attach one NIN per spec to ``model`` (forward hooks; the model itself is not modified).

    ``n_train`` is the training-set size ("epoch"/"fixed" modes index ξ by sample). ``generator`` seeds
    NIW init and noise (default: one seeded from torch's global RNG). ``example_input`` (one batch) is
    run once to read output shapes where module attributes do not tell the feature size.
    """
    check_instance("model", model, nn.Module, "a torch.nn.Module")
    listed = [specs] if isinstance(specs, NINSpec) else specs
    if not isinstance(listed, (list, tuple)) or not all(isinstance(s, NINSpec) for s in listed):
        raise ConfigError("specs", specs, 'a NINSpec or a list of them (e.g. NINSpec("0", sigma=1.0))')
    specs = [replace(s) for s in listed]
    if not specs:
        raise ConfigError("specs", specs, "one or more NINSpec")
    if n_train is not None:
        check_int("n_train", n_train, lo=1)
    modules = dict(model.named_modules())
    for spec in specs:
        _validate(spec, modules, n_train)
    if generator is None:
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    nodes = []
    for spec in specs:
        module = modules[spec.module]
        axis = _feature_axis(module) if spec.feature_axis is None else spec.feature_axis
        features = spec.features or _features_from_attributes(module)
        if example_input is not None:
            shape = _output_shape(model, module, spec.module, example_input)
            if len(shape) < 2 or axis % len(shape) == 0 or not -len(shape) <= axis < len(shape):
                raise ConfigError(
                    "module",
                    spec.module,
                    f"a submodule whose output has a feature axis besides the "
                    f"batch axis (got output shape {shape}, feature axis {axis})",
                )
            features = shape[axis]
        if features is None:
            raise ConfigError(
                "module",
                spec.module,
                "a module with out_features/out_channels/num_features, "
                "or pass NINSpec.features or attach_nins(example_input=...)",
            )
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.get_default_dtype()
        nodes.append(NoiseInjectionNode(spec, features, axis, n_train, generator, device, dtype))
    return NINHandle(model, [s.module for s in specs], nodes, generator)
