"""Per-sample gradients of nn.LSTM / nn.GRU / nn.RNN (probes/rules/recurrent.py) against two independent
references: N backward passes of ℓ_i through the whole batch (autograd, torch's own recurrent kernels), and
for batch-independent losses each sample run alone as a batch of one."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from noiseprobe.core.errors import ConfigError, NoPerSampleGradients
from noiseprobe.probes.factors import OuterFactor
from noiseprobe.probes.persample import per_sample_gradients
from noiseprobe.probes.sample_losses import TokenMeanCrossEntropy
from tests.probes.oracle import assert_products

CE = nn.CrossEntropyLoss(reduction="none")


def loop_rows(model: nn.Module, loss_fn, x, y, forward=None) -> Tensor:
    """J (N, P): one autograd backward pass of each ℓ_i through the batch's forward pass."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = forward(model, x) if forward else model(*x) if isinstance(x, tuple) else model(x)
    losses = loss_fn(out, y)
    rows = []
    for i in range(losses.shape[0]):
        gs = torch.autograd.grad(losses[i], params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(gs, params)]))
    return torch.stack(rows)


def alone_rows(model: nn.Module, loss_fn, x: Tensor, y: Tensor) -> Tensor:
    """J (N, P): each sample run alone, as a batch of one."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        gs = torch.autograd.grad(loss_fn(model(x[i : i + 1]), y[i : i + 1]).sum(), params)
        rows.append(torch.cat([g.reshape(-1) for g in gs]))
    return torch.stack(rows)


class Probe(nn.Module):
    """A recurrent layer read through output, h_n and c_n, with optional packing and initial states."""

    def __init__(self, rnn: nn.RNNBase, packed: bool, h0: bool) -> None:
        super().__init__()
        self.rnn, self.packed, self.h0 = rnn, packed, h0

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        rnn, n = self.rnn, x.shape[0]
        inp: Tensor | nn.utils.rnn.PackedSequence = x if rnn.batch_first else x.transpose(0, 1)
        if self.packed:
            inp = pack_padded_sequence(inp, lengths, batch_first=rnn.batch_first, enforce_sorted=False)
        args: tuple = (inp,)
        if self.h0:
            layers = rnn.num_layers * (2 if rnn.bidirectional else 1)
            size = getattr(rnn, "proj_size", 0) or rnn.hidden_size
            h0 = torch.sin(torch.arange(layers * n * size, dtype=x.dtype)).reshape(layers, n, size)
            c0 = torch.cos(torch.arange(layers * n * rnn.hidden_size, dtype=x.dtype)).reshape(layers, n, -1)
            args = (inp, (h0, c0) if isinstance(rnn, nn.LSTM) else h0)
        out, h = rnn(*args)
        if self.packed:
            out = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
        elif not rnn.batch_first:
            out = out.transpose(0, 1)
        hn, cn = (h[0], h[1].sum((0, 2))) if isinstance(h, tuple) else (h, 0)
        return out.sum(2) * 0.3 + 0.1 * hn.sum((0, 2))[:, None] ** 2 + 0.2 * torch.as_tensor(cn)[..., None]


def _mse(out: Tensor, y: Tensor) -> Tensor:
    return ((out - y) ** 2).mean(1)


# every flag on and off across the rows: batch_first, layers, bidirectional, packed, initial states, proj_size
CONFIGS = [
    (nn.LSTM, True, 1, False, False, False, 0),
    (nn.LSTM, False, 2, True, True, True, 0),
    (nn.LSTM, True, 3, True, False, True, 2),
    (nn.LSTM, False, 1, False, True, False, 2),
    (nn.GRU, True, 2, True, True, False, 0),
    (nn.GRU, False, 3, False, False, True, 0),
    (nn.GRU, True, 1, True, True, True, 0),
    (nn.RNN, False, 2, True, False, False, 0),
    (nn.RNN, True, 1, False, True, True, 0),
    (nn.RNN, True, 3, True, True, True, 0),
]


@pytest.mark.parametrize("cls, batch_first, layers, bidir, packed, h0, proj", CONFIGS)
def test_recurrent_configurations_float64(cls, batch_first, layers, bidir, packed, h0, proj) -> None:
    torch.manual_seed(0)
    extra = {"proj_size": proj} if proj else {"nonlinearity": "relu"} if cls is nn.RNN and layers == 3 else {}
    rnn = cls(3, 4, num_layers=layers, batch_first=batch_first, bidirectional=bidir, **extra).double()
    model, lengths = Probe(rnn, packed, h0), torch.tensor([6, 2, 5, 1, 6])
    x, y = torch.randn(5, 6, 3, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    forward = lambda m, xx: m(xx, lengths)  # noqa: E731
    fac = per_sample_gradients(model, _mse, x, y, forward=forward, check=True)
    assert all(isinstance(f, OuterFactor) for _, f in fac.blocks)
    j = loop_rows(model, _mse, x, y, forward)
    assert float((fac.dense() - j).norm() / j.norm()) < 1e-6
    assert_products(fac, j, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_float32_within_1e_4(cls) -> None:
    torch.manual_seed(1)
    rnn = cls(3, 5, num_layers=2, batch_first=True, bidirectional=True)
    model, lengths = Probe(rnn, True, True), torch.tensor([4, 7, 1, 7, 3, 2])
    x, y = torch.randn(6, 7, 3), torch.randn(6, 7)
    forward = lambda m, xx: m(xx, lengths)  # noqa: E731
    fac = per_sample_gradients(model, _mse, x, y, forward=forward)
    j = loop_rows(model.double(), _mse, x.double(), y.double(), forward)  # float64 truth
    assert fac.gram().dtype == torch.float32
    assert float((fac.dense().double() - j).norm() / j.norm()) < 1e-4
    assert float((fac.gram().double() - j @ j.T).norm() / (j @ j.T).norm()) < 1e-4


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab: int = 17, width: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width, padding_idx=0)
        self.lstm = nn.LSTM(width, width, num_layers=2, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.lstm(self.emb(ids))[0])


def test_lstm_language_model_padded_token_mean_in_train_mode() -> None:
    """Embedding → 2-layer LSTM → Linear on integer tokens with right padding, token-mean cross-entropy,
    training mode with dropout 0."""
    torch.manual_seed(2)
    model = LSTMLanguageModel().double().train()
    n, t = 6, 9
    lengths = torch.tensor([9, 3, 7, 1, 9, 5])
    mask = torch.arange(t)[None] < lengths[:, None]
    ids = torch.randint(1, 17, (n, t)) * mask
    targets = torch.randint(0, 17, (n, t))
    loss = TokenMeanCrossEntropy()
    fac = per_sample_gradients(model, loss, ids, (targets, mask), check=True)
    j = loop_rows(model, loss, ids, (targets, mask))
    assert float((fac.dense() - j).norm() / j.norm()) < 1e-6
    assert_products(fac, j, rtol=1e-9, atol=1e-12)


class GRUClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 6, batch_first=True)
        self.out = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.gru(x)[1][-1])


def test_gru_classifier_against_samples_run_alone() -> None:
    torch.manual_seed(3)
    model = GRUClassifier().double().eval()
    x, y = torch.randn(7, 5, 4, dtype=torch.float64), torch.randint(0, 3, (7,))
    fac = per_sample_gradients(model, CE, x, y)
    j = alone_rows(model, CE, x, y)
    assert float((fac.dense() - j).norm() / j.norm()) < 1e-6
    assert_products(fac, j, rtol=1e-9, atol=1e-12)


class PackedTagger(nn.Module):
    """A bidirectional 2-layer LSTM over packed variable-length sequences, a linear tagger per step."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 5, num_layers=2, bidirectional=True)  # sequence-first
        self.out = nn.Linear(10, 2)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        packed = pack_padded_sequence(x.transpose(0, 1), lengths, enforce_sorted=False)
        out = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=x.shape[1])[0]
        return self.out(out)


def test_bidirectional_packed_lstm_against_samples_run_alone() -> None:
    torch.manual_seed(4)
    model = PackedTagger().double()
    n, t = 6, 8
    lengths = torch.tensor([8, 2, 5, 1, 8, 4])
    mask = (torch.arange(t)[None] < lengths[:, None]).double()
    x, y = torch.randn(n, t, 3, dtype=torch.float64) * mask[..., None], torch.randint(0, 2, (n, t))

    def loss(out: Tensor, yy: tuple[Tensor, Tensor]) -> Tensor:  # per-sequence mean over its own tokens
        return (F.cross_entropy(out.transpose(1, 2), yy[0], reduction="none") * yy[1]).sum(1) / yy[1].sum(1)

    fac = per_sample_gradients(model, loss, (x, lengths), (y, mask), check=True)
    params = list(model.parameters())
    rows = []
    for i in range(n):  # sample i alone, unpadded: torch's own kernel on a length-lengths[i] sequence
        k = int(lengths[i])
        li = loss(model(x[i : i + 1, :k], lengths[i : i + 1]), (y[i : i + 1, :k], mask[i : i + 1, :k]))
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(li.sum(), params)]))
    j = torch.stack(rows)
    assert float((fac.dense() - j).norm() / j.norm()) < 1e-6
    assert_products(fac, j, rtol=1e-9, atol=1e-12)


def test_as_many_layers_as_samples() -> None:
    """num_layers == N: the initial states' axis 0 has length N, which made the vmap fallback fail."""
    torch.manual_seed(5)
    rnn = nn.GRU(3, 4, num_layers=3, batch_first=True).double()
    model, lengths = Probe(rnn, False, True), torch.full((3,), 4)
    x, y = torch.randn(3, 4, 3, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    forward = lambda m, xx: m(xx, lengths)  # noqa: E731
    fac = per_sample_gradients(model, _mse, x, y, forward=forward)
    j = loop_rows(model, _mse, x, y, forward)
    assert float((fac.dense() - j).norm() / j.norm()) < 1e-6


def test_parameter_subset_and_no_bias() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.LSTM(3, 4, bias=False, batch_first=True))
    model.append(nn.Identity())
    x, y = torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    model = model.double()

    def fwd(m: nn.Module, xx: Tensor) -> Tensor:
        return m[0](xx)[0].sum(2)

    fac = per_sample_gradients(model, _mse, x, y, forward=fwd, params=["0.weight_hh_l0"])
    full = loop_rows(model, _mse, x, y, fwd)
    assert torch.allclose(fac.dense(), full[:, 48:112], rtol=1e-9, atol=1e-12)  # weight_ih (16×3) then weight_hh (16×4)


def test_dropout_in_training_mode_is_not_per_sample_measurable() -> None:
    model = LSTMLanguageModel()
    model.lstm.dropout = 0.3
    ids, targets = torch.randint(1, 17, (4, 6)), torch.randint(0, 17, (4, 6))
    with pytest.raises(NoPerSampleGradients) as err:
        per_sample_gradients(model.train(), TokenMeanCrossEntropy(), ids, targets)
    assert (
        err.value.module == "model.lstm" and "dropout=0.3" in err.value.reason and "training mode" in err.value.reason
    )
    assert isinstance(err.value, ConfigError) and "\n" not in str(err.value)
    assert pickle.loads(pickle.dumps(err.value)).module == "model.lstm"
    per_sample_gradients(model.eval(), TokenMeanCrossEntropy(), ids, targets)  # eval mode: dropout off, measured


def test_unbatched_input_is_refused() -> None:
    rnn = nn.GRU(3, 4)
    with pytest.raises(ConfigError, match="batched 3-D input"):
        per_sample_gradients(rnn, lambda o, y: (o - y).pow(2).mean(1), torch.randn(5, 3), torch.randn(5, 4))


class TwiceApplied(nn.Module):
    """One LSTM applied twice (shared weights: the calls' factors are summed per sample), the first call on a
    packed batch sorted by length (enforce_sorted=True), the second on its padded output with (h_n, c_n)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 4, batch_first=True)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        out, state = self.lstm(pack_padded_sequence(x, lengths, batch_first=True))
        out = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
        return self.lstm(out, state)[0].sum(2)


def test_lstm_applied_twice_sums_its_calls() -> None:
    torch.manual_seed(7)
    model, lengths = TwiceApplied().double(), torch.tensor([5, 4, 4, 2])
    x, y = torch.randn(4, 5, 4, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    forward = lambda m, xx: m(xx, lengths)  # noqa: E731
    fac = per_sample_gradients(model, _mse, x, y, forward=forward, check=True)
    assert len(fac.blocks) == 2  # per weight group, the two calls joined into one longer token axis
    j = loop_rows(model, _mse, x, y, forward)
    assert_products(fac, j, rtol=1e-9, atol=1e-12)
