"""Closed-form derivatives of the bundled losses against autograd, and the one-entry memo's invalidation."""

from __future__ import annotations

import pytest
import torch

from noiseprobe.limits import losses as Ls

X = torch.tensor([[1.0], [2.0], [-0.5]], dtype=torch.float64)
Y = torch.tensor([1.0, 0.3, 2.0], dtype=torch.float64)
CASES = {
    "circle": Ls.circle_loss,
    **{
        name: Ls.square_loss(model, X, Y)
        for name, model in (("product", Ls.product_model), ("sum", Ls.sum_model), ("parabola", Ls.parabola_model))
    },
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("d", [2, 3])
def test_closed_form_derivatives_match_autograd(name: str, d: int) -> None:
    loss = CASES[name]
    assert isinstance(loss, Ls.ClosedFormLoss)
    w = torch.randn(4, 3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
    closed = Ls.derivatives(loss, w, 3)
    auto = Ls.derivatives(lambda v: loss(v), w, 3)  # a plain function: autograd
    for k, (a, b) in enumerate(zip(closed, auto)):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), (name, k)
    assert torch.allclose(Ls.gradient(loss, w), auto[0], rtol=1e-12, atol=1e-12)
    assert torch.allclose(Ls.hessian(loss, w), auto[1], rtol=1e-12, atol=1e-12)


def test_memo_is_dropped_when_the_tensor_changes() -> None:
    w = torch.tensor([[0.3, 1.2]], dtype=torch.float64)
    g0 = Ls.circle_loss.derivs(w, 2)[0].clone()
    assert Ls.circle_loss.derivs(w, 1)[0] is Ls.circle_loss.derivs(w, 2)[0]  # same point: one evaluation
    w.add_(0.5)  # in place: a new point
    g1 = Ls.circle_loss.derivs(w, 1)[0]
    assert not torch.allclose(g0, g1)
    assert torch.allclose(g1, Ls.gradient(lambda v: Ls.circle_loss(v), w), atol=1e-14)
    assert len(Ls.circle_loss.derivs(w, 3)) == 3  # higher order: recomputed
