"""The engine around the layer rules: shared parameters and repeated calls, the vmap fallback and its
refusals, consumed submodules, the self-check, input validation, precision."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from noiseprobe.core.errors import ConfigError
from noiseprobe.models import GPT, GPTConfig, token_batch
from noiseprobe.probes.factors import OuterFactor, RowsFactor, SummedOuterFactor
from noiseprobe.probes.operators import GradientNoise
from noiseprobe.probes.persample import per_sample_gradients
from noiseprobe.probes.sample_losses import TokenMeanCrossEntropy, token_mean
from tests.probes.oracle import DEVICES, assert_products, func_rows

CE = nn.CrossEntropyLoss(reduction="none")


class _Shared(nn.Module):
    """A Linear and a LayerNorm applied twice, an output head tied to the embedding, and (``biased_tie``) a
    second head with a bias whose weight is the embedding too (overlapping blocks of different layouts)."""

    def __init__(self, biased_tie: bool) -> None:
        super().__init__()
        self.emb, self.lin, self.ln = nn.Embedding(7, 4), nn.Linear(4, 4), nn.LayerNorm(4)
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.emb.weight
        self.head2 = nn.Linear(4, 7) if biased_tie else None
        if self.head2 is not None:
            self.head2.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        for _ in range(2):
            h = self.ln(torch.tanh(self.lin(h)))
        out = self.head(h)
        return (out if self.head2 is None else out + self.head2(h)).mean(1)


def _ids(n: int = 6, t: int = 3, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return torch.randint(0, 7, (n, t), generator=g).to(device), torch.randint(0, 7, (n,), generator=g).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("biased_tie", [False, True])
def test_tied_and_repeated_modules_sum_per_sample(device: str, biased_tie: bool) -> None:
    torch.manual_seed(0)
    model = _Shared(biased_tie).to(device).double()
    ids, y = _ids(device=device)
    j = func_rows(model, lambda call, i, t: F.cross_entropy(call(i[None]), t[None]), ids, y)
    fac = per_sample_gradients(model, CE, ids, y, check=True)
    kinds = {id(ps[0]): type(f) for ps, f in fac.blocks}
    assert kinds[id(model.lin.weight)] is OuterFactor  # two calls: one token axis of length 2T
    assert kinds[id(model.ln.weight)] is RowsFactor  # two calls: rows summed before any product
    # ids and a dense head: summed chunk by chunk; with the second head's bias: explicit rows
    assert kinds[id(model.emb.weight)] is (RowsFactor if biased_tie else SummedOuterFactor)
    assert_products(fac, j, rtol=1e-9, atol=1e-12)


class _Scale(nn.Module):
    """A parameter used in the module's own forward (no rule), around a child Linear (which keeps its rule)."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.linspace(0.5, 1.5, 5))
        self.inner = nn.Linear(5, 5)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.inner(x) * self.s + self.s**2)


def test_module_without_rule_falls_back_alone_with_one_warning() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), _Scale(), nn.Linear(5, 2)).double()
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randint(0, 2, (7,))
    j = func_rows(model, lambda call, xi, yi: F.cross_entropy(call(xi[None]), yi[None]), x, y)
    with pytest.warns(UserWarning, match=r"_Scale model\.2 has no layer rule"):
        fac = per_sample_gradients(model, CE, x, y, check=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        per_sample_gradients(model, CE, x, y)  # one-time warning
    kinds = {id(ps[0]): type(f) for ps, f in fac.blocks}
    assert kinds[id(model[2].s)] is RowsFactor and kinds[id(model[2].inner.weight)] is OuterFactor
    assert_products(fac, j, rtol=1e-9, atol=1e-12)


def test_fallback_refuses_random_draws_in_training_mode() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 5), _Scale(dropout=0.5), nn.Linear(5, 2)).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    with pytest.raises(ConfigError, match=r"model\.1 = '_Scale drawing random numbers in training mode'"):
        per_sample_gradients(model, CE, x, y)
    model.eval()
    j = func_rows(model, lambda call, xi, yi: F.cross_entropy(call(xi[None]), yi[None]), x, y)
    assert_products(per_sample_gradients(model, CE, x, y), j, rtol=1e-9, atol=1e-12)
    attn = nn.MultiheadAttention(4, 2, dropout=0.1)
    with pytest.raises(ConfigError, match="MultiheadAttention"):
        per_sample_gradients(_AttnOnly(attn), CE, torch.randn(6, 3, 4), torch.randint(0, 4, (6,)))


class _AttnOnly(nn.Module):
    def __init__(self, attn: nn.MultiheadAttention) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1))[0].mean(0)


class _Consumer(nn.Module):
    """Uses its child's parameters in its own forward (the child's forward never runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.tanh(x), self.proj.weight, self.proj.bias)


def test_consumed_submodule_is_detected_and_handled_by_its_consumer() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(2, 4), _Consumer()).double()
    x, y = torch.randn(5, 2, dtype=torch.float64), torch.randint(0, 3, (5,))
    j = func_rows(model, lambda call, xi, yi: F.cross_entropy(call(xi[None]), yi[None]), x, y)
    with pytest.warns(UserWarning, match=r"model\.1\.proj never runs.*model\.1 consumes them"):
        fac = per_sample_gradients(model, CE, x, y)
    assert_products(fac, j, rtol=1e-9, atol=1e-12)


class _FunctionalHead(nn.Module):
    """An output head written as ``h @ emb.weight.T`` in the model's own forward: a use of a parameter that
    no hook sees (its module also runs). Only the self-check can notice."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(self.emb(ids)) @ self.emb.weight.T).mean(1)


def test_self_check_catches_an_unseen_use() -> None:
    torch.manual_seed(4)
    model = _FunctionalHead().double()
    ids, y = _ids()
    per_sample_gradients(model, CE, ids, y)  # silently misses the head's contribution ...
    with pytest.raises(ConfigError, match=r"parameter emb\.weight.*whose weighted sum is autograd's gradient"):
        per_sample_gradients(model, CE, ids, y, check=True)  # ... which the self-check reports
    assert_products(
        per_sample_gradients(model, CE, ids, y, method="func", check=True),
        func_rows(model, lambda call, i, t: F.cross_entropy(call(i[None]), t[None]), ids, y),
        1e-9,
        1e-12,
    )


def test_sequence_first_linear_is_refused_in_one_line() -> None:
    model = nn.Linear(4, 3).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64)  # (T, N, F)
    y = torch.randint(0, 3, (5,))
    with pytest.raises(ConfigError, match=r"^model = 'input of shape \(2, 5, 4\)'.*batch of N = 5 on axis 0"):
        per_sample_gradients(model, CE, (x,), y, forward=lambda m, b: m(b[0]).mean(0))


def test_inputs_losses_and_outputs_as_users_have_them() -> None:
    torch.manual_seed(5)
    cfg = GPTConfig(vocab=13, width=8, heads=2, layers=1, T=5, mlp=2)
    model = GPT(cfg).double()
    ids, targets, mask = token_batch(cfg, 4, seed=5)
    batch = {"ids": ids, "mask": mask}
    loss = TokenMeanCrossEntropy()
    ref = per_sample_gradients(model, loss, (ids, mask), (targets, mask))
    # dict input with a forward callable; a tuple output and a ModelOutput-like output
    tup = per_sample_gradients(model, loss, batch, (targets, mask), forward=lambda m, b: (m(b["ids"], b["mask"]), 0))

    class Out:
        def __init__(self, logits: torch.Tensor) -> None:
            self.logits = logits

    obj = per_sample_gradients(model, loss, batch, (targets, mask), forward=lambda m, b: Out(m(b["ids"], b["mask"])))
    torch.testing.assert_close(tup.gram(), ref.gram(), rtol=0, atol=0)
    torch.testing.assert_close(obj.gram(), ref.gram(), rtol=0, atol=0)
    # the token-mean per-sample loss averages to the training loss
    logits = model(ids, mask)
    train = (mask * F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")).sum() / mask.sum()
    torch.testing.assert_close(loss(logits, (targets, mask)).mean(), train)
    torch.testing.assert_close(
        ref.mean(), torch.cat([g.reshape(-1) for g in torch.autograd.grad(train, [p for p in model.parameters()])])
    )
    with pytest.raises(ConfigError, match="mask"):
        token_mean(torch.ones(2, 3), torch.zeros(2, 3))


def test_non_finite_inputs_are_named() -> None:
    model = nn.Sequential(nn.Linear(3, 2)).double()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 2, (4,))
    x[1, 2] = float("nan")
    with pytest.raises(ConfigError, match=r"^x = .*NaN or inf"):
        GradientNoise(model, CE, x, y)
    with pytest.raises(ConfigError, match=r"^x\['a'\] = "):
        per_sample_gradients(model, CE, {"a": x}, y, forward=lambda m, b: m(b["a"]))
    x[1, 2] = 0.0
    with pytest.raises(ConfigError, match=r"^y = "):
        per_sample_gradients(model, lambda o, t: ((o - t) ** 2).sum(1), x, torch.full((4, 2), float("inf")))


def test_bf16_autocast_accumulates_in_float32() -> None:
    torch.manual_seed(6)
    cfg = GPTConfig(vocab=17, width=16, heads=2, layers=1, T=6, mlp=2)
    model = GPT(cfg)
    ids, targets, mask = token_batch(cfg, 6, seed=6)
    ref = GradientNoise(model, TokenMeanCrossEntropy(), (ids, mask), (targets, mask))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = GradientNoise(model, TokenMeanCrossEntropy(), (ids, mask), (targets, mask))
        gram = half.grads.gram()
    assert gram.dtype == torch.float32 and half.grads.sq_sum().dtype == torch.float32
    rel = float((gram - ref.grads.gram()).norm() / ref.grads.gram().norm())
    assert rel < 0.05, rel  # bf16 activations (8-bit mantissa), float32 products
    assert abs(half.trace() / ref.trace() - 1) < 0.05


def test_in_place_change_of_a_layer_output_is_survived() -> None:
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Linear(3, 5),
        nn.ReLU(inplace=True),
        nn.Unflatten(1, (1, 5)),
        nn.Conv1d(1, 2, 4, padding="same"),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(10, 2),
    ).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    j = func_rows(model, lambda call, xi, yi: F.cross_entropy(call(xi[None]), yi[None]), x, y)
    assert_products(per_sample_gradients(model, CE, x, y, check=True), j, rtol=1e-9, atol=1e-12)


def test_cost_model_picks_pairs_for_short_sequences_only() -> None:
    from noiseprobe.probes.factors import use_pairs

    assert use_pairs(1000, 1, 1024, 785)  # the MLP layer: (a_i·a_j)(g_i·g_j)
    assert not use_pairs(64, 128, 256, 257)  # a transformer projection at T = 128
    assert use_pairs(64, 4, 4096, 4097)  # short sequences, wide layers


def test_an_idle_module_tied_to_a_running_one_is_not_a_consumer(recwarn) -> None:
    torch.manual_seed(8)
    model = _Shared(False).double()
    model.forward = lambda ids: model.lin(model.emb(ids)).mean(1)  # the tied head never runs
    ids, _ = _ids()
    y = torch.randint(0, 4, (6,))
    j = func_rows(model, lambda call, i, t: F.cross_entropy(call(i[None]), t[None]), ids, y)
    fac = per_sample_gradients(model, CE, ids, y, check=True)
    assert not [w for w in recwarn if "never runs" in str(w.message)]
    assert_products(fac, j, rtol=1e-9, atol=1e-12)


class _KwargsAndNoGrad(nn.Module):
    """A Linear called with a keyword input, and once more under no_grad (that call contributes nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.out = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            shift = self.fc(x).mean()
        return self.out(input=torch.tanh(self.fc(input=x)) - shift)


def test_keyword_inputs_and_calls_without_grad() -> None:
    torch.manual_seed(10)
    model = _KwargsAndNoGrad().double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,))
    shift = model.fc(x).mean().detach()  # the oracle treats the batch statistic as the constant it is

    params = dict(model.named_parameters())

    def one(p, xi, yi):
        h = torch.tanh(F.linear(xi[None], p["fc.weight"], p["fc.bias"])) - shift
        return F.cross_entropy(F.linear(h, p["out.weight"], p["out.bias"]), yi[None])

    per = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))({k: v.detach() for k, v in params.items()}, x, y)
    j = torch.cat([per[k].reshape(5, -1) for k in params], 1)
    assert_products(per_sample_gradients(model, CE, x, y, check=True), j, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["hooks", "func"])
def test_parameter_subset_by_name_module_or_parameter(method: str) -> None:
    torch.manual_seed(11)
    model = _Shared(False).double()
    ids, y = _ids()
    full = per_sample_gradients(model, CE, ids, y).dense()
    cols, o = {}, 0
    for n, p in model.named_parameters():
        cols[n] = slice(o, o + p.numel())
        o += p.numel()
    sub = per_sample_gradients(model, CE, ids, y, method=method, params=["ln", model.lin.bias, "emb.weight"])
    want = torch.cat([full[:, cols[n]] for n in ("emb.weight", "lin.bias", "ln.weight", "ln.bias")], 1)
    assert_products(sub, want, rtol=1e-9, atol=1e-12)
    with pytest.raises(ConfigError, match="params"):
        per_sample_gradients(model, CE, ids, y, params=["nope"])
    model.ln.bias.requires_grad_(False)
    with pytest.raises(ConfigError, match="requires_grad"):
        per_sample_gradients(model, CE, ids, y, params=[model.ln])


def test_half_model_and_parameter_subset_through_gradient_noise() -> None:
    torch.manual_seed(12)
    model = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(7, 5), torch.randint(0, 3, (7,))
    ref = GradientNoise(model, CE, x, y, params=[model[0]])
    assert ref.grads.num_params == 5 * 8 + 8
    half = GradientNoise(
        model.half(), lambda o, t: F.cross_entropy(o.float(), t, reduction="none"), x.half(), y, params=[model[0]]
    )
    assert half.grads.dtype == torch.float32 and half.grads.gram().dtype == torch.float32
    assert abs(half.trace() / ref.trace() - 1) < 0.01  # fp16 activations, float32 products


def test_self_check_catches_a_sequence_first_layer_when_t_equals_n() -> None:
    torch.manual_seed(13)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x = torch.randn(5, 5, 4, dtype=torch.float64)  # (T, N, F) with T = N: shapes cannot tell
    y = torch.randint(0, 2, (5,))
    fwd = lambda m, b: m(b[0]).mean(0)
    per_sample_gradients(model, CE, (x,), y, forward=fwd)  # silently groups tokens as samples ...
    with pytest.raises(ConfigError, match=r"parameter 0\.weight.*the batch is not on axis 0"):
        per_sample_gradients(model, CE, (x,), y, forward=fwd, check=True)  # ... which the weighted check sees
