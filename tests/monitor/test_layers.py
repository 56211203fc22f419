"""Layer-wise noise scale (#20.3): per-module tr Σ_l, |G_l|², B_simple_l against dense per-sample (and
micro-batch) gradients grouped by module, additivity over modules, tied parameters, groups, unwrapped paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from noiseprobe import NoiseMonitor
from noiseprobe.core.errors import ConfigError
from noiseprobe.monitor.gns import noise_scale
from noiseprobe.monitor.metrics import Layers
from noiseprobe.probes.persample import parameter_owners, select_parameters
from noiseprobe.probes.sample_losses import model_output

V, D, T = 11, 6, 5


class TinyLM(nn.Module):
    """Tied embedding/head, a position parameter on the root (a non-leaf owner), LayerNorm, an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.pos = nn.Parameter(0.1 * torch.randn(T, D))
        self.block = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, D), nn.Tanh())
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Linear(D, V)
        self.head.weight = self.emb.weight  # tied: counted once, under emb

    def forward(self, x):
        h = self.emb(x) + self.pos
        h = h + self.block(h)
        return self.head(self.ln_f(h))


def loss_fn(out, y):
    return F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1)


def _setup(n=12):
    torch.manual_seed(0)
    model = TinyLM().double()
    with torch.no_grad():  # LayerNorm affine parameters away from their init, so their gradients are generic
        for m in (model.block[0], model.ln_f):
            m.weight.add_(0.3 * torch.randn(D, dtype=torch.float64))
            m.bias.add_(0.3 * torch.randn(D, dtype=torch.float64))
    x, y = torch.randint(0, V, (n, T)), torch.randint(0, V, (n, T))
    return model, x, y


def _dense_by_module(model, x, y, rows_of=None):
    """Per-sample gradient rows (one backward per sample) split into columns per owning module."""
    params = select_parameters(model)
    owners = parameter_owners(model)
    units = rows_of if rows_of is not None else [(x[i : i + 1], y[i : i + 1]) for i in range(len(x))]
    rows = []
    for xi, yi in units:
        g = torch.autograd.grad(loss_fn(model(xi), yi).mean(), [p for _, p in params])
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    J = torch.stack(rows).numpy()
    cols: dict[str, list[np.ndarray]] = {}
    o = 0
    for _, p in params:
        cols.setdefault(owners[id(p)][0], []).append(J[:, o : o + p.numel()])
        o += p.numel()
    return {k: np.concatenate(c, 1) for k, c in cols.items()}, J


def test_module_columns_against_dense_per_sample_gradients_and_their_sum_is_the_total():
    model, x, y = _setup()
    mon = NoiseMonitor(
        model, loss_fn, every=1, metrics=["default", Layers(groups={"mlp": ["block.1"], "blocks": [model.block]})]
    )
    row = mon.step((x, y))
    by_module, J = _dense_by_module(model, x, y)
    assert list(by_module) == ["pos", "emb", "block.0", "block.1", "ln_f", "head"]  # head: its bias only
    assert [k.split("/", 1)[1] for k in row if k.startswith("tr_sigma/") and ":" not in k] == list(by_module)
    for key, Jl in by_module.items():
        ns = noise_scale(Jl @ Jl.T)
        assert row[f"tr_sigma/{key}"] == pytest.approx(ns.tr_sigma, rel=1e-10)
        assert row[f"g_sq/{key}"] == pytest.approx(ns.g_sq, rel=1e-10)
        assert row[f"b_simple/{key}"] == pytest.approx(ns.b_simple, rel=1e-10)
    assert sum(row[f"tr_sigma/{k}"] for k in by_module) == pytest.approx(row["tr_sigma"], rel=1e-12)
    assert sum(row[f"g_sq/{k}"] for k in by_module) == pytest.approx(row["g_sq"], rel=1e-10)
    assert row["tr_sigma"] == pytest.approx(noise_scale(J @ J.T).tr_sigma, rel=1e-10)
    for group, keys in {"norms": ["block.0", "ln_f"], "mlp": ["block.1"], "blocks": ["block.0", "block.1"]}.items():
        Jg = np.concatenate([by_module[k] for k in keys], 1)
        ns = noise_scale(Jg @ Jg.T)
        assert row[f"tr_sigma/group:{group}"] == pytest.approx(ns.tr_sigma, rel=1e-10)
        assert row[f"b_simple/group:{group}"] == pytest.approx(ns.b_simple, rel=1e-10)
    assert row["status"] == "ok"


def test_micro_batch_estimator_gives_the_same_quantities_from_micro_batch_gradients():
    model, x, y = _setup(n=12)
    mon = NoiseMonitor(
        model, loss_fn, every=1, metrics=["tr_sigma", "layers"], estimator="micro-batch", micro_batches=4
    )
    row = mon.step((x, y))
    b = 3
    units = [(x[j * b : (j + 1) * b], y[j * b : (j + 1) * b]) for j in range(4)]
    by_module, _ = _dense_by_module(model, x, y, rows_of=units)
    for key, R in by_module.items():
        K = R @ R.T
        m = 4
        t = b / (m - 1) * ((R - R.mean(0)) ** 2).sum()
        g = R.mean(0) @ R.mean(0) - t / (m * b)
        assert row[f"tr_sigma/{key}"] == pytest.approx(t, rel=1e-10)
        assert row[f"g_sq/{key}"] == pytest.approx(g, rel=1e-8, abs=1e-14 * np.abs(K).max())
    assert sum(row[f"tr_sigma/{k}"] for k in by_module) == pytest.approx(row["tr_sigma"], rel=1e-12)
    assert row["estimator"] == "micro-batch"


def test_paths_are_relative_to_the_unwrapped_model():
    model, x, y = _setup()
    plain = parameter_owners(model)
    assert {k for k, _ in parameter_owners(torch.compile(model)).values()} == {k for k, _ in plain.values()}
    mon = NoiseMonitor(nn.DataParallel(model), loss_fn, every=1, metrics=["layers"])
    row = mon.step((x, y))
    assert "tr_sigma/emb" in row and not any(k.startswith(("tr_sigma/module.", "tr_sigma/_orig_mod.")) for k in row)


def test_a_model_without_normalisation_layers_has_nan_norm_columns():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    row = NoiseMonitor(model, nn.CrossEntropyLoss(reduction="none"), every=1, metrics=["layers"]).step((x, y))
    assert np.isnan(row["b_simple/group:norms"]) and np.isfinite(row["tr_sigma/0"]) and row["status"] == "ok"


@pytest.mark.parametrize(
    ("groups", "field"),
    [({"norms": ["a"]}, "groups"), ({"x": []}, "groups['x']"), ({"x": "emb"}, "groups['x']")],
)
def test_bad_groups_are_config_errors(groups, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[")):
        Layers(groups=groups)


def test_a_group_naming_no_module_is_refused_at_the_first_measurement():
    model, x, y = _setup()
    mon = NoiseMonitor(model, loss_fn, every=1, metrics=[Layers(groups={"attn": ["nope"]})])
    with pytest.raises(ConfigError, match="nope"):
        mon.step((x, y))


def test_hf_gpt2_from_a_config_norms_group_against_dense_gradients():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=13, n_positions=8, n_embd=8, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0
    model = transformers.GPT2LMHeadModel(cfg).double().eval()
    x = torch.randint(0, 13, (6, 5))

    def lm_loss(out, y):
        return F.cross_entropy(model_output(out).transpose(1, 2), y, reduction="none").mean(1)

    row = NoiseMonitor(model, lm_loss, every=1, metrics=["tr_sigma", "layers"]).step((x, x))
    owners = parameter_owners(model)
    norms = list(dict.fromkeys(k for k, m in owners.values() if isinstance(m, nn.LayerNorm)))
    assert norms == ["transformer.h.0.ln_1", "transformer.h.0.ln_2", "transformer.h.1.ln_1", "transformer.h.1.ln_2", "transformer.ln_f"]  # fmt: skip
    params = select_parameters(model)
    rows = []
    for i in range(6):
        g = torch.autograd.grad(lm_loss(model(x[i : i + 1]), x[i : i + 1]).mean(), [p for _, p in params])
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    J = torch.stack(rows).numpy()
    cols, o = [], 0
    for _, p in params:
        if owners[id(p)][0] in norms:
            cols.append(J[:, o : o + p.numel()])
        o += p.numel()
    Jn = np.concatenate(cols, 1)
    ns = noise_scale(Jn @ Jn.T)
    assert row["tr_sigma/group:norms"] == pytest.approx(ns.tr_sigma, rel=1e-9)
    assert row["g_sq/group:norms"] == pytest.approx(ns.g_sq, rel=1e-8)
    keys = {k.split("/", 1)[1] for k in row if k.startswith("tr_sigma/") and ":" not in k}
    assert sum(row[f"tr_sigma/{k}"] for k in keys) == pytest.approx(row["tr_sigma"], rel=1e-12)
    assert row["status"] == "ok"
