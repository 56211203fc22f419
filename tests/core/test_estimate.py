"""The up-front memory estimate (Experiment.estimate) is within 0.5-2x of the measured peak.

Measured: the growth of peak RSS (VmHWM, reset through /proc/self/clear_refs) of a fresh Python process
over its RSS after importing the experiment, while it runs the experiment's first chunk.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from noiseprobe import experiments

MEASURE = r"""
import gc, json, sys
from pathlib import Path
from noiseprobe.core.runner import execute_chunk, get_experiment

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

exp_id, preset, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
exp = get_experiment(exp_id)
cfg = exp.config(preset, overrides)
est = exp.estimate(cfg)
chunk = exp.chunks(cfg)[0]
values = cfg.to_dict() if hasattr(cfg, "to_dict") else cfg
gc.collect()
Path("/proc/self/clear_refs").write_text("5")      # reset the peak to the current RSS
base = status("VmRSS")
execute_chunk(exp_id, values, chunk.key, chunk.spec)
print(json.dumps({"estimate": est.peak_bytes, "measured": status("VmHWM") - base}))
"""


def measure(exp_id: str, preset: str = "quick", overrides: dict | None = None, env: dict | None = None) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, exp_id, preset, json.dumps(overrides or {})],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_within(m: dict) -> None:
    ratio = m["estimate"] / max(m["measured"], 1)
    assert 0.5 <= ratio <= 2, f"estimate {m['estimate']} B vs measured peak {m['measured']} B (ratio {ratio:.2f})"


pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")


def test_sample_estimate_is_within_a_factor_2_of_the_measured_peak(sample_env):
    _assert_within(measure("sample_experiment:Walk", "quick", {"per_chunk": 50, "n_steps": 200000}, sample_env))


@pytest.mark.slow
@pytest.mark.parametrize("exp_id", list(experiments.REGISTRY))
def test_estimate_of_every_quick_preset_is_within_a_factor_2(exp_id):
    exp = experiments.get(exp_id)
    assert exp.estimate(exp.config("quick")) is not None, f"{exp_id} defines no estimate()"
    _assert_within(measure(exp_id))
