"""The batched NIN ensemble against independent computations: B1's per-model trainer (same seed, float
tolerance), autograd Hessians of the local loss, separate runs (grouping invariance, divergence isolation)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.seeding import torch_generator
from noiseprobe.nin.ensemble import STREAM_NOISE, batch_losses, init_ensemble, order_seed, train_ensemble
from noiseprobe.nin.injector import NINSpec, attach_nins
from noiseprobe.nin.probe import train

COLUMNS = ["train_loss", "train_acc", "test_loss", "test_acc", "noisy_loss", "niw_norm", "next_norm", "curv_niw"]


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 4, generator=g)
    x, xt = torch.randn(300, 12, generator=g), torch.randn(100, 12, generator=g)
    return x, (x @ w).argmax(1), xt, (xt @ w).argmax(1)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_agrees_with_per_model_trainer(data, loss):
    """Each member reproduces noiseprobe.nin.probe.train on the same weights and seed (streams of the docstring)."""
    x, y, xt, yt = data
    sig, reps, modes = [0.0, 0.7, 2.0], [0, 1, 1], ["epoch", "epoch", "fixed"]
    ens = init_ensemble([12, 16, 8, 4], sig, reps, 5, nin_layer=1)
    run = train_ensemble(
        x,
        y,
        xt,
        yt,
        hidden=[16, 8],
        sigmas=sig,
        replicas=reps,
        seed=5,
        loss=loss,
        lr=0.1,
        batch_size=32,
        epochs=4,
        nin_mode=modes,
        probe_samples=50,
        ensemble=ens,
    )
    for k in range(3):
        model, name = ens.member(k)
        handle = attach_nins(
            model,
            NINSpec(name, sigma=sig[k], mode=modes[k], init_std=1.0),
            n_train=300,
            generator=torch_generator(5, reps[k], STREAM_NOISE),
        )
        assert torch.equal(handle.niws[0].detach()[0], ens.niw[k])
        ref = train(
            model,
            handle,
            (x, y, xt, yt),
            loss=loss,
            lr=0.1,
            batch_size=32,
            epochs=4,
            seed=order_seed(5, reps[k]),
            hessian_probes=1,
            probe_samples=50,
        )
        mine = run.records[run.records["member"] == k]
        assert list(mine["epoch"]) == list(ref["epoch"])
        for col in COLUMNS:
            np.testing.assert_allclose(
                mine[col].to_numpy(float),
                ref[col].to_numpy(float),
                rtol=2e-5,
                atol=1e-6,
                err_msg=f"{loss} member {k} {col}",
            )
        assert not ref["diverged"].any() and not mine["diverged"].any()


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("nin_layer", [0, 1])
def test_curvature_is_the_local_hessian_along_the_niw(loss, nin_layer):
    """curv_niw = Ŵᵀ⟨H⟩Ŵ with H the full autograd Hessian of the batch loss w.r.t. z^(ℓ_NI) (float64)."""
    ens = init_ensemble([5, 7, 6, 4], [0.3, 0.5], [0, 1], 3, nin_layer=nin_layer, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(9, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (9,), generator=g)
    q = ens.niw_curvature(x, loss)
    for k in range(2):

        def tail(z: torch.Tensor) -> torch.Tensor:
            h = z
            for m in range(nin_layer + 1, 3):
                h = torch.relu(h) @ ens.weights[m][k] + ens.biases[m][k]
            return batch_losses(h.unsqueeze(0), y, loss).mean()

        h0 = x
        for m in range(nin_layer):
            h0 = torch.relu(h0 @ ens.weights[m][k] + ens.biases[m][k])
        z0 = h0 @ ens.weights[nin_layer][k] + ens.biases[nin_layer][k]
        hess = torch.autograd.functional.hessian(tail, z0)  # (n, d, n, d), block diagonal / n
        v = (ens.niw[k] / ens.niw[k].norm()).expand_as(z0)
        assert q[k].item() == pytest.approx(torch.einsum("ij,ijkl,kl->", v, hess, v).item(), rel=1e-10)


def test_grouping_and_divergence_do_not_change_other_replicas(data):
    """Replicas trained together equal the same replicas trained alone; a diverging member is recorded
    (step, NaN records) and dropped without touching the others."""
    x, y, xt, yt = data
    kw = dict(hidden=[16], seed=9, loss="mse", lr=0.05, batch_size=50, epochs=3, probe_samples=40)
    together = train_ensemble(x, y, xt, yt, sigmas=[0.5, 1e4, 1.0], replicas=[0, 0, 3], **kw).records
    alone = pd.concat(
        [
            train_ensemble(x, y, xt, yt, sigmas=[s], replicas=[r], **kw).records.assign(member=m)
            for m, s, r in ((0, 0.5, 0), (2, 1.0, 3))
        ]
    )
    for m in (0, 2):
        a, b = together[together["member"] == m], alone[alone["member"] == m]
        np.testing.assert_allclose(a[COLUMNS].to_numpy(float), b[COLUMNS].to_numpy(float), rtol=1e-5, atol=1e-7)
        assert not a["diverged"].any()
    bad = together[together["member"] == 1]
    assert bad["diverged"].iloc[-1] and bad["diverged_step"].iloc[0] >= 1
    assert bad["niw_norm"].iloc[1:].isna().all() and np.isfinite(bad["niw_norm"].iloc[0])


def test_common_random_numbers_and_sigma_zero_is_no_nin(data):
    """σε = 0 leaves the NIW untouched (gradient ε·g = 0) and equals the plain network; equal replica
    index means equal initial weights whatever σε."""
    x, y, xt, yt = data
    ens = init_ensemble([12, 16, 4], [0.0, 3.0], [2, 2], 1)
    assert all(torch.equal(w[0], w[1]) for w in ens.weights)
    run = train_ensemble(
        x,
        y,
        xt,
        yt,
        hidden=[16],
        sigmas=[0.0],
        replicas=[2],
        seed=1,
        loss="ce",
        lr=0.1,
        batch_size=30,
        epochs=2,
        probe_samples=30,
    ).records
    assert run["niw_norm"].nunique() == 1
    model, _ = ens.member(0)
    ref = train(
        model,
        None,
        (x, y, xt, yt),
        loss="ce",
        lr=0.1,
        batch_size=30,
        epochs=2,
        seed=order_seed(1, 2),
        hessian_probes=0,
        probe_samples=30,
    )
    np.testing.assert_allclose(run["train_loss"], ref["train_loss"], rtol=2e-5)


def test_bad_arguments_raise_config_error(data):
    x, y, xt, yt = data
    kw = dict(hidden=[8], replicas=[0], seed=0, epochs=1)
    with pytest.raises(ConfigError, match="loss"):
        train_ensemble(x, y, xt, yt, sigmas=[1.0], loss="hinge", **kw)
    with pytest.raises(ConfigError, match="nin_mode"):
        train_ensemble(x, y, xt, yt, sigmas=[1.0], nin_mode="step", **kw)
    with pytest.raises(ConfigError, match="sigma"):
        train_ensemble(x, y, xt, yt, sigmas=[-1.0], batch_size=10, **kw)
    with pytest.raises(ConfigError, match="batch_size"):
        train_ensemble(x, y, xt, yt, sigmas=[1.0], batch_size=10_000, **kw)
    with pytest.raises(ConfigError, match="record_epochs.*7"):
        train_ensemble(x, y, xt, yt, sigmas=[1.0], batch_size=10, record_epochs=[7], **kw)
    with pytest.raises(ConfigError, match="eval_block"):
        train_ensemble(x, y, xt, yt, sigmas=[1.0], batch_size=10, eval_block=0, **kw)
    with pytest.raises(ConfigError, match="loss.*hinge"):
        batch_losses(torch.zeros(1, 3, 4), torch.zeros(3, dtype=torch.long), "hinge")
    with pytest.raises(ConfigError, match="loss.*hinge"):
        init_ensemble([12, 8, 4], [1.0], [0], 0).niw_curvature(x, "hinge")
    with pytest.raises(ConfigError, match="replica.*-1"):
        order_seed(0, -1)
