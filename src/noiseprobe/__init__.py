"""noiseprobe: noise in gradient-descent training.

``import noiseprobe as npb`` gives the main entry points; each is imported on first use (PEP 562), so
``import noiseprobe`` is fast and pulls in neither torch nor any optional dependency::

    import noiseprobe as npb

    handle = npb.attach_nins(model, npb.NINSpec("0", sigma=1.0), n_train=len(y))   # paper 001
    noise = npb.NoiseCovariance(model, loss_fn, inputs, targets, batch_size=32)      # paper 002
    sigma = npb.solve_fluctuation(H, C, lr=0.1)
    reg = npb.regulariser(npb.noises.perturbed(loss, d=2, sigma=0.1), w)            # paper 003
    summary = npb.run_experiment("nin-fig2-top")

Layers (docs/architecture.md): pure *theory* functions, replica-batched *simulation* engines, instruments
on any PyTorch model (*probes*), and *experiments* that reproduce the papers' figures and tables.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from noiseprobe._version import __version__
from noiseprobe.core import ids as _ids

#: public name -> (module, attribute) it is: the attribute of that module, or the module itself when the
#: attribute is None ("noises", the module of noise constructors); never inferred from the names
_EXPORTS: dict[str, tuple[str, str | None]] = {
    # paper 001: Noise Injection Nodes
    "NINSpec": ("noiseprobe.nin.injector", "NINSpec"),
    "attach_nins": ("noiseprobe.nin.injector", "attach_nins"),
    "NINRecorder": ("noiseprobe.nin.probe", "NINRecorder"),
    # paper 002: minibatch noise
    "NoiseCovariance": ("noiseprobe.probes.operators.noise_covariance", "NoiseCovariance"),
    "GradientNoise": ("noiseprobe.probes.operators.noise_covariance", "GradientNoise"),
    "batch_factor": ("noiseprobe.probes.operators.noise_covariance", "batch_factor"),
    "solve_fluctuation": ("noiseprobe.minibatch.fluctuation", "solve_fluctuation"),
    "NoStationaryState": ("noiseprobe.minibatch.fluctuation", "NoStationaryState"),
    "LinearProblem": ("noiseprobe.minibatch.sgd", "LinearProblem"),
    "simulate_sgd": ("noiseprobe.minibatch.sgd", "simulate_sgd"),
    "tail_index_exact": ("noiseprobe.minibatch.tails", "tail_index_exact"),
    # paper 003: singular limits of noisy GD
    "noises": ("noiseprobe.limits.noises", None),
    "Noise": ("noiseprobe.limits.noises", "Noise"),
    "noisy_gd": ("noiseprobe.limits.noisy_gd", "noisy_gd"),
    "simulate_noise": ("noiseprobe.limits.noisy_gd", "simulate_noise"),
    "regulariser": ("noiseprobe.limits.regulariser", "regulariser"),
    "grad_regulariser": ("noiseprobe.limits.regulariser", "grad_regulariser"),
    "limit_map": ("noiseprobe.limits.manifold", "limit_map"),
    "constrained_flow": ("noiseprobe.limits.flow", "constrained_flow"),
    "limiting_sde": ("noiseprobe.limits.flow", "limiting_sde"),
    # live measurements in a training run
    "NoiseMonitor": ("noiseprobe.monitor.monitor", "NoiseMonitor"),
    # curvature and noise operators on any PyTorch model, and their spectral estimators
    "Hessian": ("noiseprobe.probes.operators.hessian", "Hessian"),
    "EmpiricalFisher": ("noiseprobe.probes.operators.fisher", "EmpiricalFisher"),
    "GaussNewton": ("noiseprobe.probes.operators.ggn", "GaussNewton"),
    "lanczos": ("noiseprobe.probes.eigensolvers", "lanczos"),
    "hutchinson": ("noiseprobe.probes.estimators", "hutchinson"),
    "hutchpp": ("noiseprobe.probes.estimators", "hutchpp"),
    "bekas_diagonal": ("noiseprobe.probes.estimators", "bekas_diagonal"),
    "TokenMeanCrossEntropy": ("noiseprobe.probes.sample_losses", "TokenMeanCrossEntropy"),
    "register_rule": ("noiseprobe.probes.rules.base", "register_rule"),
    # the embedded data set (5,000 MNIST digits, nothing downloaded)
    "load_default": ("noiseprobe.data.embedded", "load_default"),
    # experiments and their contract
    "run_experiment": ("noiseprobe.core.runner", "run_experiment"),
    "Experiment": ("noiseprobe.core.experiment", "Experiment"),
    "Chunk": ("noiseprobe.core.experiment", "Chunk"),
    "RunCost": ("noiseprobe.core.experiment", "RunCost"),
    "Estimate": ("noiseprobe.core.experiment", "Estimate"),  # deprecated name of RunCost
    "ExperimentConfig": ("noiseprobe.core.config", "ExperimentConfig"),
    "param": ("noiseprobe.core.config", "param"),
    "Check": ("noiseprobe.core.checks", "Check"),
    "ConfigError": ("noiseprobe.core.errors", "ConfigError"),
    "NumericalError": ("noiseprobe.core.errors", "NumericalError"),
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'noiseprobe' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def _experiment_paths() -> dict[str, str]:
    """The experiments registry, imported when core first resolves an id (core imports nothing above it)."""
    from noiseprobe.experiments import paths

    return paths()


_ids.set_registry(_experiment_paths)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from noiseprobe.core.checks import Check
    from noiseprobe.core.config import ExperimentConfig, param
    from noiseprobe.core.errors import ConfigError, NumericalError
    from noiseprobe.core.experiment import Chunk, Estimate, Experiment, RunCost
    from noiseprobe.core.runner import run_experiment
    from noiseprobe.data.embedded import load_default
    from noiseprobe.limits import noises
    from noiseprobe.limits.flow import constrained_flow, limiting_sde
    from noiseprobe.limits.manifold import limit_map
    from noiseprobe.limits.noises import Noise
    from noiseprobe.limits.noisy_gd import noisy_gd, simulate_noise
    from noiseprobe.limits.regulariser import grad_regulariser, regulariser
    from noiseprobe.minibatch.fluctuation import NoStationaryState, solve_fluctuation
    from noiseprobe.minibatch.sgd import LinearProblem, simulate_sgd
    from noiseprobe.minibatch.tails import tail_index_exact
    from noiseprobe.monitor.monitor import NoiseMonitor
    from noiseprobe.nin.injector import NINSpec, attach_nins
    from noiseprobe.nin.probe import NINRecorder
    from noiseprobe.probes.eigensolvers import lanczos
    from noiseprobe.probes.estimators import bekas_diagonal, hutchinson, hutchpp
    from noiseprobe.probes.operators.fisher import EmpiricalFisher
    from noiseprobe.probes.operators.ggn import GaussNewton
    from noiseprobe.probes.operators.hessian import Hessian
    from noiseprobe.probes.operators.noise_covariance import GradientNoise, NoiseCovariance, batch_factor
    from noiseprobe.probes.rules.base import register_rule
    from noiseprobe.probes.sample_losses import TokenMeanCrossEntropy
