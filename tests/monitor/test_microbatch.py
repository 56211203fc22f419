"""The micro-batch noise estimator: formulas against brute force, equality with the per-sample estimates
averaged over all partitions, the jackknife interval's coverage, the engine's gradients and the refusals
that send a model to it."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from noiseprobe import NoiseMonitor
from noiseprobe.core.errors import ConfigError, NoPerSampleGradients
from noiseprobe.monitor.gns import fieller, noise_scale, noise_scale_from_sums, pooled_b_simple, quantile
from noiseprobe.monitor.microbatch import micro_batch_gradients, split
from noiseprobe.probes.persample import per_sample_gradients


def _estimates(rows: np.ndarray, b: int) -> tuple[float, float]:
    """tr Σ̂ and |Ĝ|² written out from the micro-batch mean gradients (the issue's formulas)."""
    m = rows.shape[0]
    gbar = rows.mean(0)
    t = b / (m - 1) * ((rows - gbar) ** 2).sum()
    return t, gbar @ gbar - t / (m * b)


def test_estimates_and_jackknife_against_brute_force():
    rng = np.random.default_rng(0)
    m, b = 7, 5
    rows = rng.standard_normal((m, 11)) + 0.4
    k = rows @ rows.T
    ns = noise_scale_from_sums(np.diag(k), k.sum(1), float(k.sum()), micro_batch_size=b)
    t, g = _estimates(rows, b)
    assert ns.tr_sigma == pytest.approx(t, rel=1e-12)
    assert ns.g_sq == pytest.approx(g, rel=1e-12)
    pairs = sum(rows[i] @ rows[j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    assert ns.g_sq == pytest.approx(pairs, rel=1e-12)
    assert ns.b_simple == pytest.approx(t / g, rel=1e-12)
    # delete-one-micro-batch jackknife, recomputed from the rows
    loo = np.array([_estimates(np.delete(rows, j, 0), b) for j in range(m)])
    d = loo - loo.mean(0)
    v = (m - 1) / m * d.T @ d
    assert ns.tr_sigma_se == pytest.approx(math.sqrt(v[0, 0]), rel=1e-10)
    assert ns.g_sq_se == pytest.approx(math.sqrt(v[1, 1]), rel=1e-10)
    assert ns.tr_g_cov == pytest.approx(v[0, 1], rel=1e-10)
    assert ns.dof == m - 1 and ns.micro_batch_size == b
    from scipy.stats import t as student_t

    q = student_t.ppf(0.975, m - 1)
    assert quantile(0.95, m - 1) == pytest.approx(q)
    assert (ns.b_simple_lo, ns.b_simple_hi) == pytest.approx(fieller(t, g, v[0, 0], v[1, 1], v[0, 1], q))
    # b = 1 is the per-sample estimator (normal quantiles)
    assert noise_scale_from_sums(np.diag(k), k.sum(1), float(k.sum())) == noise_scale(k)


def _pairings(items: list[int]) -> list[list[int]]:
    """Every partition of ``items`` into unordered pairs, each as the concatenation of its pairs."""
    if not items:
        return [[]]
    first, rest = items[0], items[1:]
    return [[first, o, *tail] for o in rest for tail in _pairings([r for r in rest if r != o])]


def test_average_over_all_partitions_equals_the_per_sample_estimates():
    """Acceptance (a): 6 samples, 3 micro-batches of 2, all 15 partitions, float64."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    loss_fn = nn.CrossEntropyLoss(reduction="none")
    exact = noise_scale(per_sample_gradients(model, loss_fn, x, y).gram().numpy())
    parts = _pairings(list(range(6)))
    assert len(parts) == 15 and len({tuple(sorted(map(tuple, np.reshape(p, (3, 2)).tolist()))) for p in parts}) == 15
    est = [micro_batch_gradients(model, loss_fn, x[p], y[p], micro_batches=3).noise() for p in parts]
    assert all(e.micro_batch_size == 2 for e in est)
    assert np.mean([e.tr_sigma for e in est]) == pytest.approx(exact.tr_sigma, rel=1e-10, abs=0)
    assert np.mean([e.g_sq for e in est]) == pytest.approx(exact.g_sq, rel=1e-10, abs=0)
    # the same through the monitor: its two estimators on the same model
    per = NoiseMonitor(model, loss_fn, metrics=["tr_sigma", "g_sq"]).measure((x, y))
    micro = NoiseMonitor(model, loss_fn, metrics=["tr_sigma", "g_sq"], estimator="micro-batch", micro_batches=3)
    rows = [micro.measure((x[p], y[p])) for p in parts]
    assert per["estimator"] == "per-sample" and {r["micro_batch_size"] for r in rows} == {2}
    for name in ("tr_sigma", "g_sq"):
        assert np.mean([r[name] for r in rows]) == pytest.approx(per[name], rel=1e-10, abs=0)


@pytest.mark.parametrize("m", [4, 8])
def test_jackknife_t_interval_coverage(m):
    """Gaussian micro-batch gradients ḡ_j ~ N(G, Σ/b), Σ with a spread spectrum: the 95 % intervals of
    tr Σ (t on m − 1 dof), |G|² and B_simple (Fieller) cover at ≥ 0.95 − 3 SE (SE = √(0.95·0.05/reps), the
    binomial SE of the coverage); the jackknife variance of a U-statistic is biased upward (Efron–Stein),
    so the intervals are conservative: ≤ 0.95 + 0.04 (measured 0.96–0.98 at m = 4, 8)."""
    rng = np.random.default_rng(m)
    reps, b, p, b_true = 2000, 4, 50, 5.0
    sd = np.linspace(0.5, 1.5, p)
    mu = np.ones(p) * math.sqrt((sd**2).sum() / b_true / p)
    rows = rng.standard_normal((reps, m, p)) * sd / math.sqrt(b) + mu
    hits = np.zeros(3)
    for k in rows @ rows.transpose(0, 2, 1):
        ns = noise_scale_from_sums(np.diag(k), k.sum(1), float(k.sum()), micro_batch_size=b)
        q = quantile(0.95, ns.dof)
        hits += [
            abs(ns.tr_sigma - (sd**2).sum()) <= q * ns.tr_sigma_se,
            abs(ns.g_sq - mu @ mu) <= q * ns.g_sq_se,
            ns.b_simple_lo <= b_true <= ns.b_simple_hi,
        ]
    se = math.sqrt(0.95 * 0.05 / reps)
    cover = hits / reps
    assert (cover >= 0.95 - 3 * se).all() and (cover <= 0.99).all(), cover


def test_pooled_b_simple_is_a_ratio_of_sums_with_summed_variances():
    rng = np.random.default_rng(3)
    scales = []
    for _ in range(4):
        rows = rng.standard_normal((8, 20)) * 0.5 + 0.3
        k = rows @ rows.T
        scales.append(noise_scale_from_sums(np.diag(k), k.sum(1), float(k.sum()), micro_batch_size=3))
    b, lo, hi = pooled_b_simple(scales)
    t, g = sum(s.tr_sigma for s in scales), sum(s.g_sq for s in scales)
    assert b == pytest.approx(t / g)
    q = quantile(0.95, 4 * 7)
    vt, vg = sum(s.tr_sigma_se**2 for s in scales), sum(s.g_sq_se**2 for s in scales)
    assert (lo, hi) == pytest.approx(fieller(t, g, vt, vg, sum(s.tr_g_cov for s in scales), q))
    assert lo <= b <= hi
    assert all(math.isnan(v) for v in pooled_b_simple([]))


def test_split_and_its_refusals():
    assert split(64) == (8, 8) and split(13) == (6, 2) and split(10, 3) == (3, 3)
    for n, m in ((5, None), (4, 5)):
        with pytest.raises(ConfigError, match="batch = .*micro-batches"):
            split(n, m)
    for m in (2, 3.0, True):
        with pytest.raises(ConfigError, match="micro_batches"):
            split(10, m)


class _Net(nn.Module):
    """A small ResNet-style block with BatchNorm2d (batch statistics in train mode) and dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        h = F.relu(h + self.bn2(self.conv2(h)))
        return self.head(F.dropout(h.mean((2, 3)), 0.3, self.training))


def test_micro_batch_gradients_are_each_micro_batch_trained_alone_and_leave_the_model_untouched():
    torch.manual_seed(1)
    model = _Net().double().train()
    x, y = torch.randn(14, 2, 5, 5, dtype=torch.float64), torch.randint(0, 3, (14,))
    loss_fn = nn.CrossEntropyLoss(reduction="none")
    model(x)  # running statistics and the counter are not at their initial values
    buffers = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    mb = micro_batch_gradients(model, loss_fn, x, y)
    assert (mb.m, mb.b) == (7, 2)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters())
    # the reference: the user's training step on each micro-batch alone, from the same RNG stream
    ref = copy.deepcopy(model)
    rows = []
    for j in range(7):
        ref.zero_grad()
        loss_fn(ref(x[2 * j : 2 * j + 2]), y[2 * j : 2 * j + 2]).mean().backward()
        rows.append(torch.cat([p.grad.flatten() for p in ref.parameters()]))
    torch.set_rng_state(rng)
    torch.testing.assert_close(mb.rows, torch.stack(rows), rtol=1e-12, atol=1e-14)
    # the estimates from them: unbiased diag Σ̂ sums to tr Σ̂; C's eigenvalues, rank ≤ m − 1, NaN beyond
    ns = mb.noise()
    assert float(mb.sigma_diagonal().sum()) == pytest.approx(ns.tr_sigma, rel=1e-10)
    lam = mb.c_eigenvalues(10, 32)
    assert np.isnan(lam[6:]).all() and (np.diff(lam[:6]) <= 0).all()
    assert lam[:6].sum() == pytest.approx(ns.tr_sigma / 32, rel=1e-10)


class _Clamp(torch.autograd.Function):
    """An opaque custom Function (no setup_context: torch.func cannot vmap it)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0)


class _Opaque(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return _Clamp.apply(x @ self.w)


class _Stochastic(nn.Module):
    """Dropout inside a module without a layer rule (as stochastic depth or an LSTM's dropout)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return F.dropout(x @ self.w, 0.5, self.training)


@pytest.mark.parametrize(
    "layer, module, reason",
    [
        (nn.BatchNorm1d(4), "model.1", "BatchNorm1d in training mode"),
        (_Stochastic(), "model.1", "drawing random numbers in training mode"),
        (_Opaque(), "model.1", "autograd.Function"),
    ],
)
@pytest.mark.filterwarnings("ignore:per-sample gradients")
def test_undefined_per_sample_gradients_are_refused_naming_the_module(layer, module, reason):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), layer, nn.Linear(4, 2)).train()
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    with pytest.raises(NoPerSampleGradients, match=reason) as err:
        per_sample_gradients(model, lambda o, t: ((o - t) ** 2).sum(1), x, y)
    assert err.value.module == module and reason in err.value.reason
    assert isinstance(err.value, ConfigError) and "\n" not in str(err.value)
    # the micro-batch estimator works on it
    assert math.isfinite(micro_batch_gradients(model, lambda o, t: ((o - t) ** 2).sum(1), x, y, 4).noise().tr_sigma)
