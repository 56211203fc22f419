"""Factored per-sample gradients of the models people train against dense float64 vmap(grad) of a per-sample
loss written for one sample (tests/probes/oracle.py), and against Opacus."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from noiseprobe.core.errors import ConfigError
from noiseprobe.models import GPT, GPTConfig, small_cnn, small_resnet, token_batch
from noiseprobe.probes import factors
from noiseprobe.probes.factors import OuterFactor, RowsFactor
from noiseprobe.probes.persample import HookFactors, per_sample_gradients
from noiseprobe.probes.rules.conv import StreamedConvFactor
from noiseprobe.probes.sample_losses import TokenMeanCrossEntropy
from tests.probes.oracle import DEVICES, assert_products, func_rows

CE = nn.CrossEntropyLoss(reduction="none")


def _gpt_problem(device: str, dtype: torch.dtype):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab=23, width=8, heads=2, layers=2, T=7, mlp=2)
    model = GPT(cfg).to(device, dtype)
    ids, targets, mask = token_batch(cfg, 5, seed=3, device=device)
    total = mask.sum()

    def loss_one(call, ids_i, targets_i, mask_i):  # ℓ_i = N Σ_t m_it ce_it / Σ m, written for one sample
        logits = call(ids_i[None], mask_i[None])[0]
        return 5 * (mask_i * F.cross_entropy(logits, targets_i, reduction="none")).sum() / total

    j = func_rows(model, loss_one, ids, targets, mask)
    return model, (ids, mask), (targets, mask), j


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pairs", [True, False])
def test_gpt_decoder_padded_tied_head(device: str, pairs: bool, monkeypatch) -> None:
    model, x, y, j = _gpt_problem(device, torch.float64)
    monkeypatch.setattr(factors, "use_pairs", lambda *a: pairs)  # both sides of the cost model
    monkeypatch.setattr(factors, "CHUNK", 97)  # many chunks of output rows / of samples
    fac = per_sample_gradients(model, TokenMeanCrossEntropy(), x, y, check=True)
    assert isinstance(fac, HookFactors)
    assert all(isinstance(f, OuterFactor) for ps, f in fac.blocks if ps[0].dim() == 2)  # tied head + embedding too
    # one block per unit: tok + tied head (one token axis), pos, 8 per layer (weight + bias together), final LN
    assert len(fac.blocks) == 2 + 8 * 2 + 1
    assert_products(fac, j, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_gpt_decoder_float32_and_func_method(device: str) -> None:
    model64, x, y, j = _gpt_problem(device, torch.float64)
    model = model64.float()
    fac = per_sample_gradients(model, TokenMeanCrossEntropy(), x, y)
    assert fac.gram().dtype == torch.float32 and fac.gram().device.type == device
    assert_products(fac, j.float(), rtol=2e-3, atol=2e-5)
    func = per_sample_gradients(model, TokenMeanCrossEntropy(), x, y, method="func")
    torch.testing.assert_close(func.dense(), j.float(), rtol=2e-3, atol=2e-5 * float(j.abs().max()))


class _MHANet(nn.Module):
    """Embedding → self-attention (nn.MultiheadAttention with a key padding mask) → LayerNorm → mean → Linear."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.emb = nn.Embedding(11, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.ln = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        if not self.batch_first:
            h = h.transpose(0, 1)
        causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool, device=ids.device).triu(1)
        a, _ = self.attn(h, h, h, key_padding_mask=pad, attn_mask=causal)
        if not self.batch_first:
            a = a.transpose(0, 1)
        return self.head(self.ln(a + self.emb(ids)).mean(1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention(device: str, batch_first: bool, recwarn) -> None:
    torch.manual_seed(1)
    model = _MHANet(batch_first).to(device).double()
    g = torch.Generator().manual_seed(2)
    ids, y = torch.randint(0, 11, (6, 5), generator=g).to(device), torch.randint(0, 3, (6,), generator=g).to(device)
    pad = torch.zeros(6, 5, dtype=torch.bool, device=device)
    pad[:3, 4:] = True

    def loss_one(call, ids_i, pad_i, y_i):
        return F.cross_entropy(call(ids_i[None], pad_i[None]), y_i[None])

    j = func_rows(model, loss_one, ids, pad, y)
    fac = per_sample_gradients(model, CE, (ids, pad), y, check=True)
    assert_products(fac, j, rtol=1e-9, atol=1e-12)
    assert not [w for w in recwarn if "no layer rule" in str(w.message)]  # MHA has its own rule


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_cnn_every_conv_option_and_groupnorm(dim: int) -> None:
    torch.manual_seed(dim)
    model = small_cnn(dim, channels=2, classes=3, width=4).double()
    g = torch.Generator().manual_seed(dim)
    x = torch.randn(4, 2, *([6] * dim), generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (4,), generator=g)
    j = func_rows(model, lambda call, xi, yi: F.cross_entropy(call(xi[None]), yi[None]), x, y)
    fac = per_sample_gradients(model, CE, x, y, check=True)
    assert all(isinstance(f, (RowsFactor, OuterFactor, StreamedConvFactor)) for _, f in fac.blocks)
    assert_products(fac, j, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_resnet_block_batchnorm_eval(device: str) -> None:
    torch.manual_seed(4)
    model = small_resnet(channels=2, width=4).to(device).double()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 2, 6, 6, generator=g, dtype=torch.float64).to(device)
    y = torch.randint(0, 5, (5,), generator=g).to(device)
    model.train()
    for _ in range(2):  # running statistics away from (0, 1)
        model(x + 1.5)
    with pytest.raises(ConfigError, match=r"model\.1 = 'BatchNorm2d in training mode'.*eval mode.*GroupNorm"):
        per_sample_gradients(model, CE, x, y)
    model.eval()
    j = func_rows(model, lambda call, xi, yi: F.cross_entropy(call(xi[None]), yi[None]), x, y)
    assert_products(per_sample_gradients(model, CE, x, y, check=True), j, rtol=1e-9, atol=1e-12)


def test_batchnorm_1d_3d_eval_and_without_running_stats() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv1d(2, 3, 3),
        nn.BatchNorm1d(3),
        nn.Flatten(),
        nn.Linear(12, 6),
        nn.Unflatten(1, (1, 1, 1, 6)),
        nn.BatchNorm3d(1),
        nn.Flatten(),
        nn.Linear(6, 2),
    ).double()
    x, y = torch.randn(8, 2, 6, dtype=torch.float64), torch.randint(0, 2, (8,))
    model.train()
    model(x * 2 + 1)
    model.eval()
    j = func_rows(model, lambda call, xi, yi: F.cross_entropy(call(xi[None]), yi[None]), x, y)
    assert_products(per_sample_gradients(model, CE, x, y), j, rtol=1e-9, atol=1e-12)
    model[1] = nn.BatchNorm1d(3, track_running_stats=False).double().eval()
    with pytest.raises(ConfigError, match="without running statistics"):
        per_sample_gradients(model, CE, x, y)


def test_transformers_gpt2_tiny_random() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(6)
    cfg = transformers.GPT2Config(
        vocab_size=31, n_positions=8, n_embd=8, n_layer=2, n_head=2, attn_implementation="eager"
    )
    model = transformers.GPT2LMHeadModel(cfg).double().eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(0, 31, (4, 6), generator=g)
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[1, 4:] = mask[3, 3:] = 0
    total = mask[:, 1:].sum()

    def loss_fn(logits, batch):  # next-token token-mean over real tokens
        return TokenMeanCrossEntropy()(logits[:, :-1], (batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:]))

    def loss_one(call, ids_i, mask_i):
        logits = call(input_ids=ids_i[None], attention_mask=mask_i[None]).logits[0, :-1]
        return 4 * (mask_i[1:] * F.cross_entropy(logits, ids_i[1:], reduction="none")).sum() / total

    j = func_rows(model, loss_one, ids, mask)
    batch = {"input_ids": ids, "attention_mask": mask}
    fac = per_sample_gradients(model, loss_fn, batch, batch, check=True)
    assert any(type(m).__name__ == "Conv1D" for m in model.modules())
    assert_products(fac, j, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family", ["llama", "gemma", "t5"])
def test_transformers_rms_norms_are_factored(family: str) -> None:
    """Llama-, Gemma- and T5-style RMS norms (y = w∘x̂, y = (1 + w)∘x̂) get the factored rule (no vmap
    fall-back warning) and equal dense per-sample gradients; Llama's head is tied to its embedding."""
    transformers = pytest.importorskip("transformers")
    from noiseprobe.probes.rules import rule_for
    from noiseprobe.probes.rules.norm import HFRMSNormRule

    torch.manual_seed(8)
    if family == "t5":
        from transformers.models.t5.modeling_t5 import T5LayerNorm

        model = nn.Sequential(nn.Linear(5, 6), T5LayerNorm(6, eps=1e-5), nn.Tanh(), nn.Linear(6, 3)).double()
        with torch.no_grad():
            model[1].weight.uniform_(0.5, 1.5)
        x, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
        j = func_rows(model, lambda call, xi, yi: F.cross_entropy(call(xi[None]), yi[None]), x, y)
        loss_fn, inputs, targets = CE, x, y
    else:
        make = transformers.LlamaConfig if family == "llama" else transformers.GemmaConfig
        cfg = make(
            vocab_size=29,
            hidden_size=8,
            intermediate_size=12,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=4,
            max_position_embeddings=16,
            tie_word_embeddings=True,
            attn_implementation="eager",
        )
        model = (transformers.LlamaForCausalLM if family == "llama" else transformers.GemmaForCausalLM)(cfg)
        model = model.double().eval()
        with torch.no_grad():  # Gemma's norms start at w = 0 ((1 + w) scaling): make them informative
            for m in model.modules():
                if type(m).__name__.endswith("RMSNorm"):
                    m.weight.uniform_(-0.5, 0.5)
        g = torch.Generator().manual_seed(8)
        ids = torch.randint(0, 29, (3, 6), generator=g)

        def loss_fn(logits, ids_):  # next-token mean over positions
            return F.cross_entropy(logits[:, :-1].transpose(1, 2), ids_[:, 1:], reduction="none").mean(1)

        j = func_rows(model, lambda call, ids_i: loss_fn(call(input_ids=ids_i[None]).logits, ids_i[None])[0], ids)
        inputs, targets = {"input_ids": ids}, ids
        model_forward = model

        def forward(m, batch):
            return m(**batch).logits

    norms = [m for m in model.modules() if type(m).__name__.endswith(("RMSNorm", "LayerNorm"))]
    assert norms and all(isinstance(rule_for(m), HFRMSNormRule) for m in norms)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if family == "t5":
            fac = per_sample_gradients(model, loss_fn, inputs, targets)
        else:
            fac = per_sample_gradients(model_forward, loss_fn, inputs, targets, forward=forward)
    assert not [w for w in caught if "Norm" in str(w.message)]  # no vmap fall-back for a norm
    # these classes normalise in float32 even in a float64 model: agreement to float32 rounding
    assert_products(fac, j, rtol=1e-5, atol=1e-7)


def test_against_opacus() -> None:
    opacus = pytest.importorskip("opacus")
    torch.manual_seed(7)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(9, 4)
            self.conv = nn.Conv1d(4, 6, 3, padding=1)
            self.gn = nn.GroupNorm(2, 6)
            self.ln = nn.LayerNorm(6)
            self.fc = nn.Linear(6, 3)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = self.gn(self.conv(self.emb(ids).transpose(1, 2))).transpose(1, 2)
            return self.fc(torch.tanh(self.ln(h))).mean(1)

    g = torch.Generator().manual_seed(7)
    images = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2),
        nn.GroupNorm(2, 4),
        nn.Tanh(),
        nn.Conv2d(4, 3, 2, dilation=2),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 3),
    )
    for model, x in (
        (Net(), torch.randint(0, 9, (6, 5), generator=g)),
        (images, torch.randn(6, 2, 12, 12, generator=g, dtype=torch.float64)),
    ):
        model = model.double()
        y = torch.randint(0, 3, (6,), generator=g)
        ours = per_sample_gradients(model, CE, x, y).dense()
        gsm = opacus.GradSampleModule(model, loss_reduction="sum")
        CE(gsm(x), y).sum().backward()
        theirs = torch.cat([p.grad_sample.reshape(6, -1) for p in model.parameters()], 1)
        gsm._close()
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


class _Norms(nn.Module):
    """Embedding with padding_idx, RMSNorm, LayerNorm without bias over two axes, a Linear on (N, T, F)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(9, 6, padding_idx=0)
        self.rms = nn.RMSNorm(6, eps=1e-5)
        self.ln = nn.LayerNorm((3, 6), bias=False)
        self.fc = nn.Linear(6, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.rms(self.emb(ids)))
        return self.fc(self.ln(h.reshape(h.shape[0], -1, 3, 6))).mean((1, 2))


@pytest.mark.parametrize("device", DEVICES)
def test_rmsnorm_layernorm_and_embedding_padding_idx(device: str) -> None:
    torch.manual_seed(9)
    model = _Norms().to(device).double()
    g = torch.Generator().manual_seed(9)
    ids = torch.randint(0, 9, (5, 6), generator=g).to(device)
    ids[:, -2:] = 0  # padding tokens: row 0 of the embedding gets no gradient
    y = torch.randint(0, 2, (5,), generator=g).to(device)
    j = func_rows(model, lambda call, i, t: F.cross_entropy(call(i[None]), t[None]), ids, y)
    fac = per_sample_gradients(model, CE, ids.int(), y, check=True)  # int32 ids as well as int64
    assert_products(fac, j, rtol=1e-9, atol=1e-12)
    assert fac.dense()[:, :6].abs().max() == 0  # padding_idx row


class _Forward(nn.Module):
    """``fn(model, batch)`` as a module (for the vmap(grad) oracle)."""

    def __init__(self, model: nn.Module, fn) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model, batch)


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_layer(batch_first: bool) -> None:
    """nn.TransformerEncoderLayer (MHA through fused SDPA, Linear on (N, T, F), LayerNorm, dropout in eval):
    factored when batch-first; sequence-first refused in one line and exact by method='func'."""
    torch.manual_seed(10)
    model = nn.ModuleList([nn.TransformerEncoderLayer(8, 2, 16, batch_first=batch_first), nn.Linear(8, 3)])
    model = model.double().eval()
    g = torch.Generator().manual_seed(10)
    x, y = torch.randn(5, 4, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (5,), generator=g)

    def fwd(m: nn.Module, b: torch.Tensor) -> torch.Tensor:
        h = m[0](b) if batch_first else m[0](b.transpose(0, 1)).transpose(0, 1)
        return m[1](h.mean(1))

    j = func_rows(_Forward(model, fwd), lambda call, xi, yi: F.cross_entropy(call(xi[None]), yi[None]), x, y)
    func = per_sample_gradients(model, CE, x, y, forward=fwd, method="func", check=True)
    assert_products(func, j, rtol=1e-9, atol=1e-12)
    if not batch_first:
        # the first layer reached by the backward pass is named (norm2 here; linear1 is as sequence-first)
        with pytest.raises(ConfigError, match=r"model\.0\.\w+ = 'input of shape \(4, 5, 8\)'.*method='func'"):
            per_sample_gradients(model, CE, x, y, forward=fwd)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no vmap fallback warning from fused attention kernels either
        fac = per_sample_gradients(model, CE, x, y, forward=fwd, check=True)
    assert_products(fac, j, rtol=1e-9, atol=1e-12)


def test_streamed_conv_factor_matches_dense_per_sample_gradients() -> None:
    """Deep convolutions on a small spatial grid keep x and g, not the rows (N·P_layer > |x| + |g|):
    every product, the position-pair Gram included, equals torch.func's per-sample gradients (bias too)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, padding_mode="reflect"),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, 3),
    ).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (5,), generator=g)
    j = func_rows(model, lambda call, xi, yi: F.cross_entropy(call(xi[None]), yi[None]), x, y)
    fac = per_sample_gradients(model, CE, x, y, check=True)
    streamed = [f for _, f in fac.blocks if isinstance(f, StreamedConvFactor)]
    # the 4×4 reflect-padded conv forms explicit rows, the strided one (2×2 outputs) position pairs
    assert [f._pair_gram() is not None for f in streamed] == [False, True]
    assert_products(fac, j, rtol=1e-9, atol=1e-12)


def test_func_method_on_a_flattened_output_says_how_to_unflatten() -> None:
    """A language model returning (N·T, V) logits: method="func" names the fix, and the fix it names gives
    the per-sample gradients of the hooks path (which takes the flattened output as it is)."""
    import noiseprobe as npb

    class FlatLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.out = nn.Embedding(11, 4), nn.Linear(4, 11)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.out(self.emb(ids)).reshape(-1, 11)

    torch.manual_seed(9)
    model = FlatLM().double()
    ids = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(9))

    def flat_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y.reshape(-1), reduction="none").reshape(len(y), -1).mean(1)

    with pytest.raises(ConfigError, match=r"looks flattened, 3 × 5 rows.*unflatten\(0, \(len\(x\), -1\)\)"):
        per_sample_gradients(model, flat_loss, ids, ids, method="func")
    fixed = per_sample_gradients(
        model,
        npb.TokenMeanCrossEntropy(),
        ids,
        ids,
        method="func",
        forward=lambda m, x: m(x).unflatten(0, (len(x), -1)),
    )
    hooks = per_sample_gradients(model, flat_loss, ids, ids)
    torch.testing.assert_close(fixed.gram(), hooks.gram(), rtol=1e-10, atol=1e-12)
