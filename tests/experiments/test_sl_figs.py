"""Singular-limits experiments sl-fig1..4: end to end through the runner (sl-fig2 quick = the demo run),
reduced runs of the others, config validation, and the helpers against independent computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.runner import run_experiment
from noiseprobe.experiments import get
from noiseprobe.experiments.sl_figs import _argmin_on_circle, _gradient_flow_time
from noiseprobe.limits import noises
from noiseprobe.limits.losses import circle_loss
from noiseprobe.limits.regulariser import regulariser


def _checks(summary: dict) -> dict[str, dict]:
    return {c["claim"]: c for c in summary["checks"]}


def _passed(summary: dict, fragment: str) -> bool:
    hits = [c for claim, c in _checks(summary).items() if fragment in claim]
    assert hits, f"no check mentions {fragment!r}"
    return all(c["passed"] for c in hits)


def test_fig2_quick_preset_end_to_end(tmp_path) -> None:
    """The demo run: every check passes, error ∝ α on the grid, files written."""
    summary = run_experiment("sl-fig2", preset="quick", out=tmp_path, workers=1)
    assert all(c["passed"] for c in summary["checks"]), json.dumps(summary["checks"], indent=1)
    assert (tmp_path / "fig2.png").stat().st_size > 10_000
    errs = [row["max_err"] for row in summary["metrics"]["grid"]]   # sorted by α ascending
    assert errs[0] < errs[1] < errs[2]
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert {"chain", "step", "lr", "w0", "w1", "theta", "loss", "diverged", "t_A"} <= set(df.columns)
    assert not df["diverged"].any()


def test_fig1_gd_stops_ngd_moves(tmp_path) -> None:
    summary = run_experiment("sl-fig1", preset="quick", out=tmp_path, workers=1,
                             overrides={"chains": 8, "per_chunk": 4, "t_end": 2.0, "records": 40})
    assert all(c["passed"] for c in summary["checks"]), json.dumps(summary["checks"], indent=1)
    m = summary["metrics"]
    assert m["ngd_mean_theta_end"] - m["gd_theta_end"] > 0.5     # NGD has moved ~0.9 rad further along Γ


def test_fig3_reduced(tmp_path) -> None:
    summary = run_experiment("sl-fig3", preset="quick", out=tmp_path, workers=1,
                             overrides={"chains": 12, "per_chunk": 12, "t_end_A": 1.0, "t_end_B": 0.3,
                                        "t_check_A": [0.5, 1.0], "t_check_B": [0.15, 0.3], "records": 40,
                                        "mb_chains": 4, "sde_dt": 0.05})
    for fragment in ("Theorem A with Reg", "caption's printed", "Theorem B", "minibatch"):
        assert _passed(summary, fragment), json.dumps(summary["checks"], indent=1)
    assert summary["metrics"]["caption_reg_ratio"] == pytest.approx(4.0)
    assert abs(summary["metrics"]["argmin_reg_A"] - math.pi / 2) < 1e-6


def test_fig4_chunking_does_not_change_results() -> None:
    """Chains depend on (seed, global index) only: two chunks reproduce one chunk of the same chains."""
    exp = get("sl-fig4")
    cfg = exp.config("quick", {"chains": 6, "per_chunk": 6, "t_end": 1.0, "t_check": [0.5], "records": 10})
    one = exp.run_chunk(cfg, exp.chunks(cfg)[0])
    cfg2 = dict(cfg, per_chunk=4)
    two = pd.concat([exp.run_chunk(cfg2, c) for c in exp.chunks(cfg2) if c.spec["variant"] == "independent"])
    key = ["chain", "step"]
    pd.testing.assert_frame_equal(one.sort_values(key).reset_index(drop=True),
                                  two.sort_values(key).reset_index(drop=True))


@pytest.mark.parametrize("exp_id, overrides", [
    ("sl-fig2", {"main_lr": 0.3}), ("sl-fig2", {"lrs": [0.1]}), ("sl-fig2", {"t_check": [9.0]}),
    ("sl-fig1", {"w0": [1.0]}), ("sl-fig1", {"w0": [0.0, 3.0]}), ("sl-fig1", {"lr": -0.1}),
    ("sl-fig3", {"mb_lr": 0.5}), ("sl-fig3", {"mb_w0": [-1.0, -1.0]}),
    ("sl-fig4", {"chains": 1}),
])
def test_invalid_overrides_raise_config_error(exp_id: str, overrides: dict) -> None:
    with pytest.raises(ConfigError):
        get(exp_id).config("quick", overrides)


def test_fig4_regulariser_minimisers_match_closed_forms() -> None:
    """argmin on Γ of Reg_C = ½tr(C̃∇²L): π for C̃ = I, 3π/4 for C̃ = ½·ones (reference §8 closed forms)."""
    ind = noises.perturbed(circle_loss, 2)
    cor = noises.perturbed(circle_loss, 2, C=[[0.5, 0.5], [0.5, 0.5]])
    assert _argmin_on_circle(lambda w: regulariser(ind, w), 3.0) == pytest.approx(math.pi, abs=1e-6)
    assert _argmin_on_circle(lambda w: regulariser(cor, w), 2.0) == pytest.approx(3 * math.pi / 4, abs=1e-6)


def test_gradient_flow_time_matches_small_step_gd() -> None:
    """The event-located gradient-flow time vs plain GD with a tiny step (first order in α)."""
    g = torch.func.grad(circle_loss)
    alpha, w, k = 1e-3, torch.tensor([0.0, 1.5], dtype=torch.float64), 0
    while abs(float(w.norm()) - 1.0) >= 0.05:
        w, k = w - alpha * g(w), k + 1
    assert _gradient_flow_time([0.0, 1.5], 0.05) == pytest.approx(alpha * k, abs=5 * alpha)


@pytest.mark.slow
@pytest.mark.parametrize("exp_id", ["sl-fig1", "sl-fig3", "sl-fig4"])
def test_quick_presets_pass_all_checks(tmp_path, exp_id: str) -> None:
    summary = run_experiment(exp_id, preset="quick", out=tmp_path, workers=1)
    assert all(c["passed"] for c in summary["checks"]), json.dumps(summary["checks"], indent=1)
    assert any(p.suffix == ".png" for p in tmp_path.iterdir())
    assert np.isfinite(pd.read_parquet(tmp_path / "results.parquet")["theta"]).all()
