"""Paper 002, *Strength of Minibatch Noise in SGD* (Liu Ziyin, Kangqiao Liu, Takashi Mori, Masahito Ueda,
ICLR 2022): minibatch-noise theory and simulation.

Modules (import them directly; nothing is re-exported here):

* ``covariance`` — the minibatch noise covariance C (Props. 1, 8) from per-sample gradients.
* ``fluctuation`` — the stationary fluctuation Σ of Theorem 1 (eq. 3): eigenbasis, augmented-Lyapunov and
  Kronecker solvers, Σ-dependent noise, ``NoStationaryState``.
* ``linear`` — label noise (Lemma 1, Thms 2, 3, 8) and input noise (Prop. 9, Thm 9).
* ``l2`` — L2 regularisation (Prop. 3, Thm 4, Cor. 4, Cor. 1, the optimal weight decay).
* ``highdim`` — generic minima (Thm 5, Cors. 2, 3) and high-dimensional regression (Prop. 4, Thm 6, exact finite-N).
* ``newton`` — damped Newton and natural gradient (Props. 5, 6).
* ``baselines`` — the Hessian approximation C ≈ H/S in discrete and continuous time (App. B) and Table 2.
* ``sgd`` — vectorised SGD on linear regression (``LinearProblem``, ``simulate_sgd``).
* ``tails`` — the tail index of the stationary law (Prop. 7, eq. 93, and the exact Kesten index).
* ``nets`` — the replica-batched PyTorch trainers of Fig. 1 (tanh network by torch.optim SGD/Adam, logistic
  regression with signed weight decay).

Conventions: loss ℓ = ½(wᵀx − y)² (with the ½), minibatches drawn with replacement (Def. 2) unless stated,
heavy-ball momentum without dampening (eq. 1), float64. Confusable parameters (lr, batch_size, a,
sigma, gamma, momentum) are keyword-only; noise is a standard deviation σ (docs/conventions.md).
"""
