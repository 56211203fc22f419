"""noiseprobe: noise in gradient-descent training.

``import noiseprobe as npb`` gives the main entry points; each is imported on first use (PEP 562), so
``import noiseprobe`` is fast and pulls in neither torch nor any optional dependency::

    import noiseprobe as npb

    handle = npb.attach_nins(model, npb.NINSpec("0", sigma=1.0), n_train=len(y))   # paper 001
    noise = npb.NoiseCovariance(model, loss_fn, x, y, batch_size=32)                # paper 002
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

#: public name -> module that defines it ("noises" is the module of noise constructors itself)
_EXPORTS: dict[str, str] = {
    # paper 001: Noise Injection Nodes
    "NINSpec": "noiseprobe.nin.injector",
    "attach_nins": "noiseprobe.nin.injector",
    "NINRecorder": "noiseprobe.nin.probe",
    # paper 002: minibatch noise
    "NoiseCovariance": "noiseprobe.probes.operators.noise_covariance",
    "GradientNoise": "noiseprobe.probes.operators.noise_covariance",
    "batch_factor": "noiseprobe.probes.operators.noise_covariance",
    "solve_fluctuation": "noiseprobe.minibatch.fluctuation",
    "NoStationaryState": "noiseprobe.minibatch.fluctuation",
    "LinearProblem": "noiseprobe.minibatch.simulate",
    "simulate_sgd": "noiseprobe.minibatch.simulate",
    "tail_index_exact": "noiseprobe.minibatch.tails",
    # paper 003: singular limits of noisy GD
    "noises": "noiseprobe.limits.noises",
    "Noise": "noiseprobe.limits.noises",
    "noisy_gd": "noiseprobe.limits.simulate",
    "simulate_noise": "noiseprobe.limits.simulate",
    "regulariser": "noiseprobe.limits.regulariser",
    "grad_regulariser": "noiseprobe.limits.regulariser",
    "limit_map": "noiseprobe.limits.manifold",
    "constrained_flow": "noiseprobe.limits.flow",
    "limiting_sde": "noiseprobe.limits.flow",
    # live measurements in a training run
    "NoiseMonitor": "noiseprobe.monitor.monitor",
    # curvature and noise operators on any PyTorch model, and their spectral estimators
    "Hessian": "noiseprobe.probes.operators.hessian",
    "EmpiricalFisher": "noiseprobe.probes.operators.fisher",
    "GaussNewton": "noiseprobe.probes.operators.ggn",
    "lanczos": "noiseprobe.probes.linalg",
    "hutchinson": "noiseprobe.probes.estimators",
    "hutchpp": "noiseprobe.probes.estimators",
    "bekas_diagonal": "noiseprobe.probes.estimators",
    "TokenMeanCrossEntropy": "noiseprobe.probes.losses",
    "register_rule": "noiseprobe.probes.rules.base",
    # the embedded data set (5,000 MNIST digits, nothing downloaded)
    "load_default": "noiseprobe.data.embedded",
    # experiments and their contract
    "run_experiment": "noiseprobe.core.runner",
    "Experiment": "noiseprobe.core.experiment",
    "Chunk": "noiseprobe.core.experiment",
    "RunCost": "noiseprobe.core.experiment",
    "Estimate": "noiseprobe.core.experiment",  # deprecated name of RunCost
    "ExperimentConfig": "noiseprobe.core.config",
    "param": "noiseprobe.core.config",
    "Check": "noiseprobe.core.checks",
    "ConfigError": "noiseprobe.core.errors",
    "NumericalError": "noiseprobe.core.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'noiseprobe' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if module.rsplit(".", 1)[1] == name else getattr(mod, name)
    globals()[name] = value
    return value


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
    from noiseprobe.limits.regulariser import grad_regulariser, regulariser
    from noiseprobe.limits.simulate import noisy_gd, simulate_noise
    from noiseprobe.minibatch.fluctuation import NoStationaryState, solve_fluctuation
    from noiseprobe.minibatch.simulate import LinearProblem, simulate_sgd
    from noiseprobe.minibatch.tails import tail_index_exact
    from noiseprobe.monitor.monitor import NoiseMonitor
    from noiseprobe.nin.injector import NINSpec, attach_nins
    from noiseprobe.nin.probe import NINRecorder
    from noiseprobe.probes.estimators import bekas_diagonal, hutchinson, hutchpp
    from noiseprobe.probes.linalg import lanczos
    from noiseprobe.probes.losses import TokenMeanCrossEntropy
    from noiseprobe.probes.operators.fisher import EmpiricalFisher
    from noiseprobe.probes.operators.ggn import GaussNewton
    from noiseprobe.probes.operators.hessian import Hessian
    from noiseprobe.probes.operators.noise_covariance import GradientNoise, NoiseCovariance, batch_factor
    from noiseprobe.probes.rules.base import register_rule
