"""The no-extra-pass mode, ``NoiseMonitor(..., inline=True)`` (#20.4): equality with the two-pass measurement
(float64 MLP and GPT-style transformer), per-sample gradients replaying dropout masks, gradient accumulation,
GradScaler, the loss scale c, every refusal, faults inside hooks, and a run left bit for bit as it was."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from noiseprobe import NoiseMonitor
from noiseprobe.core.errors import ConfigError
from noiseprobe.models import GPT, GPTConfig
from noiseprobe.monitor import inline as inline_mod
from noiseprobe.monitor.gns import noise_scale
from noiseprobe.monitor.metrics import Layers
from noiseprobe.probes.rules.linear import LinearRule


def mse(out, y):
    return ((out - y) ** 2).sum(1)


def ce(out, y):
    return F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1)


def _mlp(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Dropout(dropout), nn.LayerNorm(7), nn.Linear(7, 3)).double()


def _mlp_data(n: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randn(n, 3, generator=g, dtype=torch.float64)


def _gpt() -> nn.Module:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab=13, width=8, heads=2, layers=2, T=6)).double()
    with torch.no_grad():  # LayerNorm affine parameters away from their init: generic gradients
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.add_(0.3 * torch.randn_like(m.weight))
                m.bias.add_(0.3 * torch.randn_like(m.bias))
    return model


def _gpt_data(n: int = 10, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 13, (n, 6), generator=g), torch.randint(0, 13, (n, 6), generator=g)


def _close(inline_row: dict, two_pass_row: dict, rtol: float = 1e-6) -> None:
    keys = [k for k, v in two_pass_row.items() if isinstance(v, float) and k != "seconds"]
    assert len(keys) > 5
    for k in keys:
        a, b = inline_row[k], two_pass_row[k]
        if not math.isfinite(b):
            assert a == b or (math.isnan(a) and math.isnan(b)), k
        else:
            assert abs(a - b) <= rtol * abs(b) + 1e-300, (k, a, b)


def _compare(model, loss_fn, data, metrics, steps=3, scale=1.0):
    """Train ``steps`` SGD steps measuring every step inline; a two-pass monitor measures the same batches."""
    two = NoiseMonitor(model, loss_fn, every=1, metrics=metrics, on_error="raise")
    mon = NoiseMonitor(model, loss_fn, every=1, metrics=metrics, inline=True, on_error="raise")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in data[:steps]:
        opt.zero_grad()
        loss = scale * loss_fn(model(x), y).mean()
        loss.backward()
        ref = two.step((x, y), opt)
        row = mon.step((x, y), opt, loss=loss)
        assert row["status"] == "ok"
        _close(row, ref)
        assert row["loss_scale"] == pytest.approx(scale, rel=1e-12)
        assert row["grad_scale"] == pytest.approx(1.0, rel=1e-12)
        opt.step()
    return mon


def test_mlp_equals_two_pass():
    model = _mlp()
    _compare(model, mse, [_mlp_data(seed=s) for s in range(3)], ["default", "layers"])


def test_gpt_equals_two_pass_with_layers_and_groups():
    """LayerNorm, token and (batch-shared) position embeddings, the tied head, named groups with "norms"."""
    model = _gpt()
    groups = Layers(groups={"attention": ["blocks.0.attn", "blocks.1.attn"], "mlp": ["blocks.0.mlp"]})
    mon = _compare(model, ce, [_gpt_data(seed=s) for s in range(3)], ["default", groups], scale=2.5)
    cols = mon.history.columns
    assert "b_simple/group:norms" in cols and "tr_sigma/tok" in cols and "b_simple/group:attention" in cols


def test_norms_subset_equals_two_pass():
    """params= restricted to the normalisation layers: the same numbers as the two-pass engine on that subset."""
    model = _gpt()
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)]
    two = NoiseMonitor(model, ce, every=1, params=norms, on_error="raise")
    mon = NoiseMonitor(model, ce, every=1, params=norms, inline=True, on_error="raise")
    x, y = _gpt_data()
    loss = ce(model(x), y).mean()
    loss.backward()
    ref, row = two.step((x, y), None), mon.step((x, y), None, loss=loss)
    _close(row, ref)
    full = NoiseMonitor(model, ce, every=1).measure((x, y))
    assert row["tr_sigma"] < 0.9 * full["tr_sigma"]  # a subset, not the whole model


def test_sum_reduction_reports_c_equal_n():
    model = _mlp()
    x, y = _mlp_data()
    mon = NoiseMonitor(model, mse, inline=True, on_error="raise")
    ref = NoiseMonitor(model, mse).measure((x, y))
    loss = mse(model(x), y).sum()  # c = N
    loss.backward()
    row = mon.step((x, y), None, loss=loss)
    assert row["loss_scale"] == pytest.approx(len(x), rel=1e-12)
    assert row["grad_scale"] == pytest.approx(1.0, rel=1e-12)
    _close(row, ref)


def test_loss_required_and_checked():
    model = _mlp()
    x, y = _mlp_data()
    mon = NoiseMonitor(model, mse, inline=True)
    mse(model(x), y).mean().backward()
    with pytest.raises(ConfigError, match="loss"):
        mon.step((x, y), None)
    # a backward of another loss than c·mean(loss_fn): a ConfigError at the first measurement ...
    mon = NoiseMonitor(model, mse, every=1, inline=True)
    loss = ((model(x) - y).abs()).sum(1).mean()
    loss.backward()
    with pytest.raises(ConfigError, match="not a multiple"):
        mon.step((x, y), None, loss=loss)
    # ... and a status later, once a measurement went through
    loss = mse(model(x), y).mean()
    loss.backward()
    assert mon.step((x, y), None, loss=loss)["status"] == "ok"
    loss = ((model(x) - y).abs()).sum(1).mean()
    loss.backward()
    with pytest.warns(UserWarning, match="not a multiple"):
        row = mon.step((x, y), None, loss=loss)
    assert row["status"] == "error (ConfigError)" and math.isnan(row["tr_sigma"])


def test_gradient_accumulation_equals_union_batch():
    """Three micro-batches of unequal sizes, each loss_j = mean_j·(n_j/N) (c_j = n_j/N): the union's numbers."""
    model = _gpt()
    x, y = _gpt_data(n=12)
    ref = NoiseMonitor(model, ce, metrics=["default", "layers"]).measure((x, y))
    mon = NoiseMonitor(model, ce, metrics=["default", "layers"], inline=True, on_error="raise")
    losses = []
    for lo, hi in ((0, 5), (5, 9), (9, 12)):
        loss = ce(model(x[lo:hi]), y[lo:hi]).mean() * ((hi - lo) / 12)
        loss.backward()
        losses.append(loss)
    row = mon.step((x, y), None, loss=losses)
    assert row["status"] == "ok"
    _close(row, ref)
    assert row["loss_scale"] == pytest.approx(1 / 3, rel=1e-12)  # the mean of 5/12, 4/12, 3/12
    mon2 = NoiseMonitor(model, ce, every=1, inline=True)
    for lo, hi in ((0, 6), (6, 12)):
        ce(model(x[lo:hi]), y[lo:hi]).mean().backward()
    with pytest.raises(ConfigError, match="one per micro-batch"):
        mon2.step((x, y), None, loss=loss)


def test_grad_scaler_divided_out():
    model = _mlp().float()
    x, y = (t.float() for t in _mlp_data())
    ref = NoiseMonitor(model, mse).measure((x, y))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    mon = NoiseMonitor(model, mse, inline=True, on_error="raise")
    loss = mse(model(x), y).mean()
    scaler.scale(loss).backward()
    row = mon.step((x, y), None, loss=loss)
    assert row["grad_scale"] == pytest.approx(1024.0, rel=1e-5)
    assert row["loss_scale"] == pytest.approx(1.0, rel=1e-6)
    _close(row, ref, rtol=1e-4)  # float32


def test_dropout_against_replayed_masks():
    """Dropout in training mode: the inline measurement is of the masks the step drew. Reference: the same
    batched forward (same masks), then one backward per sample of ℓ_i (retain_graph), dense J, gns by hand."""
    model = _mlp(dropout=0.4).train()
    x, y = _mlp_data(n=10)
    mon = NoiseMonitor(model, mse, metrics=["tr_sigma", "g_sq", "b_simple"], inline=True, on_error="raise")
    params = [p for p in model.parameters()]
    with torch.random.fork_rng():
        torch.manual_seed(7)
        losses = mse(model(x), y)
    loss = losses.mean()
    loss.backward(retain_graph=True)
    row = mon.step((x, y), None, loss=loss)
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(li, params, retain_graph=True)]) for li in losses]
    J = torch.stack(rows).numpy()
    ref = noise_scale(J @ J.T)
    assert row["tr_sigma"] == pytest.approx(ref.tr_sigma, rel=1e-9)
    assert row["g_sq"] == pytest.approx(ref.g_sq, rel=1e-9)
    # the two-pass engine refuses nothing here but draws other masks: a different number
    other = NoiseMonitor(model, mse, metrics=["tr_sigma"]).measure((x, y))
    assert abs(other["tr_sigma"] - ref.tr_sigma) > 1e-6 * ref.tr_sigma


class _Holder(nn.Module):
    """Uses its child's weight itself; the child never runs (a parameter outside its rule's calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(5, 3)

    def forward(self, x):
        return F.linear(x, self.inner.weight, self.inner.bias)


def test_refusals_at_construction():
    x = torch.randn(8, 4)
    with pytest.raises(ConfigError, match="factored layer rule"):  # a parameter on a module without a rule
        NoiseMonitor(nn.MultiheadAttention(4, 2, batch_first=True), mse, inline=True)
    with pytest.raises(ConfigError, match=r"pos \(in GPT\)"):  # a parameter held by a module with children
        model = _gpt()
        model.pos = nn.Parameter(torch.zeros(6, 8))
        NoiseMonitor(model, ce, inline=True)
    with pytest.raises(ConfigError, match="measure"):
        NoiseMonitor(_mlp(), mse, inline=True).measure(_mlp_data())
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train()
    with pytest.raises(ConfigError, match="BatchNorm1d in training mode"):
        NoiseMonitor(bn, mse, inline=True)
    with pytest.raises(ConfigError, match="sharpness"):
        NoiseMonitor(_mlp(), mse, metrics=["default", "sharpness"], inline=True)
    with pytest.raises(ConfigError, match="estimator"):
        NoiseMonitor(_mlp(), mse, inline=True, estimator="micro-batch")
    compiled = torch.compile(nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="compiled"):
        NoiseMonitor(compiled, mse, inline=True)
    inplace = nn.Linear(4, 2)
    inplace.compile()
    with pytest.raises(ConfigError, match="compiled"):
        NoiseMonitor(inplace, mse, inline=True)
    assert x.shape == (8, 4)


def _one_step(model, mon, x, y, **kw):
    model.zero_grad()
    loss = mse(model(x, **kw), y).mean()
    loss.backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mon.step((x, y), None, loss=loss)


class _Checkpointed(nn.Module):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.a, self.b, self.reentrant = nn.Linear(5, 6), nn.Linear(6, 3), reentrant

    def forward(self, x):
        h = checkpoint(lambda z: torch.tanh(self.a(z)), x, use_reentrant=self.reentrant)
        return self.b(h)


@pytest.mark.parametrize("reentrant", [False, True])
def test_refused_under_activation_checkpointing(reentrant):
    torch.manual_seed(0)
    model = _Checkpointed(reentrant).double()
    x, y = _mlp_data()
    x.requires_grad_(reentrant)  # reentrant checkpointing needs an input that requires grad
    row = _one_step(model, NoiseMonitor(model, mse, inline=True), x, y)
    assert row["status"] == "activation checkpointing" and math.isnan(row.get("tr_sigma", math.nan))


def test_refused_statuses_at_run_time():
    x, y = _mlp_data()
    bn = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3)).double().eval()
    mon = NoiseMonitor(bn, mse, every=1, inline=True)
    assert _one_step(bn, mon, x, y)["status"] == "ok"
    bn.train()
    _one_step(bn, mon, x, y)  # armed for this step before the switch
    assert _one_step(bn, mon, x, y)["status"] == "batch statistics"
    holder = _Holder().double()
    row = _one_step(holder, NoiseMonitor(holder, mse, inline=True), x, y)
    assert row["status"] == "parameter outside a factored-rule layer"


def _train(model, steps, mon=None, every=2, seed=3):
    """SGD with momentum, dropout drawn; returns parameters and grads after ``steps`` steps."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(seed)
    for s in range(steps):
        x, y = _gpt_data(seed=10 + s)
        opt.zero_grad()
        loss = ce(model(x), y).mean()
        loss.backward()
        if mon is not None:
            mon.step((x, y), opt, loss=loss)
        opt.step()
    return [p.detach().clone() for p in model.parameters()], [p.grad.clone() for p in model.parameters()]


def _dropout_gpt():
    model = _gpt()
    for block in model.blocks:  # dropout after the MLP: random draws in the user's forward
        block.mlp.append(nn.Dropout(0.2))
    return model.train()


def test_run_bit_identical_to_unmonitored():
    ref = _train(_dropout_gpt(), 4)
    model = _dropout_gpt()
    mon = NoiseMonitor(model, ce, every=2, metrics=["default", "layers"], inline=True, on_error="raise")
    got = _train(model, 4, mon)
    assert all(torch.equal(a, b) for a, b in zip(ref[0] + ref[1], got[0] + got[1]))
    assert list(mon.history["status"]) == ["ok", "ok"]
    assert not mon.inline.armed or mon.steps % 2 == 0


def test_unmeasured_steps_carry_no_hooks():
    model = _gpt()
    mon = NoiseMonitor(model, ce, every=3, inline=True)
    hooked = lambda: sum(len(m._forward_hooks) for m in model.modules())  # noqa: E731
    assert hooked() > 0  # armed at construction for step 0
    x, y = _gpt_data()
    for _ in range(4):
        loss = ce(model(x), y).mean()
        loss.backward()
        mon.step((x, y), None, loss=loss)
        assert (hooked() > 0) == (mon.steps % 3 == 0)
        assert mon.inline.passes == []  # the measured step's captures are released at once


@pytest.mark.parametrize("where", ["hook", "rule"])
def test_fault_in_hook_or_rule_never_stops_the_run(monkeypatch, where):
    def boom(*args, **kwargs):
        raise RuntimeError("injected")

    if where == "hook":
        monkeypatch.setattr(inline_mod.InlineCapture, "_record_call", boom)
    else:
        monkeypatch.setattr(LinearRule, "factor", boom)
    ref = _train(_dropout_gpt(), 4)
    model = _dropout_gpt()
    mon = NoiseMonitor(model, ce, every=1, inline=True)
    with pytest.warns(UserWarning, match="capture error") as record:
        got = _train(model, 4, mon)
    assert sum("capture error" in str(w.message) for w in record) == 1
    assert all(torch.equal(a, b) for a, b in zip(ref[0] + ref[1], got[0] + got[1]))
    assert list(mon.history["status"]) == ["capture error"] * 4


def test_autocast_values_at_the_steps_precision():
    """bfloat16 autocast on a float32 model: measured, within bfloat16's precision of the float32 numbers."""
    model = _mlp().float()
    x, y = (t.float() for t in _mlp_data(n=16))
    ref = NoiseMonitor(model, mse).measure((x, y))
    mon = NoiseMonitor(model, mse, inline=True, on_error="raise")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    loss = mse(out.float(), y).mean()
    loss.backward()
    row = mon.step((x, y), None, loss=loss)
    assert row["status"] == "ok"
    for k in ("tr_sigma", "g_sq"):
        assert row[k] == pytest.approx(ref[k], rel=0.1)
    assert np.isfinite(row["b_simple"])


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.rnn, self.head = nn.Embedding(13, 6), nn.LSTM(6, 5, batch_first=True), nn.Linear(5, 13)

    def forward(self, ids):
        return self.head(self.rnn(self.emb(ids))[0])


@pytest.mark.parametrize("kind", ["lstm", "cnn"])
def test_lstm_and_cnn_equal_two_pass(kind):
    """Models beyond Linear/LayerNorm: an LSTM language model (the recurrent rule) and a CNN (convolutions
    with every padding option and GroupNorm: noiseprobe.models.small_cnn)."""
    from noiseprobe.models import small_cnn

    torch.manual_seed(0)
    if kind == "lstm":
        model, loss_fn, (x, y) = _Recurrent().double(), ce, _gpt_data()
    else:
        model, loss_fn = (
            small_cnn(dim=2, channels=3, classes=5, width=4).double(),
            nn.CrossEntropyLoss(reduction="none"),
        )
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(8, 3, 9, 9, generator=g, dtype=torch.float64), torch.randint(0, 5, (8,), generator=g)
    ref = NoiseMonitor(model, loss_fn, metrics=["default", "layers"]).measure((x, y))
    mon = NoiseMonitor(model, loss_fn, metrics=["default", "layers"], inline=True, on_error="raise")
    loss = loss_fn(model(x), y).mean()
    loss.backward()
    row = mon.step((x, y), None, loss=loss)
    assert row["status"] == "ok"
    _close(row, ref)


def test_accumulation_with_padding_token_mean():
    """Token-mean cross-entropy over non-padding tokens, two micro-batches each weighted by its share of
    the tokens (the loop's exact accumulation of the union's token mean): ℓ_i's normaliser depends on the
    batch, and the union's values are still recovered (each micro-batch's own κ_j)."""
    from noiseprobe.models import token_batch
    from noiseprobe.probes.sample_losses import TokenMeanCrossEntropy

    model, loss_fn = _gpt(), TokenMeanCrossEntropy()
    ids, y, mask = token_batch(GPTConfig(vocab=13, width=8, heads=2, layers=2, T=6), 10, seed=3)
    ref = NoiseMonitor(model, loss_fn, metrics=["default", "layers"]).measure((ids, (y, mask)))
    mon = NoiseMonitor(model, loss_fn, metrics=["default", "layers"], inline=True, on_error="raise")
    losses, total = [], mask.sum()
    for sl in (slice(0, 6), slice(6, 10)):
        loss = loss_fn(model(ids[sl]), (y[sl], mask[sl])).mean() * (mask[sl].sum() / total)
        loss.backward()
        losses.append(loss)
    row = mon.step((ids, (y, mask)), None, loss=losses)
    assert row["status"] == "ok"
    _close(row, ref)


def test_hf_gpt2_from_a_config_equals_two_pass():
    """transformers GPT-2 (Conv1D, LayerNorm, token and internal position embeddings, tied head; a
    ModelOutput), the loop's own loss as users write it: inline equals the two-pass measurement."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=13, n_positions=8, n_embd=8, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0
    model = transformers.GPT2LMHeadModel(cfg).double().train()
    x, _ = _gpt_data(n=8)
    metrics = ["default", "layers"]
    ref = NoiseMonitor(model, ce, metrics=metrics).measure((x, x))
    mon = NoiseMonitor(model, ce, metrics=metrics, inline=True, on_error="raise")
    loss = ce(model(x).logits, x).mean()
    loss.backward()
    row = mon.step((x, x), None, loss=loss)
    assert row["status"] == "ok" and "b_simple/group:norms" in row
    _close(row, ref)


def test_bfloat16_model():
    """A bfloat16 model (no autocast): measured at bfloat16 precision, close to the float64 numbers."""
    model = _mlp()
    x, y = _mlp_data(n=16)
    ref = NoiseMonitor(model, mse).measure((x, y))
    model = model.bfloat16()
    xb, yb = x.bfloat16(), y.bfloat16()
    mon = NoiseMonitor(model, mse, inline=True, on_error="raise")
    loss = mse(model(xb), yb).float().mean()
    loss.backward()
    row = mon.step((xb, yb), None, loss=loss)
    assert row["status"] == "ok"
    for k in ("tr_sigma", "g_sq"):
        assert row[k] == pytest.approx(ref[k], rel=0.1)
