"""Operators on flat parameter vectors against dense float64 matrices from torch.func at small size."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import eigsh
from torch import nn
from torch.func import functional_call, hessian, jacrev

from noiseprobe.core.errors import ConfigError
from noiseprobe.models import GPT, GPTConfig
from noiseprobe.probes.operators import (
    EmpiricalFisher,
    GaussNewton,
    Hessian,
    NoiseCovariance,
    ParamOperator,
    batch_factor,
)
from noiseprobe.probes.persample import select_parameters
from noiseprobe.probes.sample_losses import TokenMeanCrossEntropy
from tests.probes.oracle import DEVICES

CE = nn.CrossEntropyLoss(reduction="none")


def token_ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sequence token-mean cross-entropy, (N,)."""
    return CE(out.transpose(1, 2), y).mean(1)


def _mlp(n: int = 10, device: str = "cpu") -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double().to(device)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)
    return model, x.to(device), y.to(device)


def _gpt(n: int = 3) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab=7, width=4, heads=2, layers=1, T=4, mlp=1)).double()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 7, (n, 4), generator=g)
    return model, ids, torch.randint(0, 7, (n, 4), generator=g)


def _flat_fn(model: nn.Module, names: list[str], fn):
    """theta (flat, over ``names``) ↦ fn(model output with those parameters replaced); a tied parameter is
    replaced under every name it has (the tied output head)."""
    params = dict(model.named_parameters())
    sizes = [params[n].numel() for n in names]
    aliases = [
        (a, names.index(n)) for a, p in model.named_parameters(remove_duplicate=False) for n in names if params[n] is p
    ]

    def call(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        parts = theta.split(sizes)
        new = {a: parts[i].view(params[names[i]].shape) for a, i in aliases}
        return fn(functional_call(model, new, x if isinstance(x, tuple) else (x,), tie_weights=False))

    theta0 = torch.cat([params[n].detach().reshape(-1) for n in names])
    return call, theta0


def dense_oracle(kind: str, model, loss_fn, x, y, names, s: int = 3, replacement: bool = True) -> torch.Tensor:
    """C, F, H or G as a dense matrix over the parameters ``names``, by torch.func / autograd.functional
    (independent of the operators).

    H row by row (``torch.autograd.functional.hessian``, no vmap): in torch 2.13 both torch.func.hessian
    and jacrev(jacrev) of the tiny GPT are wrong (asymmetric, off by up to 0.34 from central finite
    differences: vmapped second derivatives of ``layer_norm`` with an affine weight), so the GPT's H is
    checked against central finite differences of the gradient instead."""
    call, theta = _flat_fn(model, names, lambda out: out)
    losses = lambda th: loss_fn(call(th, x), y)
    if kind == "H":
        return torch.autograd.functional.hessian(lambda th: losses(th).mean(), theta)
    if kind == "G":
        out = call(theta, x)
        jf = jacrev(lambda th: call(th, x))(theta).reshape(out.numel(), -1)
        hf = hessian(lambda o: loss_fn(o, y).mean())(out).reshape(out.numel(), out.numel())
        return jf.T @ hf @ jf
    jac = jacrev(losses)(theta)  # (N, P): rows ∇ℓ_i
    n = jac.shape[0]
    if kind == "F":
        return jac.T @ jac / n
    jc = jac - jac.mean(0)
    return batch_factor(s, n, replacement) * jc.T @ jc / n


def finite_difference_hessian(model, loss_fn, x, y, names, h: float = 3e-5) -> torch.Tensor:
    """Five-point central differences of the gradient (first-order torch.func only), every column:
    (−g(θ+2h) + 8g(θ+h) − 8g(θ−h) + g(θ−2h)) / 12h, error O(h⁴)."""
    call, theta = _flat_fn(model, names, lambda out: loss_fn(out, y).mean())
    grad = torch.func.vmap(torch.func.grad(lambda th: call(th, x)))
    e = torch.eye(len(theta), dtype=theta.dtype) * h
    return ((grad(theta - 2 * e) - 8 * grad(theta - e) + 8 * grad(theta + e) - grad(theta + 2 * e)) / (12 * h)).T


def build(kind: str, model, loss_fn, x, y, params=None, s: int = 3, replacement: bool = True) -> ParamOperator:
    if kind == "C":
        return NoiseCovariance(model, loss_fn, x, y, batch_size=s, replacement=replacement, params=params)
    if kind == "F":
        return EmpiricalFisher(model, loss_fn, x, y, params=params)
    return {"H": Hessian, "G": GaussNewton}[kind](model, loss_fn, x, y, params=params)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("replacement", [True, False])
@pytest.mark.parametrize("kind", ["C", "F", "H", "G"])
def test_matvec_matches_dense(kind: str, replacement: bool, device: str) -> None:
    model, x, y = _mlp(device=device)
    names = [n for n, _ in model.named_parameters()]
    ref = dense_oracle(kind, model, CE, x, y, names, replacement=replacement)
    op = build(kind, model, CE, x, y, replacement=replacement)
    assert op.shape == ref.shape and op.device == x.device and op.torch_dtype == torch.float64  # the model's
    v = torch.randn(op.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(device)
    torch.testing.assert_close(op @ v, ref @ v, rtol=1e-9, atol=1e-12)  # a block of 3
    torch.testing.assert_close(op.mv(v[:, 0]), ref @ v[:, 0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(op @ v[:, 1].cpu().numpy(), (ref @ v[:, 1]).cpu().numpy(), rtol=1e-9, atol=1e-12)
    assert op.matvecs == 5
    if kind in "CF":
        np.testing.assert_allclose(op.trace(), float(ref.trace()), rtol=1e-10)
        torch.testing.assert_close(op.diagonal(), ref.diagonal(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", ["H", "G"])
def test_gpt_hessian_and_gauss_newton(kind: str) -> None:
    model, x, y = _gpt()
    names = [n for n, _ in model.named_parameters()]  # tied head: tok.weight once
    assert "head.weight" not in names
    op = build(kind, model, token_ce, x, y)
    if kind == "H":  # finite differences err by ~4e-10 here; the vmapped torch.func Hessian is off by 0.34
        torch.testing.assert_close(
            op.dense(), finite_difference_hessian(model, token_ce, x, y, names), rtol=0, atol=1e-8
        )
    else:
        torch.testing.assert_close(op.dense(), dense_oracle(kind, model, token_ce, x, y, names), rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("kind", ["C", "F", "H", "G"])
def test_gpt_padded_batch(kind: str) -> None:
    """Padded sequences: x = (ids, mask) goes to model(*x), y = (targets, mask) to the token-mean loss
    ℓ_i = N Σ_t m_it ℓ_it / Σ m; a parameter subset of attention and the tied embedding."""
    model, ids, targets = _gpt(4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]])
    x, y, loss = (ids, mask), (targets, mask), TokenMeanCrossEntropy()
    params = ["blocks.0.attn", model.tok.weight]
    names = [n for n, _ in select_parameters(model, params)]
    assert names == ["tok.weight"] + [f"blocks.0.attn.{m}.{w}" for m in "qkvo" for w in ("weight", "bias")]
    op = build(kind, model, loss, x, y, params=params)
    ref = (
        finite_difference_hessian(model, loss, x, y, names)
        if kind == "H"
        else dense_oracle(kind, model, loss, x, y, names)
    )
    torch.testing.assert_close(op.dense(), ref, rtol=1e-7, atol=1e-7 if kind == "H" else 1e-11)


def test_linear_model_gauss_newton_is_hessian() -> None:
    """For a model linear in its parameters under squared error, G = H exactly (and both ≠ 0)."""
    model, x, _ = _mlp()
    lin = nn.Linear(3, 2).double()
    y = torch.randn(x.shape[0], 2, dtype=torch.float64)
    mse = lambda out, t: ((out - t) ** 2).sum(1)
    h, g = Hessian(lin, mse, x, y).dense(), GaussNewton(lin, mse, x, y).dense()
    torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-12)
    assert h.abs().max() > 0.1
    del model


@pytest.mark.parametrize("kind", ["C", "F", "H", "G"])
def test_parameter_subsets(kind: str) -> None:
    """A subset (module, parameter name, parameter) gives the principal submatrix of the full operator."""
    model, x, y = _mlp()
    names = [n for n, _ in model.named_parameters()]
    full = build(kind, model, CE, x, y).dense()
    offsets = np.cumsum([0] + [p.numel() for p in model.parameters()])
    subset = [model[0], "2.bias"]  # layer 0's weight and bias, and the last bias
    idx = np.r_[offsets[0] : offsets[2], offsets[3] : offsets[4]]
    op = build(kind, model, CE, x, y, params=subset)
    assert op.names == ["0.weight", "0.bias", "2.bias"] and op.shape == (len(idx), len(idx))
    torch.testing.assert_close(op.dense(), full[idx][:, idx], rtol=1e-9, atol=1e-12)
    assert [n for n, _ in select_parameters(model, model[2].weight)] == ["2.weight"]
    assert names == [n for n, _ in select_parameters(model)]


def test_select_parameters_refuses_bad_input() -> None:
    model, _, _ = _mlp()
    with pytest.raises(ConfigError, match="params"):
        select_parameters(model, "nope")
    with pytest.raises(ConfigError):
        select_parameters(model, nn.Linear(1, 1))  # not a module of the model
    model[0].bias.requires_grad_(False)
    with pytest.raises(ConfigError, match="requires_grad"):
        select_parameters(model, "0")


@pytest.mark.parametrize("kind", ["C", "F"])
def test_topk_factored_eigenvectors(kind: str) -> None:
    model, x, y = _mlp()
    op = build(kind, model, CE, x, y)
    ref = op.dense()
    lam_ref = torch.linalg.eigvalsh(ref).flip(0)[:3]
    lam, vecs = op.topk(3)
    torch.testing.assert_close(lam, lam_ref, rtol=1e-9, atol=1e-13)
    assert vecs.coeffs.shape == (x.shape[0], 3) and vecs.shape == (op.num_params, 3)
    v = vecs.materialize()
    torch.testing.assert_close(v.T @ v, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(ref @ v, v * lam, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(vecs.column(1), v[:, 1])
    w = torch.randn(op.num_params, 2, dtype=torch.float64)
    torch.testing.assert_close(vecs.dot(w), v.T @ w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["C", "H", "G"])
def test_scipy_eigsh_on_operator(kind: str) -> None:
    model, x, y = _mlp()
    op = build(kind, model, CE, x, y)
    ref = np.linalg.eigvalsh(op.dense().numpy())
    op.matvecs = 0
    vals = np.sort(eigsh(op, k=3, which="LA", tol=1e-12)[0])
    np.testing.assert_allclose(vals, ref[-3:], rtol=1e-8, atol=1e-12)
    assert op.matvecs > 0


@pytest.mark.parametrize("kind", ["H", "G"])
def test_second_order_through_fused_attention(kind: str) -> None:
    """scaled_dot_product_attention (fused kernels have no double backward) inside H and G products."""
    torch.manual_seed(0)

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.out = nn.Linear(4, 12), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(x).chunk(3, -1)
            return self.out(nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)).mean(1)

    model = Attn().double()
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    names = [n for n, _ in model.named_parameters()]
    torch.testing.assert_close(
        build(kind, model, CE, x, y).dense(), dense_oracle(kind, model, CE, x, y, names), rtol=1e-8, atol=1e-11
    )


def _values(op: ParamOperator, kind: str) -> dict[str, torch.Tensor]:
    """What an operator gives: a block of products, and for C and F the trace, diagonal and top eigenpairs."""
    v = torch.randn(op.num_params, 2, generator=torch.Generator().manual_seed(3)).to(op.torch_dtype)
    out = {"mv": op @ v}
    if kind in "CF":
        lam, vecs = op.topk(3)
        out |= {"trace": torch.tensor(op.trace()), "diag": op.diagonal(), "lam": lam, "vecs": vecs.materialize()}
        out["vecs"] = out["vecs"] * out["vecs"][:1].sign()  # the sign of an eigenvector is arbitrary
    return out


def _cnn_ln() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3)
    )
    g = torch.Generator().manual_seed(6)
    return model, torch.randn(12, 2, 8, generator=g), torch.randint(0, 3, (12,), generator=g)


@pytest.mark.parametrize("kind", ["C", "F", "H", "G"])
def test_operators_ignore_autocast(kind: str) -> None:
    """Built and used inside bf16 autocast, every operator gives its float32 values (before: Tr C 53 % and
    λ_max 150 % off on a transformer)."""
    model, x, y = _cnn_ln()
    ref = _values(build(kind, model, CE, x, y), kind)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16  # the ambient autocast is on
        got = _values(build(kind, model, CE, x, y), kind)
    for key, r in ref.items():
        assert got[key].dtype == torch.float32, key
        rel = float((got[key] - r).norm() / r.norm())
        assert rel <= 1e-4, (key, rel)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["C", "F", "H", "G"])
def test_16bit_models_are_upcast(kind: str, dtype: torch.dtype) -> None:
    """A float16 / bfloat16 model gives the values of its float32 copy (same rounded weights and inputs),
    in float32; the model itself stays 16-bit."""
    model, x, y = _cnn_ln()
    low, x_low = model.to(dtype), x.to(dtype)
    ref = _values(build(kind, copy.deepcopy(low).float(), CE, x_low.float(), y), kind)
    op = build(kind, low, CE, x_low, y)
    assert op.torch_dtype == torch.float32 and all(p.dtype == dtype for p in low.parameters())
    got = _values(op, kind)
    for key, r in ref.items():
        torch.testing.assert_close(got[key], r, rtol=1e-6, atol=1e-7, msg=key)


@pytest.mark.parametrize("cls", [NoiseCovariance, EmpiricalFisher, Hessian, GaussNewton])
def test_old_data_keywords_still_work_with_one_deprecation_line(cls) -> None:
    """Data are ``inputs, targets`` (issue 17.5); ``x=``, ``y=`` give the same operator after one
    DeprecationWarning line each, and the old and new name at once is refused."""
    model, x, y = _mlp(6)
    v = torch.randn(sum(p.numel() for p in model.parameters()), 2, dtype=torch.float64)
    new = cls(model, CE, inputs=x, targets=y)
    with pytest.warns(DeprecationWarning) as caught:
        old = cls(model, CE, x=x, y=y)
    assert [str(w.message) for w in caught] == [
        f"{cls.__name__}: x= is deprecated; it is now inputs=",
        f"{cls.__name__}: y= is deprecated; it is now targets=",
    ]
    torch.testing.assert_close(old @ v, new @ v, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="only one of x"):
        cls(model, CE, x=x, inputs=x, targets=y)
