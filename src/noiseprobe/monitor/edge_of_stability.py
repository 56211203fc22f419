"""Gradient descent at the edge of stability (Cohen et al., ICLR 2021, "Gradient Descent on Neural Networks
Typically Occurs at the Edge of Stability").

Full-batch GD with step size η is stable on a quadratic of curvature λ while λ < 2/η. Cohen et al. find that
on neural networks the sharpness λ_max(H) first *rises* (progressive sharpening) until it reaches 2/η, then
*hovers* just above it while the loss keeps decreasing, non-monotonically, over long times.

:func:`gd_with_sharpness` runs full-batch GD on a user's model and measures the sharpness with
:class:`~noiseprobe.monitor.NoiseMonitor` (its ``sharpness`` metric on the full batch, so ``eos_ratio`` =
η·λ_max/2 for plain GD); :func:`eos_phases` splits a run at the first crossing and summarises both phases:

* progressive sharpening: the sharpness from its pre-crossing minimum to the crossing, averaged in
  ``windows`` equal windows of measurements (they should increase);
* hovering: the median and the 10 %/90 % quantiles of η·λ_max/2 over the measurements at least
  ``settle`` steps after the first crossing;
* the loss over the same phase: the mean of its last quarter over the mean of its first quarter, and the
  fraction of steps at which it rose.

A run whose loss became non-finite or exceeded 1e8 has diverged: only ``diverged_step`` is set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from noiseprobe.core import divergence
from noiseprobe.core.validation import check_int, check_real


def gd_with_sharpness(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    x: Any,
    y: Any,
    *,
    lr: float,
    steps: int,
    measure_every: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``steps`` of full-batch GD (``torch.optim.SGD``) on mean(loss_fn(model(x), y)), the monitor's
    ``sharpness`` measured on the full batch every ``measure_every`` steps (and at the end). Stops when the
    loss has diverged: non-finite or above 10⁸ × the initial loss (the divergence rule,
    :mod:`noiseprobe.core.divergence`; the edge of stability's loss spikes stay orders of magnitude below). Returns (losses: step, loss, one row per step;
    sharpness: the monitor's history, step, sharpness, eos_ratio, sharpness_hvps)."""
    from noiseprobe.monitor.monitor import NoiseMonitor

    check_real("lr", lr, lo=0.0, lo_open=True)
    check_int("steps", steps, lo=1)
    check_int("measure_every", measure_every, lo=1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    mon = NoiseMonitor(model, loss_fn, every=measure_every, metrics=["sharpness"], verbose=False)
    losses = np.full(steps + 1, math.nan)
    limit = math.inf
    for step in range(steps + 1):
        opt.zero_grad()
        loss = loss_fn(model(x), y).mean()
        value = float(loss.detach())
        losses[step] = value
        if step == 0:
            limit = float(divergence.bound(abs(value)))
        if not (math.isfinite(value) and abs(value) <= limit):
            break
        if step == steps:
            mon.measure((x, y), opt)
            break
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        mon.step((x, y), opt)
        opt.step()
    hist = mon.history
    hist = (
        hist.drop_duplicates("step", keep="last")
        if len(hist)
        else pd.DataFrame(columns=["step", "sharpness", "eos_ratio", "sharpness_hvps"])
    )
    return pd.DataFrame({"step": np.arange(steps + 1), "loss": losses}), hist.reset_index(drop=True)


@dataclass(frozen=True)
class EoSPhases:
    """What :func:`eos_phases` measures (NaN where the run does not have the phase)."""

    first_crossing: float  # first measured step with η·λ/2 ≥ 1
    max_ratio: float  # max of η·λ/2 over the run
    sharpening_windows: list[float]  # mean sharpness in equal windows from the pre-crossing minimum to the crossing
    sharpening_factor: float  # sharpness at the crossing / its pre-crossing minimum
    hover_n: int  # measurements in the hovering phase
    hover_median: float
    hover_p10: float
    hover_p90: float
    loss_ratio: float  # mean loss, last quarter / first quarter of the phase after the crossing
    loss_rise_fraction: float  # fraction of steps after the crossing at which the loss rose
    diverged_step: float = (
        math.nan
    )  # first step whose loss diverged: non-finite or above 10⁸ × the first (then nothing else is measured)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def eos_phases(losses: pd.DataFrame, sharpness: pd.DataFrame, *, settle: int, windows: int = 4) -> EoSPhases:
    """Split at the first measurement with ``eos_ratio`` ≥ 1 and summarise both phases (module docstring).
    ``losses``: step, loss; ``sharpness``: step, sharpness, eos_ratio (from :func:`gd_with_sharpness`)."""
    check_int("settle", settle, lo=0)
    check_int("windows", windows, lo=2)
    nan = math.nan
    lv_all = losses["loss"].to_numpy(dtype=float)
    bad = np.nonzero(divergence.diverged(lv_all[:, None], divergence.bound(abs(lv_all[:1])), axis=1))[0]
    if bad.size:
        return EoSPhases(nan, nan, [], nan, 0, nan, nan, nan, nan, nan, float(losses["step"].iloc[int(bad[0])]))
    sh = sharpness[np.isfinite(sharpness["eos_ratio"].to_numpy(dtype=float))]
    st, lam, ratio = (sh[c].to_numpy(dtype=float) for c in ("step", "sharpness", "eos_ratio"))
    max_ratio = float(ratio.max()) if ratio.size else nan
    above = np.nonzero(ratio >= 1.0)[0]
    if above.size == 0:
        return EoSPhases(nan, max_ratio, [], nan, 0, nan, nan, nan, nan, nan)
    j = int(above[0])
    k_cross = float(st[j])
    lo = int(np.argmin(lam[: j + 1]))
    rise = lam[lo : j + 1]
    wins = [float(w.mean()) for w in np.array_split(rise, windows)] if rise.size >= windows else []
    factor = float(lam[j] / lam[lo]) if lam[lo] > 0 else nan
    hov = ratio[st >= k_cross + settle]
    q10, q50, q90 = (float(v) for v in np.quantile(hov, [0.1, 0.5, 0.9])) if hov.size else (nan, nan, nan)
    lv = losses.loc[losses["step"] >= k_cross, "loss"].to_numpy(dtype=float)
    lv = lv[np.isfinite(lv)]
    q = lv.size // 4
    loss_ratio = float(lv[-q:].mean() / lv[:q].mean()) if q >= 1 else nan
    rises = float(np.mean(np.diff(lv) > 0)) if lv.size >= 2 else nan
    return EoSPhases(k_cross, max_ratio, wins, factor, int(hov.size), q50, q10, q90, loss_ratio, rises)


__all__ = ["gd_with_sharpness", "EoSPhases", "eos_phases"]
