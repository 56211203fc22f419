"""Layer-wise noise scale (Gray, Tiwari, Bergsma & Hestness, NeurIPS 2024, arXiv 2411.00999).

For a set l of parameters, tr Σ_l, |G_l|² and B_simple_l = tr Σ_l/|G_l|² are McCandlish et al.'s
estimators (:mod:`noiseprobe.monitor.gns`) on the gradients restricted to l, i.e. on the Gram block
K_l = J_l J_lᵀ. tr Σ and |G|² are sums over a partition of the parameters, so Σ_l tr Σ_l = tr Σ and
Σ_l |G_l|² = |G|² exactly; B_simple is not additive. Gray et al. claim that B_simple of the normalisation
layers' parameters alone tracks the total B_simple through the training of transformers (their Fig. 1, §4:
the two agree to within a roughly constant factor, enough to predict it); the ``gns-layers`` experiment
tests it on our data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from torch import nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.monitor.context import Context
from noiseprobe.monitor.gns import noise_scale_from_gram
from noiseprobe.monitor.metric import Metric, register_metric
from noiseprobe.probes.persample import parameter_owners

#: the built-in group of every normalisation module
NORMS = "norms"
_NORM_TYPES = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.LocalResponseNorm)


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: torch's (LayerNorm, RMSNorm, GroupNorm, BatchNorm, InstanceNorm) or a class
    whose name ends in "Norm" (transformers' LlamaRMSNorm, T5LayerNorm, …)."""
    return isinstance(module, _NORM_TYPES) or type(module).__name__.lower().endswith("norm")


@register_metric
class Layers(Metric):
    """``tr_sigma/<key>``, ``g_sq/<key>``, ``b_simple/<key>`` for every parameter-owning module (key = its
    path in the unwrapped model; each parameter counted once, a tied one under its first owner:
    :func:`~noiseprobe.probes.persample.parameter_owners`) and ``…/group:<name>`` for every group: the
    built-in "norms" (every normalisation module, :func:`is_norm`; NaN when there is none) and those of
    ``groups`` (name -> module paths, a path standing for the modules under it too, or module objects).
    From the per-sample Gram blocks of the factored engine, or the micro-batch gradients under the
    micro-batch estimator (:attr:`Context.module_grams`)."""

    name = "layers"
    gradients_only = True
    #: opt-in (three columns per module; single-process only): not part of "all"
    in_all = False

    def __init__(self, groups: Mapping[str, Sequence[str | nn.Module]] | None = None) -> None:
        groups = dict(groups or {})
        for g, members in groups.items():
            if not isinstance(g, str) or not g or g == NORMS:
                raise ConfigError("groups", g, f'non-empty group names other than the built-in "{NORMS}"')
            if isinstance(members, (str, nn.Module)) or not isinstance(members, Sequence) or not members:
                raise ConfigError(f"groups[{g!r}]", members, "a non-empty list of module paths or modules")
        self.groups = groups
        self._members: dict[str, list[str]] | None = None

    def _resolve(self, model: nn.Module) -> dict[str, list[str]]:
        """Group name -> the module keys in it (once per monitor: the model's structure does not change)."""
        owners = parameter_owners(model)
        keys = list(dict.fromkeys(k for k, _ in owners.values()))
        paths = {id(m): path for path, m in getattr(model, "_orig_mod", model).named_modules()}
        out = {NORMS: list(dict.fromkeys(k for k, m in owners.values() if is_norm(m)))}
        for g, members in self.groups.items():
            chosen: list[str] = []
            for item in members:
                path = paths.get(id(item)) if isinstance(item, nn.Module) else item
                if not isinstance(path, str):
                    raise ConfigError(f"groups[{g!r}]", type(item).__name__, "module paths or modules of the model")
                hit = [k for k in keys if path == "" or k == path or k.startswith(path + ".")]
                if not hit:
                    raise ConfigError(f"groups[{g!r}]", path, "paths of parameter-owning modules (or their parents)")
                chosen += [k for k in hit if k not in chosen]
            out[g] = chosen
        return out

    def measure(self, ctx: Context) -> dict[str, float]:
        if self._members is None:
            self._members = self._resolve(ctx.model)
        out: dict[str, float] = {}
        scales = ctx.module_noise
        for key, ns in scales.items():
            out.update({f"tr_sigma/{key}": ns.tr_sigma, f"g_sq/{key}": ns.g_sq, f"b_simple/{key}": ns.b_simple})
        b = ctx.noise.micro_batch_size
        for g, members in self._members.items():
            grams = [ctx.module_grams[k] for k in members if k in ctx.module_grams]
            if grams:
                ns = noise_scale_from_gram(np.sum(grams, axis=0), b)
                t, q, r = ns.tr_sigma, ns.g_sq, ns.b_simple
            else:
                t = q = r = float("nan")
            out.update({f"tr_sigma/group:{g}": t, f"g_sq/group:{g}": q, f"b_simple/group:{g}": r})
        return out
