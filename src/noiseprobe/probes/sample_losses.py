"""Model outputs and per-sample losses as users have them.

The per-sample loss ℓ_i is defined so that its mean over the batch is the training loss, L = (1/N) Σ_i ℓ_i:
the per-sample gradients then average to the training gradient and the noise covariance is that of the
optimiser's minibatch gradient. For a language model trained on the token mean over non-padding tokens,
L = Σ_{j,t} m_jt ℓ_jt / Σ_{j,t} m_jt, so

    ℓ_i = N Σ_t m_it ℓ_it / Σ_{j,t} m_jt                                              (token mean)

(:func:`token_mean`): a sequence's weight is its share of the batch's tokens, not 1/N. The normaliser
Σ m is a constant of the batch, so ℓ_i depends on sample i's output only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.nn import functional as F

from noiseprobe.core.errors import ConfigError


def model_output(out: Any) -> Tensor:
    """The tensor a loss is computed from: a tensor itself, ``.logits`` of a ModelOutput-like object (or
    the key "logits" of a dict), or the first element of a tuple/list."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if not isinstance(logits, Tensor) and isinstance(out, dict):
        logits = out.get("logits")
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise ConfigError(
        "model output",
        type(out).__name__,
        "a tensor, a tuple whose first element is a tensor, or an object with a .logits tensor",
    )


def token_mean(token_losses: Tensor, mask: Tensor | None = None) -> Tensor:
    """ℓ_i = N Σ_t m_it ℓ_it / Σ_{j,t} m_jt (module docstring), from token losses (N, T) and mask (N, T)."""
    if mask is None:
        return token_losses.mean(1)
    if mask.shape != token_losses.shape:
        raise ConfigError("mask", f"tensor of shape {tuple(mask.shape)}", f"shape {tuple(token_losses.shape)}")
    m = mask.to(token_losses.dtype)
    total = m.sum()
    if not total > 0:
        raise ConfigError("mask", "no token", "at least one non-padding token in the batch")
    return token_losses.shape[0] * (m * token_losses).sum(1) / total


class TokenMeanCrossEntropy:
    """Per-sample loss of a language model trained on the token-mean cross-entropy over non-padding
    tokens: ``loss(logits (N, T, V), targets)`` with ``targets`` (N, T) or a pair (targets, mask)."""

    def __init__(self, token_loss: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        self.token_loss = token_loss or (lambda z, t: F.cross_entropy(z, t, reduction="none"))

    def __call__(self, logits: Tensor, y: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        targets, mask = y if isinstance(y, (tuple, list)) else (y, None)
        n, t = targets.shape
        tok = self.token_loss(logits.reshape(n * t, -1), targets.reshape(-1)).reshape(n, t)
        return token_mean(tok, mask)
