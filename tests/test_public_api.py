"""The public face: `import noiseprobe as npb` is light, and every exported name resolves."""

from __future__ import annotations

import json
import subprocess
import sys

import noiseprobe as npb

HEAVY = ("torch", "numba", "ray", "scipy", "pandas", "matplotlib", "transformers", "lightning", "jax")


def test_import_is_lazy_and_pulls_no_heavy_dependency():
    code = f"import sys, json, noiseprobe; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_every_exported_name_resolves():
    for name in npb.__all__:
        assert getattr(npb, name) is not None, name
    assert callable(npb.attach_nins) and callable(npb.noises.perturbed) and npb.Check.close
    assert set(npb.__all__) <= set(dir(npb))


def test_unknown_name_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError):
        npb.no_such_thing  # noqa: B018


def test_aliases_are_the_same_objects():
    """One class per concept: the earlier names are aliases, not copies."""
    assert npb.GradientNoise is npb.NoiseCovariance
    assert npb.Estimate is npb.RunCost  # deprecated name of the run-cost estimate
    from noiseprobe.probes.estimators import StochasticEstimate

    assert StochasticEstimate is not npb.RunCost and callable(npb.register_rule)


def test_the_lazy_export_table_returns_each_object_name_by_name():
    """Each exported name is the object it documents (``npb.regulariser`` is the function, not its module),
    checked against direct imports in a fresh interpreter (no name resolved before)."""
    code = """
import types, noiseprobe as npb
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
from noiseprobe.limits.noisy_gd import noisy_gd, simulate_noise
from noiseprobe.minibatch.fluctuation import NoStationaryState, solve_fluctuation
from noiseprobe.minibatch.sgd import LinearProblem, simulate_sgd
from noiseprobe.minibatch.tails import tail_index_exact
from noiseprobe.monitor.monitor import NoiseMonitor
from noiseprobe.nin.injector import NINSpec, attach_nins
from noiseprobe.nin.probe import NINRecorder
from noiseprobe.probes.estimators import bekas_diagonal, hutchinson, hutchpp
from noiseprobe.probes.eigensolvers import lanczos
from noiseprobe.probes.sample_losses import TokenMeanCrossEntropy
from noiseprobe.probes.operators.fisher import EmpiricalFisher
from noiseprobe.probes.operators.ggn import GaussNewton
from noiseprobe.probes.operators.hessian import Hessian
from noiseprobe.probes.operators.noise_covariance import GradientNoise, NoiseCovariance, batch_factor
from noiseprobe.probes.rules.base import register_rule
expected = {k: v for k, v in locals().items() if not k.startswith("_") and k not in ("types", "npb")}
wrong = [n for n in npb.__all__ if n != "__version__" and getattr(npb, n) is not expected.pop(n, None)]
modules = [n for n in npb.__all__ if isinstance(getattr(npb, n), types.ModuleType)]
print(wrong, sorted(expected), modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "[]", "['noises']"]
    assert callable(npb.regulariser) and npb.regulariser.__name__ == "regulariser"
