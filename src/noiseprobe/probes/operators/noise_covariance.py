"""The noise covariance C: the exact covariance of the minibatch gradient of any PyTorch model (paper
002, Prop. 1 and Prop. 8).

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

from torch import Tensor, nn

from noiseprobe.core.deprecation import renamed_arguments
from noiseprobe.core.validation import check_choice, check_int
from noiseprobe.probes.operators.base import full_precision_method
from noiseprobe.probes.operators.gram import GramOperator
from noiseprobe.probes.persample import Forward, PerSampleLoss, Selection


def batch_factor(batch_size: int, n: int, replacement: bool = True) -> float:
    """c(S, N) with C = c·M: 1/S with replacement (eqs. 2, 99a), (N−S)/(S(N−1)) without (eq. 99b)."""
    n = check_int("n", n, lo=1)
    check_choice("replacement", replacement, (True, False))
    if replacement:
        return 1.0 / check_int("batch_size", batch_size, lo=1)
    s = check_int("batch_size", batch_size, lo=1, hi=n)
    return 1.0 / s if n == 1 else (n - s) / (s * (n - 1))


class NoiseCovariance(GramOperator):
    """C, the covariance of the size-S minibatch gradient of ``loss_fn(model(inputs), targets)`` over the N
    samples (module docstring; paper 002, eqs. 2, 99): products, exact trace and diagonal, top eigenpairs
    through the centred Gram matrix (eigenvectors lazy by default: :meth:`topk`).

    ``loss_fn`` returns per-sample losses of shape (N,) (e.g. ``nn.CrossEntropyLoss(reduction="none")``)
    whose mean is the training loss (for token-mean language-model losses see
    :class:`~noiseprobe.probes.sample_losses.TokenMeanCrossEntropy`). ``inputs`` is anything ``forward(model,
    inputs)`` takes (integer token ids, a dict of tensors; the old keywords ``x=``, ``y=`` still work, with
    a DeprecationWarning); ``method``, ``chunk_size``, ``forward``, ``check`` and
    ``params`` (a parameter subset) are those of :func:`~noiseprobe.probes.persample.per_sample_gradients`.
    Parameter-space vectors are flat in the order of the model's (selected) trainable parameters, on the
    model's device, float32 or wider (docs/operators.md, "Precision"). Weight decay adds no noise (it is
    common to all samples). ``GradientNoise`` is the same class under its earlier name.
    """

    rank_deficit = 1

    @renamed_arguments(x="inputs", y="targets")
    def __init__(
        self,
        model: nn.Module,
        loss_fn: PerSampleLoss,
        inputs: Any,
        targets: Any,
        *,
        batch_size: int = 1,
        replacement: bool = True,
        method: Literal["auto", "hooks", "func"] = "auto",
        chunk_size: int | None = None,
        forward: Forward | None = None,
        check: bool = False,
        params: Selection | None = None,
    ) -> None:
        super().__init__(
            model,
            loss_fn,
            inputs,
            targets,
            method=method,
            chunk_size=chunk_size,
            forward=forward,
            check=check,
            params=params,
        )
        self.factor = batch_factor(batch_size, self.n, replacement)
        self._mean: Tensor | None = None
        self._gram: Tensor | None = None

    @property
    @full_precision_method
    def mean_gradient(self) -> Tensor:
        """ḡ = ∇L(w), the full-batch gradient (flat)."""
        if self._mean is None:
            self._mean = self.grads.mean()
        return self._mean

    @full_precision_method
    def dense(self) -> Tensor:
        """C as a (P, P) matrix (materialises J; small models only)."""
        jc = self.grads.dense() - self.mean_gradient
        return self.factor / self.n * (jc.T @ jc)

    def _mm(self, v: Tensor) -> Tensor:
        jv = self.grads.jvp(v)
        return self.factor / self.n * self.grads.vjp(jv - jv.mean(0))

    @full_precision_method
    def trace(self) -> float:
        """Tr C = c [(1/N) Σ_i ‖∇ℓ_i‖² − ‖ḡ‖²], exact; from the Gram matrix (diagonal and 1ᵀ(JJᵀ)1/N²)
        when it is already built."""
        if self._gram is not None:
            return self.factor * float(self._gram.diagonal().mean() - self._gram.sum() / self.n**2)
        return self.factor * float(self.grads.sq_norms().mean() - self.mean_gradient @ self.mean_gradient)

    @full_precision_method
    def diagonal(self) -> Tensor:
        """diag C = c [(1/N) Σ_i (∇ℓ_i)² − ḡ²], exact, shape (P,)."""
        return self.factor * (self.grads.sq_sum() / self.n - self.mean_gradient**2)

    @full_precision_method
    def centred_gram(self) -> Tensor:
        """K = (1/N) H J Jᵀ H (N × N): its eigenvalues times c are the non-zero eigenvalues of C."""
        if self._gram is None:
            self._gram = self.grads.gram()
        gram = self._gram - self._gram.mean(0, keepdim=True)
        return (gram - gram.mean(1, keepdim=True)) / self.n

    def gram(self) -> Tensor:
        return self.centred_gram()


#: the earlier name of :class:`NoiseCovariance` (``npb.GradientNoise`` in README and docs), the same class
GradientNoise = NoiseCovariance
