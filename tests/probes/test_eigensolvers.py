"""Lanczos, Hutchinson, Hutch++ and diagonal estimates against dense eigh/trace, and their error bars by
simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import aslinearoperator

from noiseprobe.core.errors import ConfigError
from noiseprobe.probes.eigensolvers import lanczos
from noiseprobe.probes.estimators import bekas_diagonal as diagonal
from noiseprobe.probes.estimators import hutchinson, hutchpp
from noiseprobe.probes.operators import MatrixOperator
from noiseprobe.probes.operators.gram import GRAM_TOL
from tests.probes.test_operators import CE, _mlp, build


def _sym(p: int, seed: int, decay: float = 0.0, negative: bool = False) -> torch.Tensor:
    """A random symmetric matrix with eigenvalues k^-decay (k = 1..p; flat for decay 0: 1..2), half of them
    negated when ``negative``."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))[0]
    lam = (
        torch.arange(1, p + 1, dtype=torch.float64) ** -decay
        if decay
        else 1 + torch.rand(p, generator=g, dtype=torch.float64)
    )
    if negative:
        lam[1::2] *= -1.1
    return (q * lam) @ q.T


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_lanczos_matches_eigh(which: str) -> None:
    a = _sym(80, 0, decay=1.0, negative=True)
    ev = torch.linalg.eigvalsh(a)
    ref = {"LA": ev.flip(0), "SA": ev, "LM": ev[ev.abs().argsort(descending=True)]}[which][:4]
    res = lanczos(MatrixOperator(a), 4, which=which, tol=1e-10)
    assert res.converged and res.matvecs < 80
    torch.testing.assert_close(res.eigenvalues, ref, rtol=1e-9, atol=1e-12)
    v = res.eigenvectors
    torch.testing.assert_close(a @ v, v * res.eigenvalues, rtol=0, atol=1e-6)
    torch.testing.assert_close(res.residuals, (a @ v - v * res.eigenvalues).norm(dim=0), rtol=1e-3, atol=1e-13)


@pytest.mark.parametrize("kind", ["C", "F", "H", "G"])
def test_lanczos_on_operators(kind: str) -> None:
    model, x, y = _mlp()
    op = build(kind, model, CE, x, y)
    ref = torch.linalg.eigvalsh(op.dense()).flip(0)[:3]
    res = lanczos(op, 3, tol=1e-10)
    torch.testing.assert_close(res.eigenvalues, ref, rtol=1e-8, atol=1e-12)


def test_lanczos_error_bounds_hold_before_convergence() -> None:
    """Stopped early, each Ritz value lies within its residual of a true eigenvalue (a rigorous bound), and
    ``errors`` (the r²/gap estimate) is not far below the true error."""
    a = _sym(200, 1, decay=0.5)
    ev = torch.linalg.eigvalsh(a).flip(0)
    for m in (6, 10, 16):
        res = lanczos(MatrixOperator(a), 3, tol=0.0, max_matvecs=m)
        assert not res.converged and res.matvecs == m
        dist = (res.eigenvalues[:, None] - ev[None, :]).abs().min(1).values
        assert (dist <= res.residuals * (1 + 1e-9)).all()
        true_err = (res.eigenvalues - ev[:3]).abs()
        assert (true_err <= 3 * res.errors + 1e-12).all(), (true_err, res.errors)


@pytest.mark.parametrize("k", [1, 5])
def test_warm_start_reduces_matvecs(k: int) -> None:
    """After a small change of the operator (a few training steps), starting from the previous vectors
    stops no later than a cold start and is far more accurate; at equal products, too."""
    a = _sym(300, 2, decay=0.1)
    g = torch.Generator().manual_seed(3)
    e = torch.randn(300, 300, generator=g, dtype=torch.float64)
    b = a + 2e-4 * (e + e.T)
    ref = torch.linalg.eigvalsh(b).flip(0)[:k]
    a, b = MatrixOperator(a), MatrixOperator(b)
    prev = lanczos(a, k, tol=1e-8)
    cold, warm = lanczos(b, k, tol=1e-4), lanczos(b, k, tol=1e-4, warm_start=prev)
    assert cold.converged and warm.converged
    assert warm.matvecs <= cold.matvecs, (warm.matvecs, cold.matvecs)
    err = lambda res: float((res.eigenvalues - ref).abs().max())
    assert err(cold) <= 1e-4 and err(warm) <= err(cold) / 5, (err(warm), err(cold))
    budget = warm.matvecs  # the same products, no stopping rule
    cold, warm = (lanczos(b, k, tol=0.0, max_matvecs=budget, warm_start=w) for w in (None, prev))
    assert err(warm) <= err(cold) / 5, (err(warm), err(cold))


def test_lanczos_refuses_bad_input_and_accepts_scipy() -> None:
    a = _sym(30, 4)
    with pytest.raises(ConfigError, match="which"):
        lanczos(a, 2, which="XX")
    with pytest.raises(ConfigError, match="k"):
        lanczos(a, 31)
    res = lanczos(aslinearoperator(a.numpy()), 2, tol=1e-10)
    torch.testing.assert_close(res.eigenvalues, torch.linalg.eigvalsh(a).flip(0)[:2])


def _repeat(estimator, reps: int) -> tuple[np.ndarray, np.ndarray]:
    est = [estimator(seed) for seed in range(reps)]
    return np.array([float(e.value) for e in est]), np.array([float(e.se) for e in est])


@pytest.mark.parametrize("method", ["hutchinson", "hutchpp"])
def test_trace_estimators_unbiased_with_honest_se(method: str) -> None:
    """Over 400 independent runs: the mean estimate is within 4 standard errors of Tr A, and the mean
    reported variance se² matches the variance of the estimates (ratio within ±35%: its relative
    sampling error here is about 8%)."""
    a = _sym(40, 5, decay=0.7, negative=True)
    op = MatrixOperator(a)
    fn = (
        (lambda s: hutchinson(op, 12, seed=s, block=5))
        if method == "hutchinson"
        else (lambda s: hutchpp(op, 18, seed=s))
    )
    vals, ses = _repeat(fn, 400)
    tr = float(a.trace())
    assert abs(vals.mean() - tr) < 4 * vals.std(ddof=1) / np.sqrt(len(vals)), (vals.mean(), tr)
    ratio = np.mean(ses**2) / vals.var(ddof=1)
    assert 0.65 < ratio < 1.35, ratio


def test_hutchpp_beats_hutchinson_on_decaying_spectrum() -> None:
    a = _sym(200, 6, decay=2.0)
    h, hpp = hutchinson(a, 60, seed=0), hutchpp(a, 60, seed=0)
    assert h.matvecs == hpp.matvecs == 60
    assert hpp.se < h.se / 5, (hpp.se, h.se)
    assert abs(hpp.value - float(a.trace())) < 5 * hpp.se


def test_diagonal_estimate_unbiased_with_honest_se() -> None:
    a = _sym(30, 7, decay=0.5, negative=True)
    d = torch.stack([diagonal(a, 10, seed=s, block=4).value for s in range(300)])
    ses = torch.stack([diagonal(a, 10, seed=s, block=4).se for s in range(300)])
    z = (d.mean(0) - a.diagonal()) / (d.std(0) / np.sqrt(300))
    assert z.abs().max() < 4.0, z.abs().max()  # 30 entries: the null max |z| is about 2.9
    ratio = (ses**2).mean(0) / d.var(0)
    assert ((ratio > 0.6) & (ratio < 1.5)).all(), ratio
    exact = diagonal(torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64)), 3)
    torch.testing.assert_close(exact.value, torch.arange(1.0, 6.0, dtype=torch.float64))  # diagonal A: no variance


def test_lanczos_fills_the_space() -> None:
    """tol = 0: single-vector Lanczos runs until the Krylov space is all of R^P (exact, converged); a block
    that no longer fits stops it with converged False."""
    a = _sym(10, 8, decay=1.0, negative=True)
    res = lanczos(MatrixOperator(a), 3, tol=0.0)
    assert res.converged and res.matvecs == 10
    torch.testing.assert_close(res.eigenvalues, torch.linalg.eigvalsh(a).flip(0)[:3], rtol=1e-10, atol=1e-12)
    res = lanczos(MatrixOperator(a), 3, tol=0.0, block=3)
    assert not res.converged and res.matvecs == 9


def test_lanczos_error_bounds_are_finite_at_degenerate_eigenvalues():
    """A repeated Ritz value (zero gap) gets the residual as its error bound, not 0/0 = NaN (found by
    tests/test_public_api_fuzz.py): the zero operator and a rank-1 one."""
    import torch

    from noiseprobe.probes.eigensolvers import lanczos

    for a, top in ((torch.zeros(4, 4, dtype=torch.float64), 0.0), (-torch.ones(4, 4, dtype=torch.float64), 0.0)):
        for op in (a, MatrixOperator(a)):  # the explicit matrix and Lanczos on its products
            r = lanczos(op, 2)
            assert torch.isfinite(r.errors).all() and r.converged
            assert torch.allclose(r.eigenvalues, torch.full((2,), top, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_an_explicit_matrix_is_solved_on_the_matrix(which: str) -> None:
    """A tensor (not an operator) is an explicit matrix: dense eigh at small size, every ``which``, exact,
    with residuals and errors of the same meaning as Lanczos's."""
    a = _sym(80, 0, decay=1.0, negative=True)
    ev = torch.linalg.eigvalsh(a)
    ref = {"LA": ev.flip(0), "SA": ev, "LM": ev[ev.abs().argsort(descending=True)]}[which][:4]
    res = lanczos(a, 4, which=which, tol=1e-10)
    assert res.converged
    torch.testing.assert_close(res.eigenvalues, ref, rtol=1e-12, atol=1e-13)
    v = res.eigenvectors
    torch.testing.assert_close(res.residuals, (a @ v - v * res.eigenvalues).norm(dim=0), rtol=0, atol=0)
    assert (res.errors <= res.residuals).all() and res.residuals.max() < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("warm", [False, True])
def test_an_explicit_matrix_krylov_branch_against_dense(dtype: torch.dtype, warm: bool) -> None:
    """A 450×450 PSD matrix (the randomized block Krylov branch, n > 400) whose k-th and (k+1)-th
    eigenvalues are 1% apart: eigenvalues to the tolerance the Gram operators use, residuals within it,
    fewer products than the matrix has columns; a warm start from the answer stops at the first test."""
    g = torch.Generator().manual_seed(3)
    q = torch.linalg.qr(torch.randn(450, 450, generator=g, dtype=torch.float64))[0]
    spec = torch.cat(
        [
            torch.linspace(10, 5, 9, dtype=torch.float64),
            torch.tensor([1.0, 0.99]),
            torch.rand(439, generator=g, dtype=torch.float64) * 0.5,
        ]
    )
    mat = (q * spec) @ q.T
    tol = GRAM_TOL[dtype == torch.float64]
    res = lanczos(mat.to(dtype), 10, tol=tol, warm_start=q[:, :10].to(dtype) if warm else None)
    lam, vec = res.eigenvalues.double(), res.eigenvectors.double()
    assert res.converged and res.matvecs < 225 and res.eigenvalues.dtype == dtype
    rel = 1e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(lam, spec[:10], rtol=rel, atol=0)
    resid = (mat @ vec - vec * lam).norm(dim=0)
    assert resid.max() <= (2e-3 if dtype == torch.float32 else 1e-5) * spec[0]
    if warm:
        assert res.matvecs == 3 * 20  # the start's image and two blocks of k + oversample: the first test


def test_an_explicit_matrix_is_refused_with_one_line() -> None:
    with pytest.raises(ConfigError, match="k"):
        lanczos(torch.eye(5, dtype=torch.float64), 6)
    with pytest.raises(ConfigError, match="op"):
        lanczos(torch.ones(3, 4, dtype=torch.float64), 1)
    with pytest.raises(ConfigError, match="op"):
        lanczos(torch.full((3, 3), float("nan"), dtype=torch.float64), 1)
