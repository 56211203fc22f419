"""The streamed backward pass (`stream_factors`, `per_sample_grams`) and the per-layer forms of a convolution's
Gram matrix, against dense float64 per-sample gradients (torch.func, tests/probes/oracle.py)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from noiseprobe.probes.capture import Root, capture, default_forward
from noiseprobe.probes.factors import Factor, RowsFactor
from noiseprobe.probes.persample import per_sample_gradients, per_sample_grams, stream_factors
from noiseprobe.probes.rules import conv
from noiseprobe.probes.rules.conv import StreamedConvFactor
from tests.probes.oracle import func_rows

CE = nn.CrossEntropyLoss(reduction="none")


class ConvNet(nn.Module):
    """One convolution per Gram form (N = 5, 8×8 inputs; the comments give the cost model's choice) and a
    grouped 1×1 convolution applied twice (shared parameters: summed per sample before any Gram)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # N·P ≤ |x| + |g|: explicit rows, kept
        self.streamed = nn.Conv2d(8, 8, 3, padding=1)  # 4×4, out ≤ S: rows formed by sample chunks
        self.valid = nn.Conv2d(8, 8, 2)  # 4×4 → 3×3, the same
        self.channels = nn.Conv2d(8, 16, 3, padding=1)  # 3×3, out > S: explicit Gram by channel chunks
        self.pairs = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False)  # 2×2 outputs: position pairs
        self.grouped = nn.Conv2d(16, 16, 1, groups=4)  # grouped weight-gradient kernel, used twice
        self.head = nn.Linear(64, 3)

    def forward(self, x: Tensor) -> Tensor:
        for layer in (self.rows, self.streamed, self.valid, self.channels, self.pairs):
            x = torch.tanh(layer(x))
        x = self.grouped(torch.tanh(self.grouped(x)))
        return self.head(x.flatten(1))


def _problem() -> tuple[ConvNet, Tensor, Tensor]:
    torch.manual_seed(0)
    model = ConvNet().double()
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(5, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (5,), generator=g)


def _form(f: Factor) -> str:
    if isinstance(f, RowsFactor):
        return "rows"
    assert isinstance(f, StreamedConvFactor)
    return "pairs" if f._pair_gram() is not None else "channels" if f._channel_gram() is not None else "chunked rows"


def _columns(model: nn.Module) -> dict[str, slice]:
    out, o = {}, 0
    for name, p in model.named_parameters():
        module = name.rsplit(".", 1)[0]
        start = out[module].start if module in out else o
        o += p.numel()
        out[module] = slice(start, o)
    return out


def test_each_conv_form_gives_the_dense_gram(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 500 numbers (one sample or one output channel per chunk here, the pair block of D within
    it): every layer's Gram, by the form the cost model picks, equals J_l J_lᵀ of the dense per-sample
    gradients; streamed per layer (per_sample_grams) and from kept factors (per_sample_gradients)."""
    monkeypatch.setattr(conv, "CHUNK", 500)
    model, x, y = _problem()
    j = func_rows(model, lambda call, xi, yi: F.cross_entropy(call(xi[None]), yi[None]), x, y)
    fac = per_sample_gradients(model, CE, x, y, check=True)
    names = {id(p): n.rsplit(".", 1)[0] for n, p in model.named_parameters()}
    forms = {names[id(ps[0])]: _form(f) for ps, f in fac.blocks if names[id(ps[0])] != "head"}
    assert forms == {
        "rows": "rows",
        "streamed": "chunked rows",
        "valid": "chunked rows",
        "channels": "channels",
        "pairs": "pairs",
        "grouped": "rows",  # two calls: summed explicit rows
    }
    grams = per_sample_grams(model, CE, x, y, key=names)
    assert set(grams) == set(_columns(model))
    for module, cols in _columns(model).items():
        ref = j[:, cols] @ j[:, cols].T
        torch.testing.assert_close(grams[module], ref, rtol=1e-10, atol=1e-12 * float(ref.abs().max()))
    total = per_sample_grams(model, CE, x, y)
    assert list(total) == [""]
    torch.testing.assert_close(total[""], j @ j.T, rtol=1e-10, atol=0.0)
    torch.testing.assert_close(fac.gram(), j @ j.T, rtol=1e-10, atol=0.0)


def test_the_backward_pass_releases_each_layer_before_the_next() -> None:
    """No unit output is kept after the forward pass (meta stand-ins), and when a layer's factor is built
    every layer after it in the forward order has already been consumed and released (its inputs dropped):
    one layer's tensors beyond what autograd itself holds, never all of them."""
    model, x, y = _problem()
    root = Root(model, default_forward)
    units, losses = capture(root, {id(p) for p in model.parameters()}, CE, x, y, set(), None)
    calls = [c for u in units for c in u.calls]
    assert all(o.device.type == "meta" for c in calls for o in c.outputs)
    order = {id(c): i for i, c in enumerate(calls)}
    held_after: list[list[int]] = []

    def consume(i: int, ps: list[Tensor], f: Factor) -> None:
        held_after.append([k for k, c in enumerate(calls) if k > i and c.args])

    stream_factors(units, losses, 5, consume)
    assert len(held_after) == len(order) and all(h == [] for h in held_after)
    assert all(c.args == () and c.grads == [] for c in calls)
