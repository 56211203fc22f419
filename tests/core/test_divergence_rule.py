"""The one divergence rule (core/divergence.py) and its use by every simulator and trainer (issue 19.1).

Per engine, a property test over learning rates on both sides of the engine's stability boundary: below it
(with margin) no chain is flagged and the statistics are finite; above it every chain is flagged, with its
step, and nothing non-finite or beyond the bound reaches a statistic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from noiseprobe.core import divergence
from noiseprobe.core.errors import ConfigError, NumericalError
from noiseprobe.core.stats import mean_se_kept
from noiseprobe.limits.noisy_gd import noisy_gd
from noiseprobe.minibatch.nets import loss_diverged_step, train_logistic
from noiseprobe.minibatch.sgd import LinearProblem, divergence_limit, simulate_sgd
from noiseprobe.monitor.edge_of_stability import eos_phases, gd_with_sharpness
from noiseprobe.nin import toy
from noiseprobe.nin.phases import PHASES

FAST = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_rule_helpers():
    x = np.array([[0.0, 1.0, 3e8], [np.nan, 0.0, 0.0], [1.0, 2.0, 3.0]])
    assert divergence.diverged(x, divergence.bound(1.0), axis=1).tolist() == [True, True, False]
    assert divergence.diverged(x[2], 0.5, ref=[1.0, 2.0, 3.0]).item() is False  # relative to ``ref``
    assert divergence.bound(0.0) > 0  # nothing can move: the smallest positive bound, not 0
    assert divergence.first_step([[False, False], [True, False], [True, False]], [0, 5, 10]).tolist() == [5, -1]
    assert (
        divergence.dropped_note(0, 10) == ""
        and divergence.dropped_note(3, 10) == "3 of 10 chains diverged and are left out"
    )
    assert divergence.too_many_diverged(1, 10) is None and "2 of 10" in (divergence.too_many_diverged(2, 10) or "")
    # the statistics of mbn experiments: survivors only, and not measurable past the stated fraction
    m, se, frac = mean_se_kept([1.0, 2.0, 3.0, 1e66], [False, False, False, True])
    assert np.isinf(m) and frac == 0.25  # 25 % > MAX_DIVERGED_FRACTION: +inf (not measurable)
    m, se, frac = mean_se_kept(np.r_[np.ones(19), 1e66], np.r_[np.zeros(19, bool), True])
    assert m == 1.0 and frac == 0.05


# -- minibatch SGD (numba kernel) ----------------------------------------------------------------------------
def test_issue_case_flags_every_chain_and_statistics_refuse():
    """simulate_sgd(A = I₂, σ = 1, λ = 2.5, S = 4): every chain runs away; each is flagged with its step, and
    Σ is refused (NumericalError) instead of 1e81."""
    run = simulate_sgd(
        LinearProblem(A=np.eye(2), sigma=1.0), lr=2.5, batch_size=4, steps=200, burn_in=10, chains=8, seed=0
    )
    assert run.diverged.all() and ((run.diverged_at > 0) & (run.diverged_at <= 210)).all()
    assert np.isnan(run.second_moment).all()
    for stat in (run.sigma, run.sigma_se, run.covariance, lambda: run.stat(run.test_loss())):
        with pytest.raises(NumericalError, match="every one of the 8 chains diverged"):
            stat()


def test_linear_bound_is_derived_from_the_problem():
    """The bound scales with the problem: scaling w (u, the start, σ) by 1000 scales it by 1000."""
    lr = np.array([1.0])
    a = divergence_limit(LinearProblem(1.0, u=[1.0], sigma=1.0), np.array([[0.1]]), 0.0, lr, None)
    b = divergence_limit(LinearProblem(1.0, u=[1e3], sigma=1e3), np.array([[1e2]]), 0.0, lr, None)
    assert a[0] == divergence.HEAVY_TAIL_FACTOR * 1.0 and b[0] == pytest.approx(1e3 * a[0])


def _sgd(lr: float):
    return simulate_sgd(LinearProblem(1.0, sigma=1.0), lr=lr, batch_size=4, steps=300, burn_in=0, chains=64, seed=1)


@FAST
@given(lr=st.floats(0.05, 1.2))
def test_sgd_below_the_boundary_flags_nothing(lr):
    run = _sgd(lr)
    assert not run.diverged.any() and np.isfinite(run.sigma()).all()


@FAST
@given(lr=st.floats(4.0, 8.0))
def test_sgd_above_the_boundary_flags_every_chain(lr):
    run = _sgd(lr)
    assert run.diverged.all() and (run.diverged_at > 0).all() and np.isnan(run.second_moment).all()


# -- the NIN toy model ---------------------------------------------------------------------------------------
def _toy(lr: float):
    r = 16
    return toy.simulate(
        np.zeros(r), w0=np.full(r, 1.1), w1=np.full(r, 0.9), w_ni=np.full(r, 0.5), steps=300, lr=lr, seed=0
    )


@FAST
@given(lr=st.floats(0.01, 0.4))
def test_toy_below_the_boundary_flags_nothing(lr):
    """σε = 0 near the minimum w0 w1 = M = 1: GD is stable for η(w0² + w1²) σx² < 2, i.e. η < 1 here."""
    run = _toy(lr)
    assert not run.overflow.any()
    assert all(np.isfinite(run[c]).all() for c in ("w0_T", "w1_T", "w_ni_T", "max_u", "max_v"))


@FAST
@given(lr=st.floats(3.0, 20.0))
def test_toy_above_the_boundary_flags_every_replica(lr):
    run = _toy(lr)
    assert run.overflow.all() and (run.overflow_step > 0).all()
    assert (run.phases() == PHASES.index("divergent")).all()


def test_toy_zero_learning_rate_is_refused_and_nothing_moves_at_tiny_ones():
    with pytest.raises(ConfigError, match="lr"):
        toy.simulate(0.5, w0=1.0, w1=1.0, w_ni=1.0, steps=10, lr=0.0)
    with pytest.raises(ConfigError, match="w0"):
        toy.simulate(0.5, w0=np.nan, w1=1.0, w_ni=1.0, steps=10)
    run = toy.simulate(np.zeros(2), w0=1.0, w1=1.0, w_ni=1.0, steps=10, lr=1e-12)
    # started at the minimum: nothing moves, the task is learned, no replica is divergent
    assert not run.overflow.any() and (run.phases() != PHASES.index("divergent")).all()


# -- noisy GD ------------------------------------------------------------------------------------------------
def _ngd(lr: float):
    """L̂ = ½w² + ηw (h = 1): stable iff α < 2."""
    return noisy_gd(
        lambda w, e: 0.5 * (w**2).sum(-1) + (w * e).sum(-1),
        [1.0],
        lr=lr,
        sigma=0.3,
        eta_dim=1,
        steps=200,
        chains=32,
        seed=0,
        average_from=100,
        record_every=200,
        vectorised=True,
    )


@FAST
@given(lr=st.floats(0.05, 1.6))
def test_noisy_gd_below_the_boundary_flags_nothing(lr):
    res = _ngd(lr)
    assert not res.diverged.any() and np.isfinite(res.cov).all() and np.isfinite(res.positions).all()


@FAST
@given(lr=st.floats(2.6, 6.0))
def test_noisy_gd_above_the_boundary_flags_every_chain(lr):
    res = _ngd(lr)
    assert res.diverged.all() and (res.diverged_at > 0).all() and np.isnan(res.cov).all()
    assert np.nanmax(np.abs(res.positions)) <= divergence.FACTOR * 1.0 * max(1.0, lr)  # nothing past the bound


# -- the Fig. 1 trainers -------------------------------------------------------------------------------------
def test_loss_divergence_of_the_tanh_trainer():
    losses = torch.tensor([[2.3, 2.0, 1.5, 1.0], [2.3, 1e5, 1e9, 1e12], [2.3, 2.0, float("nan"), 1.0]])
    assert loss_diverged_step(losses).tolist() == [-1, 2, 2]


@FAST
@given(gamma=st.sampled_from([0.0, 0.5]), unstable=st.floats(-40.0, -20.0))
def test_logistic_weight_decay_across_the_boundary(gamma, unstable):
    """w ← (1 − λγ)w − λĝ: γ >= 0 is stable at λ = 0.5; γ <= −20 grows by |1 − λγ| >= 11 per step."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    batches = torch.randint(0, 40, (2, 60, 8), generator=g)
    out = train_logistic(x, y, x, y, lr=0.5, gammas=torch.tensor([gamma, unstable]), batches=batches)
    assert out["diverged_step"][0] == -1 and np.isfinite(out["test_loss"][0])
    assert 0 < out["diverged_step"][1] <= 20 and np.isinf(out["test_loss"][1]) and np.isnan(out["test_acc"][1])


# -- the edge-of-stability engine ----------------------------------------------------------------------------
def _eos(lr_times_lam: float):
    """Full-batch GD on ½|Wx − y|² (a quadratic with sharpness λ): stable iff η λ < 2."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2.0, 4, dtype=torch.float64)
    y = torch.randn(40, 2, generator=g, dtype=torch.float64)
    lam = float(torch.linalg.eigvalsh(x.T @ x / 40)[-1])
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2, bias=False, dtype=torch.float64)
    losses, sharp = gd_with_sharpness(
        model, lambda o, t: 0.5 * ((o - t) ** 2).sum(1), x, y, lr=lr_times_lam / lam, steps=100, measure_every=100
    )
    return losses, eos_phases(losses, sharp, settle=0)


@FAST
@given(r=st.floats(0.2, 1.8))
def test_eos_below_the_boundary_flags_nothing(r):
    losses, ph = _eos(r)
    assert np.isfinite(losses["loss"]).all() and np.isnan(ph.diverged_step)


@FAST
@given(r=st.floats(2.5, 5.0))
def test_eos_above_the_boundary_stops_at_the_divergence(r):
    losses, ph = _eos(r)
    lv = losses["loss"].to_numpy()
    assert ph.diverged_step > 0 and np.isnan(lv[int(ph.diverged_step) + 1 :]).all()
    assert np.isfinite(lv[: int(ph.diverged_step)]).all()
    assert (lv[: int(ph.diverged_step)] <= divergence.bound(lv[0])).all()  # nothing past the bound is kept


# -- NIN ensembles and the critical-batch trainer ------------------------------------------------------------
def _classes(n: int, d: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, (x @ torch.randn(d, c, generator=g)).argmax(1)


def _ensemble(lr: float):
    from noiseprobe.nin.ensemble import train_ensemble

    x, y = _classes(120, 8, 3, 0)
    xt, yt = _classes(40, 8, 3, 1)
    kw = dict(hidden=[8], seed=2, loss="mse", lr=lr, batch_size=40, epochs=2, probe_samples=20)
    return train_ensemble(x, y, xt, yt, sigmas=[0.5, 1.0], replicas=[0, 1], **kw).records


@FAST
@given(lr=st.floats(0.005, 0.05))
def test_nin_ensemble_below_the_boundary_flags_nothing(lr):
    rec = _ensemble(lr)
    assert not rec["diverged"].any() and np.isfinite(rec["niw_norm"].to_numpy(float)).all()


@FAST
@given(lr=st.floats(200.0, 2000.0))
def test_nin_ensemble_above_the_boundary_flags_every_member(lr):
    rec = _ensemble(lr)
    last = rec.groupby("member").tail(1)
    assert last["diverged"].all() and (rec.groupby("member")["diverged_step"].first() >= 1).all()
    after = rec[rec["diverged"]]
    assert after["niw_norm"].isna().all()  # nothing from a diverged member reaches a record


def _to_target(lr: float):
    from noiseprobe.monitor.critical_batch import train_to_target

    x, y = _classes(60, 5, 3, 0)
    common = dict(hidden=[8], batch_size=8, init_replica=0, seed=0, target=1e-6, max_steps=40)
    return train_to_target(x, y, lrs=[lr, lr], replicas=[0, 1], **common).outcome


@FAST
@given(lr=st.floats(0.01, 0.2))
def test_critical_batch_below_the_boundary_flags_nothing(lr):
    assert not _to_target(lr)["diverged"].any()


@FAST
@given(lr=st.floats(1e3, 1e5))
def test_critical_batch_above_the_boundary_flags_every_run(lr):
    out = _to_target(lr)
    assert out["diverged"].all() and out["steps_to_target"].isna().all()


def _tanh(lr: float) -> np.ndarray:
    from noiseprobe.minibatch.nets import train_tanh_net

    x, y = _classes(60, 5, 3, 0)
    gens = [torch.Generator().manual_seed(r) for r in range(2)]
    batches = torch.randint(0, 60, (2, 40, 8), generator=torch.Generator().manual_seed(1))
    losses = train_tanh_net(x, y, width=8, lrs=torch.tensor([lr, lr]), optimizer="sgd", init_gens=gens, batches=batches)
    return loss_diverged_step(losses)


@FAST
@given(lr=st.floats(0.01, 0.5))
def test_tanh_trainer_below_the_boundary_flags_nothing(lr):
    assert (_tanh(lr) == -1).all()


@FAST
@given(lr=st.floats(1e9, 1e11))
def test_tanh_trainer_above_the_boundary_flags_every_replica(lr):
    assert (_tanh(lr) >= 1).all()
