"""The stability threshold of an optimizer's update, for the edge of stability.

Gradient descent on a quadratic with curvature λ is stable while λ < threshold (Cohen et al., ICLR
2021, "Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability"; for adaptive
methods Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of Stability"):

=================  =================================================================================
SGD, momentum μ    λ_max(H) < (2 + 2μ)/lr
Nesterov, μ        λ_max(H) < (2 + 2μ)/((1 + 2μ) lr)
Adam(W), β₁        λ_max(P⁻¹H) < (2 + 2β₁)/((1 − β₁) lr),  P = (1 − β₁ᵗ) diag(√v̂ + ε), v̂ = v/(1 − β₂ᵗ)
=================  =================================================================================

With per-group learning rates the relevant matrix is D^½ H D^½ with D the per-parameter step scale, so
:func:`step_scale` returns, per parameter, s = lr · (1/threshold·lr) — the number whose product with the
curvature must stay below 1: ``eos_ratio = λ_max(S^½ H S^½)``, 1 at the edge of stability. The Adam
preconditioner is read from the optimizer's state before its step (t = the state's step count; before
the first step P is undefined and the ratio is NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def step_scale(optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> tuple[Tensor, str] | None:
    """(s per parameter, flat in the order of ``params``; the rule used), or None when unknown/undefined."""
    pos = {id(p): i for i, p in enumerate(params)}
    scale: list[Tensor | None] = [None] * len(params)
    rule = ""
    for group in optimizer.param_groups:
        lr = float(group["lr"])
        for p in group["params"]:
            if id(p) not in pos:
                continue
            if isinstance(optimizer, torch.optim.SGD):
                mu = float(group.get("momentum", 0.0))
                c = (1 + 2 * mu) / (2 + 2 * mu) if group.get("nesterov", False) else 1 / (2 + 2 * mu)
                rule = "sgd-nesterov" if group.get("nesterov", False) else "sgd"
                scale[pos[id(p)]] = torch.full_like(p, lr * c, dtype=p.dtype)
            elif isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
                state = optimizer.state.get(p, {})
                if "exp_avg_sq" not in state:
                    return None
                b1, b2 = group["betas"]
                t = float(state["step"])
                v_hat = state["exp_avg_sq"] / (1 - b2**t)
                precond = (1 - b1**t) * (v_hat.sqrt() + group["eps"])
                scale[pos[id(p)]] = lr * (1 - b1) / (2 + 2 * b1) / precond
                rule = "adam"
            else:
                return None
    if any(s is None for s in scale):
        return None
    return torch.cat([s.reshape(-1) for s in scale if s is not None]), rule
