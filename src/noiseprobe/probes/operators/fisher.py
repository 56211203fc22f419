"""The empirical Fisher F = (1/N) Σ_i ∇ℓ_i ∇ℓ_iᵀ = (1/N) Jᵀ J, the uncentred second moment of the
per-sample gradients (= M + ḡḡᵀ, M the covariance of one sample's gradient)."""

from __future__ import annotations

from torch import Tensor

from noiseprobe.probes.operators.base import full_precision_method
from noiseprobe.probes.operators.gram import GramOperator


class EmpiricalFisher(GramOperator):
    """F over the chosen parameters: products, exact trace and diagonal, top eigenpairs through the Gram
    matrix JJᵀ/N. Arguments as for :class:`~noiseprobe.probes.operators.NoiseCovariance`."""

    factor = 1.0

    def _mm(self, v: Tensor) -> Tensor:
        return self.grads.vjp(self.grads.jvp(v)) / self.n

    @full_precision_method
    def trace(self) -> float:
        """Tr F = (1/N) Σ ‖∇ℓ_i‖², exact."""
        return float(self.grads.sq_norms().mean())

    @full_precision_method
    def diagonal(self) -> Tensor:
        """diag F = (1/N) Σ (∇ℓ_i)², exact, shape (P,)."""
        return self.grads.sq_sum() / self.n

    @full_precision_method
    def gram(self) -> Tensor:
        return self.grads.gram() / self.n
