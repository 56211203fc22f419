"""Instruments on any PyTorch model, shared by all three papers.

* :mod:`noiseprobe.probes.local`: local gradient and Hessian at one layer's pre-activations (NIN paper
  eq. 3), Hutchinson traces, Hessian-vector products, the full-Hessian trace.
* :mod:`noiseprobe.probes.persample`: per-sample gradients and gradient-noise covariance products, from
  a capture pass (:mod:`noiseprobe.probes.capture`) and layer rules (:mod:`noiseprobe.probes.rules`) that give
  factored blocks (:mod:`noiseprobe.probes.factors`);
  per-sample losses as users have them (:mod:`noiseprobe.probes.losses`).
* :mod:`noiseprobe.probes.covariance`: ``GradientNoise``, the minibatch-noise covariance.
* :mod:`noiseprobe.probes.operators`: noise covariance, empirical Fisher, Hessian and Gauss–Newton as
  operators on flat parameter vectors (torch and ``scipy.sparse.linalg.LinearOperator``), parameter subsets.
* :mod:`noiseprobe.probes.linalg`: Lanczos with warm start, Hutchinson / Hutch++ traces, diagonal
  estimates — with error bars — on any of those operators.
"""
