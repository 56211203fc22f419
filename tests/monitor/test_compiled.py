"""torch.compile'd models under the monitor: the factored path runs on the original module (no vmap fallback
warning), dynamo compiles exactly what it compiles without the monitor, and the run is bit for bit the run
without the monitor (parameters after every step, torch.equal)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn
from torch._dynamo.testing import CompileCounterWithBackend

from noiseprobe import NoiseMonitor
from noiseprobe.probes.wrappers import unwrap

LOSS = nn.CrossEntropyLoss(reduction="none")
STEPS = 6


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 3),
    )


def _batch(kind: str, g: torch.Generator) -> tuple[Tensor, Tensor]:
    x = torch.randn(8, 5, generator=g) if kind == "mlp" else torch.randn(8, 1, 7, 7, generator=g)
    return x, torch.randint(0, 3, (8,), generator=g)


def _run(kind: str, opt_name: str, backend: str, monitor: bool, nested: bool = False):
    """STEPS steps of a compiled model (``nested``: each layer with parameters compiled, as per-block
    compilation does); returns the parameters after each step, dynamo's frame compiles and the history."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _mlp() if kind == "mlp" else _cnn()
    counter = CompileCounterWithBackend(backend)
    if nested:
        for i, layer in enumerate(model):
            if any(True for _ in layer.parameters()):
                model[i] = torch.compile(layer, backend=counter)
        compiled = model
    else:
        compiled = torch.compile(model, backend=counter)
    opt_cls = torch.optim.SGD if opt_name == "sgd" else torch.optim.Adam
    opt = opt_cls(compiled.parameters(), lr=0.05)
    # sharpness (Hessian products by double backward) on the MLP; the CNN's GroupNorm has no batched double backward
    metrics = ["tr_sigma", "g_sq", "top_k_c"] + (["sharpness"] if kind == "mlp" else [])
    mon = NoiseMonitor(compiled, LOSS, every=2, metrics=metrics) if monitor else None
    g = torch.Generator().manual_seed(1)
    trace = []
    for _ in range(STEPS):
        x, y = _batch(kind, g)
        opt.zero_grad()
        LOSS(compiled(x), y).mean().backward()
        if mon is not None:
            mon.step((x, y), opt)
        opt.step()
        trace.append([p.detach().clone() for p in model.parameters()])
    return trace, counter.frame_count, None if mon is None else mon.history


@pytest.mark.parametrize("kind, opt_name", [("mlp", "sgd"), ("mlp", "adam"), ("cnn", "sgd"), ("cnn", "adam")])
def test_compiled_run_is_bit_identical_and_compiles_nothing_more(kind: str, opt_name: str) -> None:
    plain, frames, _ = _run(kind, opt_name, "aot_eager", monitor=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "per-sample gradients")  # no vmap fallback
        watched, frames_watched, history = _run(kind, opt_name, "aot_eager", monitor=True)
    assert frames_watched == frames == 1
    assert len(history) == STEPS // 2 and history["tr_sigma"].gt(0).all() and history["c_eig_1"].gt(0).all()
    assert kind == "cnn" or history["sharpness"].gt(0).all()
    for a, b in zip(plain, watched):
        assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_compiled_submodules() -> None:
    """Layers compiled one by one inside an eager model: they run eagerly while measured, nothing recompiles."""
    plain, frames, _ = _run("cnn", "adam", "aot_eager", monitor=False, nested=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "per-sample gradients")
        watched, frames_watched, history = _run("cnn", "adam", "aot_eager", monitor=True, nested=True)
    assert frames_watched == frames >= 1 and history["tr_sigma"].gt(0).all()
    assert all(torch.equal(p, q) for a, b in zip(plain, watched) for p, q in zip(a, b))


def test_compiled_measurement_equals_the_original_module() -> None:
    torch.manual_seed(0)
    model = _cnn()
    x, y = _batch("cnn", torch.Generator().manual_seed(3))
    compiled = torch.compile(model, backend="eager")
    assert unwrap(nn.DataParallel(compiled)) is model
    rows = [NoiseMonitor(m, LOSS, metrics=["tr_sigma", "g_sq"]).measure((x, y)) for m in (model, compiled)]
    assert rows[0]["tr_sigma"] == rows[1]["tr_sigma"] and rows[0]["g_sq"] == rows[1]["g_sq"]


@pytest.mark.slow
def test_inductor_compiled_cnn_is_bit_identical() -> None:
    plain, frames, _ = _run("cnn", "adam", "inductor", monitor=False)
    watched, frames_watched, _ = _run("cnn", "adam", "inductor", monitor=True)
    assert frames_watched == frames == 1
    assert all(torch.equal(p, q) for a, b in zip(plain, watched) for p, q in zip(a, b))
