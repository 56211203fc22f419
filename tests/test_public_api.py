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
