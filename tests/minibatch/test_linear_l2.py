"""L2 regularisation: Prop. 3, Thm 4 (eq. 11, the paper's eq. 12 and the exact Σ), the training loss,
Cor. 4 and the negative optimal weight decay of Cor. 1 — against the exact solver and simulation."""

from __future__ import annotations

import numpy as np
import pytest

from noiseprobe.core.errors import ConfigError
from noiseprobe.minibatch.fluctuation import NoStationaryState
from noiseprobe.minibatch.l2 import (
    convergent_gamma_interval,
    l2_1d,
    l2_sigma_eq12,
    l2_sigma_exact,
    l2_theory,
    negative_weight_decay_window,
    optimal_weight_decay,
    prop3_noise,
)
from noiseprobe.minibatch.sgd import LinearProblem, simulate_sgd

Q = np.linalg.qr(np.random.default_rng(7).normal(size=(3, 3)))[0]
A3 = Q @ np.diag([1.5, 0.8, 0.3]) @ Q.T
U_GENERIC = np.array([1.0, -0.5, 0.7])
G_IND = Q @ np.diag([0.5, -0.2, 0.4]) @ Q.T  # commutes with A, indefinite
LR, S = 0.4, 4


def _rel(X, Y):
    return np.linalg.norm(X - Y) / np.linalg.norm(Y)


@pytest.mark.parametrize("Gamma", [0.3 * np.eye(3), G_IND])
def test_eq11_and_train_loss_equal_exact_solve(Gamma):
    """Eq. (11) and the E.4.2 training loss hold for generic u: compare with the exact Σ of Thm 1 + Prop. 3."""
    t = l2_theory(A3, Gamma=Gamma, u=U_GENERIC, lr=LR, batch_size=S)
    Sg = l2_sigma_exact(A3, Gamma=Gamma, u=U_GENERIC, lr=LR, batch_size=S)
    w_star = np.linalg.solve(A3 + Gamma, A3 @ U_GENERIC)
    d = w_star - U_GENERIC
    assert t["test_loss"] == pytest.approx(0.5 * np.trace(A3 @ Sg) + 0.5 * d @ A3 @ d, rel=1e-11)
    train = 0.5 * np.trace(A3 @ Sg) + 0.5 * d @ A3 @ d + 0.5 * np.trace(Gamma @ Sg) + 0.5 * w_star @ Gamma @ w_star
    assert t["train_loss"] == pytest.approx(train, rel=1e-11)


def test_eq12_fails_without_full_commutation_and_holds_with_it():
    """docs/theory/minibatch_noise.md §5: eq. (12) is off by ~15 % for Γ = 0.3 I and generic u; exact when u is an eigenvector of A."""
    assert (
        _rel(
            l2_sigma_eq12(A3, Gamma=0.3 * np.eye(3), u=U_GENERIC, lr=LR, batch_size=S),
            l2_sigma_exact(A3, Gamma=0.3 * np.eye(3), u=U_GENERIC, lr=LR, batch_size=S),
        )
        > 0.05
    )
    u_eig = 1.2 * Q[:, 0]
    assert (
        _rel(
            l2_sigma_eq12(A3, Gamma=G_IND, u=u_eig, lr=LR, batch_size=S),
            l2_sigma_exact(A3, Gamma=G_IND, u=u_eig, lr=LR, batch_size=S),
        )
        < 1e-11
    )


def test_cor4_is_thm4_in_1d():
    for gamma in (-0.3, 0.2, 1.0):
        c4, t4 = (
            l2_1d(a=1.0, gamma=gamma, u=1.0, lr=0.2, batch_size=4),
            l2_theory(1.0, Gamma=gamma, u=[1.0], lr=0.2, batch_size=4),
        )
        assert c4["test_loss"] == pytest.approx(t4["test_loss"], rel=1e-12)
        assert c4["train_loss"] == pytest.approx(t4["train_loss"], rel=1e-12)
        assert c4["Sigma"] == pytest.approx(
            l2_sigma_exact(1.0, Gamma=gamma, u=[1.0], lr=0.2, batch_size=4)[0, 0], rel=1e-11
        )
    assert l2_1d(a=1.0, gamma=-0.3, u=1.0, lr=0.2, batch_size=4)["test_loss"] == pytest.approx(
        0.09948, abs=1e-5
    )  # docs/theory/minibatch_noise.md §15.4


def test_cor1_negative_optimal_weight_decay():
    """a = 1, λ = 2.5, S = 1000 (docs/theory/minibatch_noise.md §15.4): γ* = −0.2159, γ = 0 has no stationary state."""
    lo, hi = negative_weight_decay_window(batch_size=1000)
    assert lo < 2.5 <= hi
    assert negative_weight_decay_window(batch_size=2)[0] == pytest.approx(
        negative_weight_decay_window(batch_size=2)[1]
    )  # empty at S = 2
    g, loss = optimal_weight_decay(1.0, u=[1.0], lr=2.5, batch_size=1000)
    assert g == pytest.approx(-0.2159, abs=1e-4) and loss == pytest.approx(0.04515, abs=1e-5)
    k_lo, k_hi = convergent_gamma_interval(a=1.0, lr=2.5, batch_size=1000)
    assert k_lo == pytest.approx(-0.9974, abs=1e-4) and k_hi == pytest.approx(-0.2026, abs=1e-4)
    with pytest.raises(NoStationaryState):
        l2_1d(a=1.0, gamma=0.0, u=1.0, lr=2.5, batch_size=1000)
    assert convergent_gamma_interval(a=1.0, lr=30.0, batch_size=1000) is None  # λa > √(S/2): nothing converges


def test_cor1_simulation():
    """The predicted optimum is attained and γ = 0 diverges in simulation (exact 1d sampler, S = 1000)."""
    pb = LinearProblem(1.0, u=[1.0], Gamma=-0.2159)
    run = simulate_sgd(pb, lr=2.5, batch_size=1000, steps=2000, burn_in=300, chains=400, seed=21)
    est, se = run.stat(run.test_loss())
    assert abs(est - 0.04515) < 4 * se
    bad = simulate_sgd(LinearProblem(1.0, u=[1.0]), lr=2.5, batch_size=1000, steps=1500, burn_in=0, chains=50, seed=22)
    assert bad.diverged.all()


def test_l2_simulation_generic_u():
    """D = 3, indefinite Γ, generic u: exact Σ entry-wise, eq. (11) and the training loss (docs/theory/minibatch_noise.md §15.4)."""
    pb = LinearProblem(A3, u=U_GENERIC, Gamma=G_IND)
    run = simulate_sgd(pb, lr=LR, batch_size=S, steps=3000, burn_in=300, chains=400, seed=23)
    z = np.abs(run.sigma() - l2_sigma_exact(A3, Gamma=G_IND, u=U_GENERIC, lr=LR, batch_size=S)) / run.sigma_se()
    assert z.max() < 4.5
    t = l2_theory(A3, Gamma=G_IND, u=U_GENERIC, lr=LR, batch_size=S)
    for est, th in ((run.stat(run.test_loss()), t["test_loss"]), (run.stat(run.train_loss()), t["train_loss"])):
        assert abs(est[0] - th) < 4 * est[1]
    assert t["train_loss"] < t["test_loss"]  # L_train includes ½wᵀΓw (Γ indefinite), so it can fall below L_test


def test_l2_1d_simulation():
    """Cor. 4 at a = 1, λ = 0.2, S = 4 (tail index ≈ 30): L_test and L_train."""
    for gamma in (-0.3, 0.5):
        run = simulate_sgd(
            LinearProblem(1.0, u=[1.0], Gamma=gamma),
            lr=0.2,
            batch_size=4,
            steps=3000,
            burn_in=300,
            chains=1000,
            seed=24,
        )
        th = l2_1d(a=1.0, gamma=gamma, u=1.0, lr=0.2, batch_size=4)
        for est, v in ((run.stat(run.test_loss()), th["test_loss"]), (run.stat(run.train_loss()), th["train_loss"])):
            assert abs(est[0] - v) < 4 * est[1]


def test_prop3_noise_measured():
    """Prop. 3 at the exact Σ against the measured gradient-noise covariance."""
    pb = LinearProblem(A3, u=U_GENERIC, Gamma=0.3 * np.eye(3))
    run = simulate_sgd(pb, lr=LR, batch_size=S, steps=2000, burn_in=300, chains=300, seed=25, measure_noise=True)
    C = prop3_noise(
        A3,
        Gamma=0.3 * np.eye(3),
        u=U_GENERIC,
        Sigma=l2_sigma_exact(A3, Gamma=0.3 * np.eye(3), u=U_GENERIC, lr=LR, batch_size=S),
        batch_size=S,
    )
    est = run.noise_cov[run.ok]
    z = np.abs(est.mean(0) - C) / (est.std(0, ddof=1) / np.sqrt(len(est)))
    assert z.max() < 4.5


def test_bad_inputs():
    for call in (
        lambda: l2_theory(A3, Gamma=0.3 * np.eye(3), u=[1.0, 0.0], lr=LR, batch_size=S),  # u of the wrong length
        lambda: l2_theory(-A3, Gamma=np.eye(3) * 3, u=U_GENERIC, lr=LR, batch_size=S),  # A is a covariance
        lambda: l2_theory(
            A3, Gamma=np.diag([0.1, 0.2, 0.3]), u=U_GENERIC, lr=LR, batch_size=S
        ),  # Thm 4 needs [A, Γ] = 0
        lambda: l2_theory(A3, Gamma=0.3, u=U_GENERIC, lr=0.0, batch_size=S),
        lambda: l2_1d(a=1.0, gamma=0.1, u=float("inf"), lr=0.2, batch_size=4),
        lambda: l2_1d(a=-1.0, gamma=0.1, u=1.0, lr=0.2, batch_size=4),
        lambda: convergent_gamma_interval(a=1.0, lr=0.0, batch_size=4),
        lambda: optimal_weight_decay(1.0, u=[1.0], lr=0.0, batch_size=4),
        lambda: optimal_weight_decay(1.0, u=[1.0], lr=0.5, batch_size=4, grid=1),
        lambda: negative_weight_decay_window(batch_size=0),
        lambda: prop3_noise(A3, Gamma=0.3, u=U_GENERIC, Sigma=np.eye(2), batch_size=S),
    ):
        with pytest.raises(ConfigError) as e:
            call()
        assert "allowed" in str(e.value)
