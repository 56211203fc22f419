"""Paper 003 — singular limits of noisy gradient descent (Shalova, Schlichting, Peletier, arXiv:2404.12293).

Noisy GD ``w_{k+1} = w_k − α ∇_w L̂(w_k, η_k)`` (Def. 3.1) near the zero-loss set Γ = {L = 0}:

* :mod:`~noiseprobe.limits.noises`: the L̂ library (perturbed GD / anti-PGD, additive noise / SGLD / plain
  PGD, label noise, minibatch, Dropout and DropConnect with Gaussian or Bernoulli masks, the Fig. 3 toys),
  each with its noise law and regime;
* :mod:`~noiseprobe.limits.losses`: the example losses and batched autodiff derivatives;
* :mod:`~noiseprobe.limits.regulariser`: ``Reg = ½ tr(C̃ ∇²_η L̂(w, 0))`` and the non-local Bernoulli Reg_B;
* :mod:`~noiseprobe.limits.manifold`: the limit map Φ, tangent projector P, ∂²Φ[Σ], regime classification;
* :mod:`~noiseprobe.limits.flow`: Theorem A's constrained gradient flow and Theorem B's SDE on Γ;
* :mod:`~noiseprobe.limits.noisy_gd`: vectorised noisy GD over many chains.

The mathematics, with its reconstructed parts and corrections, is in docs/limits.md.
"""
