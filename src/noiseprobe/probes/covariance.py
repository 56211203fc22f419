"""The exact covariance of the minibatch gradient of any PyTorch model (paper 002, Prop. 1 and Prop. 8).

For per-sample gradients ∇ℓ_i (rows of J, see :mod:`noiseprobe.probes.persample`) and ḡ = ∇L:

    M = (1/N) Σ_i ∇ℓ_i ∇ℓ_iᵀ − ḡ ḡᵀ = (1/N) Jᵀ H J,   H = I − 11ᵀ/N            (App. E.1, before eq. 99)
    C = c(S, N) · M                                                            (eqs. 2, 99)
    c = 1/S                   minibatch of S i.i.d. uniform indices (with replacement, Def. 2; eq. 99a)
    c = (N − S)/(S (N − 1))   uniform random S-subset (without replacement, Def. 3; eq. 99b)

Both are exact at every finite N. The main text states eq. (2) (= with replacement) "when N ≫ S"; used for
sampling without replacement it overstates C by the factor (N − 1)/(N − S).

The loss convention is the one of ``loss_fn`` (``nn.MSELoss`` has no ½; the paper's ℓ = ½(f − y)² does).

Matrix-free: C v = (c/N) Jᵀ H (J v); Tr C = c[(1/N) Σ‖∇ℓ_i‖² − ‖ḡ‖²]; diag C = c[(1/N) Σ(∇ℓ_i)² − ḡ²];
the non-zero eigenpairs of C come from the centred Gram matrix K = (1/N) H (J Jᵀ) H (N × N):
K u = λu  ⇒  C (Jᵀu) = cλ (Jᵀu), ‖Jᵀu‖² = Nλ (Hu = u because K1 = 0).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_choice, check_int
from noiseprobe.probes.persample import (
    Forward,
    PerSampleGradients,
    PerSampleLoss,
    Selection,
    per_sample_gradients,
)


def batch_factor(batch_size: int, n: int, replacement: bool = True) -> float:
    """c(S, N) with C = c·M: 1/S with replacement (eqs. 2, 99a), (N−S)/(S(N−1)) without (eq. 99b)."""
    n = check_int("n", n, lo=1)
    check_choice("replacement", replacement, (True, False))
    if replacement:
        return 1.0 / check_int("batch_size", batch_size, lo=1)
    s = check_int("batch_size", batch_size, lo=1, hi=n)
    return 1.0 / s if n == 1 else (n - s) / (s * (n - 1))


class GradientNoise:
    """Covariance C of the size-S minibatch gradient of ``loss_fn(model(x), y)`` over the N samples (x, y).

    ``loss_fn`` returns per-sample losses of shape (N,) (e.g. ``nn.CrossEntropyLoss(reduction="none")``)
    whose mean is the training loss (for token-mean language-model losses see
    :class:`~noiseprobe.probes.losses.TokenMeanCrossEntropy`). ``x`` is anything ``forward(model, x)``
    takes (integer token ids, a dict of tensors); ``method``, ``chunk_size``, ``forward``, ``check`` and
    ``params`` (a parameter subset) are those of :func:`~noiseprobe.probes.persample.per_sample_gradients`.
    Parameter-space vectors are flat in the order of the model's (selected) trainable parameters, on the
    model's device. Weight decay adds no noise (it
    is common to all samples).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: PerSampleLoss,
        x: Any,
        y: Any,
        batch_size: int = 1,
        replacement: bool = True,
        method: Literal["auto", "hooks", "func"] = "auto",
        chunk_size: int | None = None,
        forward: Forward | None = None,
        check: bool = False,
        params: Selection | None = None,
    ) -> None:
        self.grads: PerSampleGradients = per_sample_gradients(
            model, loss_fn, x, y, method, chunk_size, forward, check, params
        )
        self.n = self.grads.n
        self.factor = batch_factor(batch_size, self.n, replacement)
        self._mean: Tensor | None = None
        self._gram: Tensor | None = None

    @property
    def mean_gradient(self) -> Tensor:
        """ḡ = ∇L(w), the full-batch gradient (flat)."""
        if self._mean is None:
            self._mean = self.grads.mean()
        return self._mean

    def dense(self) -> Tensor:
        """C as a (P, P) matrix (materialises J; small models only)."""
        jc = self.grads.dense() - self.mean_gradient
        return self.factor / self.n * (jc.T @ jc)

    def matvec(self, v: Tensor) -> Tensor:
        """C v for v of shape (P,) or (P, k)."""
        jv = self.grads.jvp(v)
        return self.factor / self.n * self.grads.vjp(jv - jv.mean(0))

    def trace(self) -> float:
        """Tr C = c [(1/N) Σ_i ‖∇ℓ_i‖² − ‖ḡ‖²]; from the Gram matrix (diagonal and 1ᵀ(JJᵀ)1/N²) when it is
        already built."""
        if self._gram is not None:
            return self.factor * float(self._gram.diagonal().mean() - self._gram.sum() / self.n**2)
        return self.factor * float(self.grads.sq_norms().mean() - self.mean_gradient @ self.mean_gradient)

    def diagonal(self) -> Tensor:
        """diag C = c [(1/N) Σ_i (∇ℓ_i)² − ḡ²], shape (P,)."""
        return self.factor * (self.grads.sq_sum() / self.n - self.mean_gradient**2)

    def centred_gram(self) -> Tensor:
        """K = (1/N) H J Jᵀ H (N × N): its eigenvalues times c are the non-zero eigenvalues of C."""
        if self._gram is None:
            self._gram = self.grads.gram()
        gram = self._gram - self._gram.mean(0, keepdim=True)
        return (gram - gram.mean(1, keepdim=True)) / self.n

    def topk(self, k: int, vectors: Literal["param", "sample", "none"] = "param") -> tuple[Tensor, Tensor | None]:
        """The k largest eigenvalues of C (descending) and their eigenvectors as columns.

        Eigenpairs of K come from :func:`top_eigh` (dense for small N, block Krylov otherwise).
        ``vectors``: "param" = unit eigenvectors of C in parameter space (P, k), Jᵀu/√(Nλ), one batched
        vector-Jacobian product (k weight-gradient products per layer); "sample" = the unit eigenvectors u
        of K (N, k), from which ``self.grads.vjp(u / sqrt(N λ_K))`` gives the former on demand; "none".
        C has rank ≤ N − 1, so k ≤ N − 1; an eigenvalue below the numerical rank threshold N·eps·λ_max
        gets a zero vector (its direction is not determined).
        """
        check_choice("vectors", vectors, ("param", "sample", "none"))
        k = check_int("k", k, lo=1, hi=max(self.n - 1, 1))
        lam, u = top_eigh(self.centred_gram(), k)
        if not torch.isfinite(lam).all():
            raise ConfigError("model", "per-sample gradients", "finite values (the loss or its gradient is not finite)")
        if vectors == "none":
            return self.factor * lam, None
        keep = lam > self.n * torch.finfo(lam.dtype).eps * max(float(lam[0]), 0.0)  # numerical rank
        u = u * keep
        if vectors == "sample":
            return self.factor * lam, u
        scale = torch.where(keep, (self.n * lam.clamp_min(torch.finfo(lam.dtype).tiny)).rsqrt(), torch.zeros_like(lam))
        return self.factor * lam, self.grads.vjp((u * scale).to(self.grads.dtype))


def top_eigh(mat: Tensor, k: int, tol: float | None = None, oversample: int = 10) -> tuple[Tensor, Tensor]:
    """The k largest eigenpairs (descending) of a symmetric PSD matrix (n × n), in its dtype.

    Dense ``eigh`` when n ≤ 400 or k ≥ n/4; otherwise randomized block Krylov (Musco & Musco 2015) with
    blocks of k + ``oversample`` columns and Rayleigh–Ritz every 2 blocks, until every Ritz residual
    ‖A v − λ v‖ ≤ tol·λ_1 (default tol: 1e-6 in float64, 1e-4 in float32; the eigenvalue error is of order
    residual²/gap), or dense ``eigh`` once the Krylov space reaches n/2. The start block is seeded, so the
    result is deterministic.
    """
    if mat.dim() != 2 or mat.shape[0] != mat.shape[1]:
        raise ConfigError("mat", f"tensor of shape {tuple(mat.shape)}", "a square (n, n) matrix")
    n = mat.shape[0]
    k = check_int("k", k, lo=1, hi=n)
    oversample = check_int("oversample", oversample, lo=0)
    tol = (1e-6 if mat.dtype == torch.float64 else 1e-4) if tol is None else tol
    if n <= 400 or 4 * k >= n:
        lam, vec = torch.linalg.eigh(mat)
        return lam.flip(0)[:k], vec.flip(1)[:, :k]
    b = k + oversample
    start = torch.randn(n, b, generator=torch.Generator().manual_seed(0), dtype=mat.dtype).to(mat.device)
    q = torch.linalg.qr(mat @ start)[0]
    basis, images = [q], [mat @ q]
    while True:
        qs, aqs = torch.cat(basis, 1), torch.cat(images, 1)
        if len(basis) % 2 == 0:
            lam, w = torch.linalg.eigh(qs.T @ aqs)
            lam, w = lam.flip(0)[:k], w.flip(1)[:, :k]
            vec = qs @ w
            if (aqs @ w - vec * lam).norm(dim=0).max() <= tol * lam[0].abs():
                return lam, vec
        if qs.shape[1] + b > n // 2:
            lam, vec = torch.linalg.eigh(mat)
            return lam.flip(0)[:k], vec.flip(1)[:, :k]
        z = images[-1]
        for _ in range(2):  # block Gram–Schmidt, twice for stability
            z = z - qs @ (qs.T @ z)
        q = torch.linalg.qr(z)[0]
        basis.append(q)
        images.append(mat @ q)
