"""Label noise (Lemma 1, Thms 2, 3, 8), input noise (Prop. 9, Thm 9), Newton/NGD (Props. 5, 6) and the
Hessian-approximation baselines (App. B, Table 2): each closed form against the exact Thm-1 solver and
against simulation, with tolerances from standard errors across independent chains."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from noiseprobe.core.errors import ConfigError
from noiseprobe.minibatch.baselines import hessian_approx_losses, hessian_approx_sigma, table2
from noiseprobe.minibatch.fluctuation import NoStationaryState, solve_fluctuation
from noiseprobe.minibatch.linear import (
    input_noise_sigma_eff2,
    input_noise_theory,
    label_noise_C,
    label_noise_kappa,
    label_noise_losses,
    label_noise_lr_bound,
    label_noise_sigma,
    lemma1_noise,
    lemma1_noise_map,
    prop9_noise,
)
from noiseprobe.minibatch.newton import dnm_sigma, ngd_sigma, ngd_x
from noiseprobe.minibatch.sgd import LinearProblem, simulate_sgd

Z = 4.0  # z-score tolerance for a single statistic
ZMAX = 4.5  # for the maximum over the entries of a matrix


def _rot(seed: int, D: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(D, D)))[0]


A5 = _rot(0, 5) @ np.diag([2.0, 1.0, 0.5, 0.3, 0.1]) @ _rot(0, 5).T


def _zmax(run, theory):
    return float((np.abs(run.sigma() - theory) / run.sigma_se()).max())


# -- exact checks ------------------------------------------------------------------------------------
def test_thm2_1d_formula_and_bound():
    a, lam, S, s = 1.5, 1.0, 16, 0.8
    assert label_noise_sigma(a, lr=lam, batch_size=S, sigma=s)[0, 0] == pytest.approx(
        lam * s * s / (2 * S - (S + 2) * lam * a), rel=1e-13
    )
    assert label_noise_lr_bound(a, batch_size=S) == pytest.approx(2 * S / ((S + 2) * a), rel=1e-10)
    with pytest.raises(NoStationaryState) as e:
        label_noise_sigma(a, lr=1.25, batch_size=S, sigma=s)
    assert e.value.bound == pytest.approx(2 * S / ((S + 2) * a), rel=1e-8)


@pytest.mark.parametrize("mu", [0.0, 0.5, 0.9])
def test_thm2_equals_thm1_with_lemma1(mu):
    """Thm 2 (trace identity) vs the linear matrix equation of Thm 1 + Lemma 1, with a matrix Λ = f(A)."""
    Lam = 0.15 * (np.eye(5) + 0.5 * A5) * (1 - mu)
    S, s = 8, 0.7
    C0, nmap = lemma1_noise_map(A5, batch_size=S)
    exact = solve_fluctuation(A5, s * s * C0, lr=Lam, momentum=mu, noise_map=nmap)
    assert np.abs(label_noise_sigma(A5, lr=Lam, batch_size=S, sigma=s, momentum=mu) - exact).max() < 1e-12
    # Thm 3 is Lemma 1 at the Thm-2 Σ; Thm 8 are the losses of that Σ
    Sg = label_noise_sigma(A5, lr=Lam, batch_size=S, sigma=s, momentum=mu)
    assert (
        np.abs(
            label_noise_C(A5, lr=Lam, batch_size=S, sigma=s, momentum=mu) - lemma1_noise(A5, Sg, sigma=s, batch_size=S)
        ).max()
        < 1e-13
    )
    train, test = label_noise_losses(A5, lr=Lam, batch_size=S, sigma=s, momentum=mu)
    assert test == pytest.approx(0.5 * np.trace(A5 @ Sg), rel=1e-12)
    assert train == pytest.approx(0.5 * np.trace(A5 @ Sg) + s * s / 2, rel=1e-12)
    assert label_noise_kappa(A5, lr=Lam, batch_size=S, momentum=mu) == pytest.approx(
        S * np.trace(A5 @ Sg) / s**2, rel=1e-12
    )


def test_thm2_needs_commuting_lr():
    with pytest.raises(ConfigError):
        label_noise_sigma(
            A5, lr=_rot(3, 5) @ np.diag([0.1, 0.2, 0.3, 0.2, 0.1]) @ _rot(3, 5).T, batch_size=8, sigma=1.0
        )


def test_thm9_equals_thm1_with_prop9():
    A = _rot(1, 3) @ np.diag([1.2, 0.7, 0.3]) @ _rot(1, 3).T
    B = _rot(2, 3) @ np.diag([0.4, 0.2, 0.1]) @ _rot(2, 3).T  # does not commute with A
    u = np.array([1.0, -0.6, 0.8])
    pb = LinearProblem(A, u=u, B=B)  # 2L(w*) from the population loss ½[(w−u)ᵀA(w−u) + wᵀBw]
    assert input_noise_sigma_eff2(A, B=B, u=u) == pytest.approx(2 * pb.train_loss(pb.center), rel=1e-12)
    t = input_noise_theory(A, B=B, u=u, lr=0.5, batch_size=4)
    K = A + B
    exact = solve_fluctuation(
        K,
        prop9_noise(A, B=B, u=u, Sigma=np.zeros((3, 3)), batch_size=4),
        lr=0.5,
        noise_map=lambda X: (
            prop9_noise(A, B=B, u=u, Sigma=X, batch_size=4)
            - prop9_noise(A, B=B, u=u, Sigma=np.zeros((3, 3)), batch_size=4)
        ),
    )
    assert np.abs(t["Sigma"] - exact).max() < 1e-12
    assert t["train_loss"] >= t["test_loss"]  # remark after Thm 9


def test_dnm_and_ngd_are_thm2():
    A = _rot(4, 4) @ np.diag([1.5, 1.0, 0.6, 0.2]) @ _rot(4, 4).T
    for lam, S, mu in ((0.3, 8, 0.0), (0.5, 16, 0.5), (0.1, 4, 0.9)):
        Lam = lam * np.linalg.inv(A)
        assert (
            np.abs(
                dnm_sigma(A, lr=lam, batch_size=S, sigma=1.0, momentum=mu)
                - label_noise_sigma(A, lr=Lam, batch_size=S, sigma=1.0, momentum=mu)
            ).max()
            < 1e-12
        )
    assert dnm_sigma(np.eye(4), lr=0.3, batch_size=8, sigma=1.0)[0, 0] == pytest.approx(
        0.024793, abs=1e-6
    )  # docs/theory/minibatch_noise.md §15.8
    assert ngd_x(lr=0.5, batch_size=8, sigma=0.0, dim=4) == pytest.approx(0.081250, abs=1e-6)
    assert ngd_x(lr=0.2, batch_size=4, sigma=0.0, dim=4, momentum=0.9) == pytest.approx(0.260526, abs=1e-6)
    for sigma, mu in ((1.0, 0.0), (0.5, 0.5)):
        x = ngd_x(lr=0.5, batch_size=8, sigma=sigma, dim=4, momentum=mu)
        lam_p = 0.5 / (x * 5 + sigma**2)  # NGD = damped Newton at λ′ (Prop. 6)
        assert (
            np.abs(
                ngd_sigma(A, lr=0.5, batch_size=8, sigma=sigma, momentum=mu)
                - dnm_sigma(A, lr=lam_p, batch_size=8, sigma=sigma, momentum=mu)
            ).max()
            < 1e-13
        )


def test_hessian_approximations_solve_their_equations():
    H, lam, S = A5, 0.4, 8
    disc = solve_fluctuation(H, H / S, lr=lam)  # eq. (18) is Thm 1 with C = H/S
    assert np.abs(hessian_approx_sigma(H, lr=lam, batch_size=S) - disc).max() < 1e-13
    cont = scipy.linalg.solve_continuous_lyapunov(lam * H, lam * lam * H / S)  # eq. (23): ΛHΣ + ΣHΛ = ΛHΛ/S
    assert np.abs(hessian_approx_sigma(H, lr=lam, batch_size=S, time="continuous") - cont).max() < 1e-13
    train, test = hessian_approx_losses(H, lr=lam, batch_size=S, sigma=0.5)
    assert test == pytest.approx(np.trace(lam * H @ np.linalg.inv(2 * np.eye(5) - lam * H)) / (2 * S), rel=1e-12)
    assert train - test == pytest.approx(0.125)


def test_table2_values():
    """Fig. 3-left reference values (a = 1.5, λ = 1, σ = 1) and the 1d entries against the matrix theorems."""
    for S, ex, disc, cont in ((8, 1.0, 0.25, 0.0625), (16, 0.2, 0.125, 0.03125), (64, 0.0345, 0.0313, 0.0078)):
        t = table2(a=1.5, lr=1.0, batch_size=S).set_index(["case", "quantity"])
        row = t.loc[("label noise", "Sigma")]
        assert row.exact == pytest.approx(ex, abs=1e-4) and row.hessian_discrete == pytest.approx(disc, abs=1e-4)
        assert row.hessian_continuous == pytest.approx(cont, abs=1e-4)
    t = table2(a=1.0, lr=0.3, batch_size=4, b=0.5, gamma=0.4, u=1.2).set_index(["case", "quantity"])
    s_in = 1.0 * 0.5 * 1.44 / 1.5
    assert t.loc[("input noise", "Sigma")].exact == pytest.approx(0.3 * s_in / (8 - 6 * 0.3 * 1.5), rel=1e-12)
    assert t.loc[("label noise", "train_loss")].exact == pytest.approx(0.5 * (8 - 5 * 0.3) / (8 - 6 * 0.3), rel=1e-12)
    assert np.isinf(
        table2(a=1.5, lr=1.0, batch_size=4).set_index(["case", "quantity"]).loc[("label noise", "Sigma")].exact
    )


# -- simulation checks ---------------------------------------------------------------------------------
def test_label_noise_1d_simulation():
    """a = 1, λ = 0.5, S = 4 (docs/theory/minibatch_noise.md §15.3): Σ, L_train, L_test and the noise C of Thm 3."""
    run = simulate_sgd(
        LinearProblem(1.0, sigma=1.0),
        lr=0.5,
        batch_size=4,
        steps=3000,
        burn_in=300,
        chains=3000,
        seed=11,
        measure_noise=True,
    )
    assert _zmax(run, label_noise_sigma(1.0, lr=0.5, batch_size=4, sigma=1.0)) < Z
    train, test = label_noise_losses(1.0, lr=0.5, batch_size=4, sigma=1.0)
    for est, th in ((run.stat(run.train_loss()), train), (run.stat(run.test_loss()), test)):
        assert abs(est[0] - th) < Z * est[1]
    c = run.noise_cov[run.ok, 0, 0]
    assert abs(c.mean() - label_noise_C(1.0, lr=0.5, batch_size=4, sigma=1.0)[0, 0]) < Z * c.std() / np.sqrt(len(c))


@pytest.mark.parametrize("lr,mu", [(0.4, 0.0), (0.2, 0.5)])
def test_label_noise_D5_simulation(lr, mu):
    """D = 5, anisotropic A, S = 8 (docs/theory/minibatch_noise.md §15.3): Σ entry-wise and Tr[AΣ]."""
    run = simulate_sgd(
        LinearProblem(A5, sigma=1.0), lr=lr, batch_size=8, momentum=mu, steps=2500, burn_in=400, chains=300, seed=12
    )
    theory = label_noise_sigma(A5, lr=lr, batch_size=8, sigma=1.0, momentum=mu)
    assert _zmax(run, theory) < ZMAX
    tr = np.einsum("ij,rji->r", A5, run.second_moment)
    assert abs(tr.mean() - np.trace(A5 @ theory)) < Z * tr.std(ddof=1) / np.sqrt(len(tr))


def test_label_noise_noncommuting_lr_simulation():
    """Matrix Λ not commuting with A: no closed form, the Thm-1 solver with Lemma 1 against simulation."""
    Lam = _rot(5, 5) @ np.diag([0.5, 0.3, 0.2, 0.4, 0.1]) @ _rot(5, 5).T
    C0, nmap = lemma1_noise_map(A5, batch_size=8)
    theory = solve_fluctuation(A5, C0, lr=Lam, noise_map=nmap)
    run = simulate_sgd(LinearProblem(A5, sigma=1.0), lr=Lam, batch_size=8, steps=2500, burn_in=500, chains=300, seed=13)
    assert _zmax(run, theory) < ZMAX


def test_input_noise_simulation():
    A = _rot(1, 3) @ np.diag([1.2, 0.7, 0.3]) @ _rot(1, 3).T
    B = _rot(2, 3) @ np.diag([0.4, 0.2, 0.1]) @ _rot(2, 3).T
    u = np.array([1.0, -0.6, 0.8])
    t = input_noise_theory(A, B=B, u=u, lr=0.5, batch_size=4)
    run = simulate_sgd(LinearProblem(A, u=u, B=B), lr=0.5, batch_size=4, steps=2500, burn_in=300, chains=400, seed=14)
    assert _zmax(run, t["Sigma"]) < ZMAX
    for est, th in ((run.stat(run.train_loss()), t["train_loss"]), (run.stat(run.test_loss()), t["test_loss"])):
        assert abs(est[0] - th) < Z * est[1]


def test_dnm_simulation():
    A = _rot(4, 4) @ np.diag([1.5, 1.0, 0.6, 0.2]) @ _rot(4, 4).T
    run = simulate_sgd(
        LinearProblem(A, sigma=1.0),
        lr=0.3 * np.linalg.inv(A),
        batch_size=8,
        steps=2000,
        burn_in=300,
        chains=300,
        seed=15,
    )
    assert _zmax(run, dnm_sigma(A, lr=0.3, batch_size=8, sigma=1.0)) < ZMAX


def test_bad_inputs():
    """Every public function names the field, the value and what is allowed (ConfigError)."""
    neg = np.diag([1.0, -0.5])
    for call in (
        lambda: label_noise_sigma(1.0, lr=0.1, batch_size=4, sigma=-1.0),  # σ >= 0
        lambda: label_noise_sigma(1.0, lr=0.1, batch_size=0, sigma=1.0),  # S >= 1
        lambda: label_noise_sigma(1.0, lr=0.0, batch_size=4, sigma=1.0),  # λ > 0
        lambda: label_noise_sigma(neg, lr=0.1, batch_size=4, sigma=1.0),  # A is a covariance
        lambda: label_noise_C(1.0, lr=0.1, batch_size=4, sigma=float("nan")),
        lambda: label_noise_losses(1.0, lr=0.1, batch_size=4, sigma=1.0, momentum=1.0),
        lambda: label_noise_lr_bound(0.0, batch_size=4),  # every λ is stable for A = 0
        lambda: lemma1_noise(np.eye(2), np.eye(3), sigma=1.0, batch_size=4),
        lambda: input_noise_theory(1.0, B=-0.5, u=[1.0], lr=0.1, batch_size=4),  # B is a covariance
        lambda: input_noise_theory(
            np.zeros((2, 2)), B=np.zeros((2, 2)), u=[1.0, 0.0], lr=0.1, batch_size=4
        ),  # K singular
        lambda: input_noise_sigma_eff2(np.eye(2), B=np.eye(2), u=[1.0]),  # u of the wrong length
        lambda: prop9_noise(1.0, B=0.5, u=[1.0], Sigma=-np.eye(2), batch_size=4),
        lambda: dnm_sigma(np.eye(2), lr=0.1, batch_size=4, sigma=-1.0),
        lambda: ngd_x(lr=0.1, batch_size=4, sigma=1.0, dim=0),
        lambda: hessian_approx_sigma(1.0, lr=0.1, batch_size=4, time="euler"),
        lambda: hessian_approx_sigma(1.0, lr=0.1, batch_size=4, noise_scale=-1.0),
        lambda: table2(a=-1.0, lr=0.1, batch_size=4),
        lambda: table2(a=1.0, lr=0.1, batch_size=4, b=-0.5),
    ):
        with pytest.raises(ConfigError) as e:
            call()
        assert "allowed" in str(e.value)
