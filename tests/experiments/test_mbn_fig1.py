"""mbn-fig1: the replica-batched trainers (minibatch/nets.py) against plain PyTorch training, divergence,
validation, end to end, checks by key, resume of an old run directory."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.seeding import torch_generator
from noiseprobe.experiments import get
from noiseprobe.minibatch.nets import epoch_batches, train_logistic, train_tanh_net

#: config hashes of the quick presets written by the code before the typed configs (run.json "hash")
OLD_HASHES = {"mbn-fig1": "5934a729f4022b6a", "mbn-fig1-left": "ec9a96c7f897f17c", "mbn-fig1-right": "6846e54291c92ab8"}


def _toy(n: int = 64, d: int = 12, k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_tanh_trainer_matches_torch_optim(optimizer: str) -> None:
    """Each replica equals nn.Sequential + torch.optim.{SGD, Adam} from the same init and batches."""
    x, y = _toy()
    width, lrs = 7, torch.tensor([0.3, 0.05]) if optimizer == "sgd" else torch.tensor([0.01, 0.002])
    gens = [torch_generator(1, r, 5) for r in range(2)]
    batches = epoch_batches(1, [0, 1], n=len(y), batch_size=8, epochs=2, stream=0)
    losses = train_tanh_net(x, y, width=width, lrs=lrs, optimizer=optimizer, init_gens=gens, batches=batches)
    for r in range(2):
        g = torch_generator(1, r, 5)  # the same draws as _init: W1, b1, W2, b2 in this order
        w1 = (torch.rand(12, width, generator=g) * 2 - 1) / 12**0.5
        b1 = (torch.rand(width, generator=g) * 2 - 1) / 12**0.5
        w2 = (torch.rand(width, 3, generator=g) * 2 - 1) / width**0.5
        b2 = (torch.rand(3, generator=g) * 2 - 1) / width**0.5
        net = nn.Sequential(nn.Linear(12, width), nn.Tanh(), nn.Linear(width, 3))
        with torch.no_grad():
            for lin, w, b in ((net[0], w1, b1), (net[2], w2, b2)):
                lin.weight.copy_(w.T)
                lin.bias.copy_(b)
        opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)(net.parameters(), lr=float(lrs[r]))
        ref = []
        for idx in batches[r]:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            ref.append(loss.item())
            loss.backward()
            opt.step()
        np.testing.assert_allclose(losses[r].numpy(), ref, rtol=2e-5, atol=1e-6)


def test_logistic_trainer_matches_autograd_with_signed_weight_decay() -> None:
    """w ← w − λ∇(L + ½γ‖θ‖²) by autograd, for γ of both signs; a runaway γ is recorded as diverged."""
    x, y = _toy(seed=1)
    xt, yt = _toy(n=40, seed=2)
    gammas = torch.tensor([0.02, -0.02, -1e4])
    batches = epoch_batches(3, [0], n=len(y), batch_size=16, epochs=3, stream=0).repeat(3, 1, 1)
    out = train_logistic(x, y, xt, yt, lr=0.5, gammas=gammas, batches=batches)
    for r, gam in enumerate(gammas[:2].tolist()):
        lin = nn.Linear(12, 3)
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)
        for idx in batches[r]:
            lin.zero_grad()
            reg = 0.5 * gam * sum((p**2).sum() for p in lin.parameters())
            (nn.functional.cross_entropy(lin(x[idx]), y[idx]) + reg).backward()
            with torch.no_grad():
                for p in lin.parameters():
                    p -= 0.5 * p.grad
        with torch.no_grad():
            assert out["test_loss"][r] == pytest.approx(nn.functional.cross_entropy(lin(xt), yt).item(), rel=1e-5)
            assert out["train_loss"][r] == pytest.approx(nn.functional.cross_entropy(lin(x), y).item(), rel=1e-5)
            assert out["test_acc"][r] == pytest.approx((lin(xt).argmax(1) == yt).float().mean().item())
    assert np.isinf(out["test_loss"][2]) and np.isnan(out["test_acc"][2])  # |1 + λγ| = 5e3 per step: overflow


def test_validation_errors() -> None:
    exp = get("mbn-fig1")
    for key, value in [("widths", []), ("gammas", [0.1]), ("sgd_lr", -1.0), ("inputs", "raw"), ("n_seeds", 1)]:
        with pytest.raises(ConfigError):
            exp.config("quick", {key: value})


def test_public_trainers_reject_bad_input() -> None:
    x, y = _toy()
    batches = epoch_batches(1, [0, 1], n=len(y), batch_size=8, epochs=1, stream=0)
    gens = [torch_generator(1, r, 5) for r in range(2)]
    for kwargs, field in [(dict(batch_size=65), "batch_size"), (dict(epochs=0), "epochs")]:
        with pytest.raises(ConfigError, match=field):
            epoch_batches(1, [0], n=len(y), **{"batch_size": 8, "epochs": 1, **kwargs}, stream=0)
    with pytest.raises(ConfigError, match="lrs"):
        train_tanh_net(x, y, width=4, lrs=torch.tensor([0.1]), optimizer="sgd", init_gens=gens, batches=batches)
    with pytest.raises(ConfigError, match="optimizer"):
        train_tanh_net(
            x, y, width=4, lrs=torch.tensor([0.1, 0.1]), optimizer="rmsprop", init_gens=gens, batches=batches
        )
    with pytest.raises(ConfigError, match="gammas"):
        train_logistic(x, y, x, y, lr=0.5, gammas=torch.tensor([0.0, 0.1, 0.2]), batches=batches)
    with pytest.raises(ConfigError, match="lr"):
        train_logistic(x, y, x, y, lr=-0.5, gammas=torch.tensor([0.0, 0.1]), batches=batches)


def test_end_to_end_quick_overrides(tmp_path) -> None:
    from noiseprobe.core.runner import run_experiment

    overrides = {
        "widths": [4, 16],
        "n_seeds": 2,
        "epochs": 1,
        "batch_size": 250,
        "gammas": [-0.005, 0.0],
        "right_epochs": 1,
        "right_batch_size": 250,
    }
    summary = run_experiment("mbn-fig1", "quick", out=tmp_path / "run", overrides=overrides)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["experiment"] == "mbn-fig1"
    assert set(summary["figures"]) == {"fig1_left_sgd.png", "fig1_middle_adam.png", "fig1_right.png"}
    assert [c["key"] for c in summary["checks"]] == [
        "sgd-variance-grows-with-width",
        "sgd-variance-flat-when-lr-rescaled",
        "adam-variance-grows-with-width",
        "adam-variance-flat-when-lr-rescaled",
        "best-weight-decay-negative",
    ]

    res = pd.read_parquet(tmp_path / "run" / "results.parquet")
    left, right = res[res["panel"] == "left"], res[res["panel"] == "right"]
    assert len(left) == 2 * 2 * 2 * 2 and len(right) == 2 * 2  # (opt, width, rule, seed); (γ, seed)
    resc = left[(left["lr_rule"] == "rescaled") & (left["optimizer"] == "sgd")].set_index("width")["lr"]
    assert resc.loc[4].iloc[0] == pytest.approx(0.5 * 50 / 4) and resc.loc[16].iloc[0] == pytest.approx(0.5 * 50 / 16)
    # chunking independence: rerunning one chunk alone reproduces its rows
    exp = get("mbn-fig1")
    cfg = exp.config("quick", overrides)
    chunk = next(c for c in exp.chunks(cfg) if c.key == "left-sgd-d00016")
    again = exp.measure(cfg, chunk)["results"]
    np.testing.assert_array_equal(
        again["loss_var"].to_numpy(), left[(left["optimizer"] == "sgd") & (left["width"] == 16)]["loss_var"].to_numpy()
    )


def _left_table(fixed_growth: float, rescaled_spread: float) -> pd.DataFrame:

    rows = []
    for opt in ("sgd", "adam"):
        for k, w in enumerate((4, 16, 64)):
            for seed in range(3):
                rows.append(
                    {
                        "optimizer": opt,
                        "lr_rule": "fixed",
                        "width": w,
                        "seed": seed,
                        "diverged": False,
                        "loss_var": 1e-3 * fixed_growth ** (k / 2) * (1 + 0.01 * seed),
                    }
                )
                rows.append(
                    {
                        "optimizer": opt,
                        "lr_rule": "rescaled",
                        "width": w,
                        "seed": seed,
                        "diverged": False,
                        "loss_var": 1e-3 * rescaled_spread ** (k / 2) * (1 + 0.01 * seed),
                    }
                )
    return pd.DataFrame(rows).assign(panel="left")


def _right_table(best_gamma: float) -> pd.DataFrame:

    rng = np.random.default_rng(0)
    gammas = [-0.01, 0.0, 0.01]
    rows = [
        {
            "seed": s,
            "gamma": g,
            "diverged": False,
            "test_loss": 1.0 - (g == best_gamma) * 0.1,
            "test_acc": 0.8 + 0.05 * (g == best_gamma) + 0.002 * rng.standard_normal(),
        }
        for s in range(8)
        for g in gammas
    ]
    return pd.DataFrame(rows).assign(panel="right")


def test_analysis_checks_pass_and_fail_on_synthetic_tables() -> None:
    """The claims' checks measure the table: growth / flat variance and a negative best γ pass; a flat fixed-lr
    variance, a width-dependent rescaled one and a positive best γ fail (measured values are the table's)."""
    from noiseprobe.experiments import _mbn_fig1_left as left
    from noiseprobe.experiments import _mbn_fig1_right as right

    cfg = get("mbn-fig1").config("quick")
    good = left.checks(_left_table(fixed_growth=100.0, rescaled_spread=1.0))
    assert [c.passed for c in good] == [True] * 4
    assert good[0].key == "sgd-variance-grows-with-width" and good[0].measured == pytest.approx(
        100.0 * 1.0
    )  # ratio of seed medians, d = 64 over d = 4
    bad = left.checks(_left_table(fixed_growth=1.0, rescaled_spread=100.0))
    assert [c.passed for c in bad] == [False] * 4
    assert bad[0].measured == pytest.approx(1.0) and bad[0].measured < left.GROWTH_MIN
    bd = right.best_decay(cfg, _right_table(-0.01))
    checks, metrics = right.checks(cfg, bd), right.metrics(bd)
    assert [c.key for c in checks] == ["best-weight-decay-negative"] and metrics["gamma_star"] == -0.01
    assert checks[0].passed and checks[0].measured == 0.0  # no bootstrap resample picks γ >= 0
    assert metrics["test_acc_gain_over_gamma0"][0] == pytest.approx(0.05, abs=0.01)
    wrong = right.checks(cfg, right.best_decay(cfg, _right_table(0.01)))
    assert wrong[0].passed is False and wrong[0].measured == 1.0


def test_all_replicas_diverged_is_not_measurable(tmp_path) -> None:
    """The experiment's own all-diverging overrides (tiny sizes): the run finishes, every check is not measurable."""
    from noiseprobe.core.runner import run_experiment

    exp = get("mbn-fig1")
    small = {
        "widths": [4, 8],
        "n_seeds": 2,
        "batch_size": 250,
        "gammas": [-0.005, 0.0],
        "right_epochs": 1,
        "right_batch_size": 250,
    }
    summary = run_experiment("mbn-fig1", "quick", out=tmp_path / "run", overrides={**small, **exp.diverging})
    assert summary["checks"] and {c["verdict"] for c in summary["checks"]} == {"not measurable"}
    res = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert res["diverged"].all()


def test_typed_config_keeps_the_old_hash() -> None:
    """The typed config's dict is the old preset dict: the hash of a run directory written before the move."""
    from noiseprobe.core.store import config_hash

    for exp_id, h in OLD_HASHES.items():
        exp = get(exp_id)
        assert config_hash(exp_id, exp.config("quick").to_dict()) == h, exp_id


def test_trainers_follow_the_data_dtype() -> None:
    """Nothing assumes float32/CPU: float64 data give float64 losses and parameters (device follows x too)."""
    x, y = _toy()
    x = x.double()
    batches = epoch_batches(1, [0, 1], n=len(y), batch_size=8, epochs=1, stream=0)
    gens = [torch_generator(1, r, 5) for r in range(2)]
    losses = train_tanh_net(
        x, y, width=4, lrs=torch.tensor([0.1, 0.2]), optimizer="adam", init_gens=gens, batches=batches
    )
    assert losses.dtype == torch.float64 and losses.device == x.device and torch.isfinite(losses).all()
    out = train_logistic(x, y, x, y, lr=0.5, gammas=torch.tensor([0.0, 0.1]), batches=batches)
    assert out["test_loss"].dtype == np.float64


@pytest.mark.parametrize("exp_id", ["mbn-fig1", "mbn-fig1-left", "mbn-fig1-right"])
def test_estimate_names_config_fields_and_grows_with_them(exp_id: str) -> None:
    exp = get(exp_id)
    cfg = exp.config("quick")
    est = exp.estimate(cfg)
    assert est.peak_bytes > 0 and set(est.drivers) <= set(cfg.to_dict())
    big = exp.config("quick", {"n_seeds": 4 * cfg.n_seeds})
    assert exp.estimate(big).peak_bytes > est.peak_bytes
