"""Instruments on any PyTorch model, shared by all three papers.

* :mod:`noiseprobe.probes.persample`: per-sample gradients in factored form, from a capture pass
  (:mod:`noiseprobe.probes.capture`) and layer rules (:mod:`noiseprobe.probes.rules`, each registered
  next to its definition with ``register_rule``) that give factored blocks
  (:mod:`noiseprobe.probes.factors`); :func:`~noiseprobe.probes.persample.select_parameters`, the one
  parameter selector; per-sample losses as users have them (:mod:`noiseprobe.probes.sample_losses`).
* :mod:`noiseprobe.probes.operators`: curvature and noise matrices as operators on flat parameter
  vectors (torch and ``scipy.sparse.linalg.LinearOperator``), one per module: the noise covariance
  ``NoiseCovariance`` (alias ``GradientNoise``), ``EmpiricalFisher``, ``Hessian``, ``GaussNewton``.
* :mod:`noiseprobe.probes.eigensolvers`: top eigenpairs, one routine ``lanczos`` — block Lanczos with
  warm start for operators, solved on the matrix itself for an explicit one (the Gram matrices of C and F).
* :mod:`noiseprobe.probes.estimators`: stochastic traces and diagonals (Hutchinson, Hutch++, Bekas et
  al.) with standard errors.
* :mod:`noiseprobe.probes.local`: local gradient and Hessian at one layer's pre-activations (NIN paper
  eq. 3), the full-Hessian trace.
"""
