"""Models as users wrap them: the module whose layers the probes measure.

* :func:`unwrap`: the user's module inside ``DistributedDataParallel`` / ``DataParallel`` and ``torch.compile``
  (``OptimizedModule``, whose ``_orig_mod`` holds the same parameter objects), in any nesting, so the
  per-sample engine's hooks and the operators run on the original layers; FSDP-sharded models are refused.
* :func:`eager`: inside it, compiled code (a compiled submodule, ``module.compile()``, a compiled function
  called by ``forward``) runs eagerly, so hooks fire and dynamo neither compiles nor sees the probes' hooks;
  its caches stay as they were, and the training loop's next compiled call reuses them.

Both cost nothing when torch's compiler (``torch._dynamo``) or FSDP has never been imported: then nothing
can be compiled or sharded.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from noiseprobe.core.errors import ConfigError


def _sharded(model: nn.Module) -> str | None:
    """The name of the first FSDP-wrapped module of ``model`` (FullyShardedDataParallel or fully_shard)."""
    if "torch.distributed.fsdp" not in sys.modules:
        return None
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    for name, m in model.named_modules():
        if isinstance(m, (FullyShardedDataParallel, FSDPModule)):
            return name or "model"
    return None


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / DataParallel / torch.compile wrappers (module docstring); a one-line
    ConfigError for a model sharded by FSDP."""
    compiled = sys.modules.get("torch._dynamo.eval_frame")
    optimized = getattr(compiled, "OptimizedModule", ())
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif optimized and isinstance(model, optimized):
            model = model._orig_mod
        else:
            break
    sharded = _sharded(model)
    if sharded is not None:
        raise ConfigError(
            "model",
            f"FSDP-sharded ({sharded})",
            "an unsharded model, e.g. DistributedDataParallel (per-sample gradients and curvature products "
            "need each layer's full parameters, which FSDP holds only inside its own forward and backward)",
        )
    return model


@contextmanager
def eager() -> Iterator[None]:
    """Compiled code runs eagerly inside (module docstring)."""
    stance = torch.compiler.set_stance("force_eager") if "torch._dynamo" in sys.modules else nullcontext()
    with stance:
        yield
