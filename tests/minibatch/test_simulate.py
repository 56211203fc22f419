"""The vectorised SGD simulator: chunk invariance, divergence handling, samplers and sampling schemes."""

from __future__ import annotations

import numpy as np
import pytest

from noiseprobe.core.errors import ConfigError
from noiseprobe.minibatch.highdim import highdim_sigma_exact
from noiseprobe.minibatch.linear import label_noise_sigma
from noiseprobe.minibatch.simulate import LinearProblem, simulate_sgd


def _aniso(D: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.normal(size=(D, D)))[0]
    return Q @ np.diag(np.linspace(1.5, 0.2, D)) @ Q.T


def test_chunking_invariance():
    pb = LinearProblem(_aniso(3), u=[1.0, 0.0, -1.0], sigma=0.5, Gamma=0.1)
    kw = dict(steps=50, burn_in=10, seed=3, snapshot_every=10)
    whole = simulate_sgd(pb, lr=0.3, batch_size=4, chains=6, **kw)
    a = simulate_sgd(pb, lr=0.3, batch_size=4, chains=2, first_chain=0, **kw)
    b = simulate_sgd(pb, lr=0.3, batch_size=4, chains=4, first_chain=2, **kw)
    assert np.array_equal(whole.second_moment, np.concatenate([a.second_moment, b.second_moment]))
    assert np.array_equal(whole.snapshots, np.concatenate([a.snapshots, b.snapshots]))
    assert whole.snapshots.shape == (6, 5, 3)


def test_divergence_is_per_chain():
    pb = LinearProblem(1.0, sigma=1.0)
    lr = np.array([0.5, 3.0, 0.5, 3.0])  # λa = 3: E log|1 − λh| > 0, a.s. divergent
    run = simulate_sgd(pb, lr=lr, batch_size=4, steps=3000, burn_in=0, chains=4, seed=0)
    assert run.diverged.tolist() == [False, True, False, True]
    assert (run.diverged_at[[1, 3]] > 0).all() and (run.diverged_at[[0, 2]] == -1).all()
    assert np.isfinite(run.sigma()).all()
    assert np.isnan(run.second_moment[1]).all()


def test_exact_1d_sampler_matches_generic():
    """Both samplers against Thm 2 (a = 1, λ = 0.5, S = 4: Σ = 0.1, tail index ≈ 30 so SEs are reliable)."""
    pb = LinearProblem(1.0, sigma=1.0)
    theory = label_noise_sigma(1.0, lr=0.5, batch_size=4, sigma=1.0)[0, 0]
    for exact, chains in ((True, 2000), (False, 500)):
        run = simulate_sgd(pb, lr=0.5, batch_size=4, steps=2000, burn_in=200, chains=chains, seed=1, exact_law=exact)
        assert abs(run.sigma()[0, 0] - theory) < 4 * run.sigma_se()[0, 0]


def test_exact_law_sampler_matches_minibatch_sampler_3d():
    """Bartlett sampler (with the input-noise reduction) vs explicit minibatches: input noise B not commuting
    with A, label noise and L2 together (no closed form): the two independent estimates of Σ agree."""
    A, B = _aniso(3, 1), 0.3 * _aniso(3, 2)
    pb = LinearProblem(A, u=[1.0, -0.5, 0.8], sigma=0.5, B=B, Gamma=0.1)
    kw = dict(steps=2000, burn_in=300, chains=300)
    ex = simulate_sgd(pb, lr=0.4, batch_size=4, seed=6, exact_law=True, **kw)
    mb = simulate_sgd(pb, lr=0.4, batch_size=4, seed=7, exact_law=False, **kw)
    z = np.abs(ex.sigma() - mb.sigma()) / np.hypot(ex.sigma_se(), mb.sigma_se())
    assert z.max() < 4.5, z
    assert np.allclose(ex.center, np.linalg.solve(A + B + 0.1 * np.eye(3), A @ pb.u))


def test_rademacher_labels():
    pb = LinearProblem(1.0, sigma=1.0, label_noise="rademacher")
    run = simulate_sgd(pb, lr=0.5, batch_size=4, steps=2000, burn_in=200, chains=500, seed=2)
    assert abs(run.sigma()[0, 0] - 0.1) < 4 * run.sigma_se()[0, 0]


@pytest.mark.parametrize("replacement", [True, False])
def test_finite_data_with_and_without_replacement(replacement):
    """Fixed data set (N = 12, D = 3, S = 6): Σ against the exact finite-N solve (Prop. 8 factor)."""
    pb = LinearProblem(_aniso(3), u=[1.0, -0.5, 0.3], sigma=0.7).with_data(12, seed=5)
    lr = 0.4
    run = simulate_sgd(pb, lr=lr, batch_size=6, steps=3000, burn_in=300, chains=400, seed=4, replacement=replacement)
    theory = highdim_sigma_exact(pb.X, pb.y, lr=lr, batch_size=6, replacement=replacement)
    other = highdim_sigma_exact(pb.X, pb.y, lr=lr, batch_size=6, replacement=not replacement)
    z = np.abs(run.sigma() - theory) / run.sigma_se()
    assert z.max() < 4.5, z
    assert np.abs(run.sigma() - other).max() > 6 * run.sigma_se().max()  # the test tells the schemes apart


def test_bad_inputs():
    pb = LinearProblem(np.eye(2))
    with pytest.raises(ConfigError):
        simulate_sgd(pb, lr=0.1, batch_size=0, steps=10, burn_in=0, chains=2, seed=0)
    with pytest.raises(ConfigError):
        simulate_sgd(pb, lr=np.ones(3), batch_size=1, steps=10, burn_in=0, chains=2, seed=0)
    with pytest.raises(ConfigError):
        simulate_sgd(pb, lr=0.1, batch_size=1, steps=10, burn_in=0, chains=2, seed=0, exact_law=True)  # S < D
    with pytest.raises(ConfigError):
        LinearProblem(np.array([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ConfigError):
        LinearProblem(1.0, sigma=-1.0)
    with pytest.raises(ConfigError):
        simulate_sgd(pb.with_data(3, 0), lr=0.1, batch_size=4, steps=10, burn_in=0, chains=2, seed=0, replacement=False)
    for bad in (dict(seed=-1), dict(seed=0.5), dict(first_chain=-2)):
        with pytest.raises(ConfigError):
            simulate_sgd(pb, lr=0.1, batch_size=1, steps=10, burn_in=0, chains=2, **{"seed": 0, **bad})
