"""Table 1 of paper 001: the example noise levels of the four phases for the MLPs of Figs. 2-3.

The table gives σε² as a coefficient c times a unit that scales with the run (docs/theory/noise_injection_nodes.md §2):

    MSE: σε² = c · d_in / (N_w η)        CE: σε² = c · d_in / η

(d_in the input dimension, N_w the width of the NIN's layer, η the learning rate). At the paper's sizes
(d_in = 784, N_w = 1024, η = 0.01) the units are 76.56 (MSE) and 78 400 (CE). These are example levels
of the panels, not boundaries. Noise is returned as σ (``sigma``) and its square as ``sigma2``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_choice, check_int, check_real
from noiseprobe.nin.phases import PHASES

LOSSES = ("mse", "ce")
#: Table 1 coefficients c of σε² per loss, in the order of :data:`~noiseprobe.nin.phases.PHASES`
TABLE1: dict[str, tuple[float, float, float, float]] = {"mse": (1e-4, 30.0, 47.0, 50.0), "ce": (1e-4, 0.1, 1.0, 1.8)}
#: Table 1 as printed in docs/theory/noise_injection_nodes.md §2 at d_in = 784, N_w = 1024, η = 0.01: σε² per phase
TABLE1_SIGMA2_REFERENCE: dict[str, tuple[float, float, float, float]] = {
    "mse": (7.66e-3, 2297.0, 3598.0, 3828.0),
    "ce": (7.84, 7840.0, 78400.0, 141120.0),
}
#: the sizes at which :data:`TABLE1_SIGMA2_REFERENCE` holds
PAPER_SIZES = {"d_input": 784, "n_w": 1024, "lr": 0.01}


def sigma2_unit(loss: str, *, d_input: int, n_w: int, lr: float) -> float:
    """The unit of Table 1's σε² levels: d_in/(N_w η) for ``"mse"``, d_in/η for ``"ce"``."""
    check_choice("loss", loss, LOSSES)
    check_int("d_input", d_input, lo=1)
    check_int("n_w", n_w, lo=1)
    check_real("lr", lr, lo=0.0, lo_open=True)
    return d_input / (n_w * lr) if loss == "mse" else d_input / lr


def level_sigmas(coefficients: list[float] | np.ndarray, *, loss: str, d_input: int, n_w: int, lr: float) -> np.ndarray:
    """σε = √(c · unit) for each Table 1 coefficient c (positive)."""
    c = np.asarray(coefficients, dtype=np.float64)
    if c.ndim != 1 or not (np.isfinite(c).all() and (c > 0).all()):
        raise ConfigError("coefficients", list(np.atleast_1d(c)), "a 1-d list of positive finite numbers")
    return np.sqrt(c * sigma2_unit(loss, d_input=d_input, n_w=n_w, lr=lr))


def table1(*, d_input: int = 784, n_w: int = 1024, lr: float = 0.01) -> pd.DataFrame:
    """Table 1 as rows (loss, phase, coefficient c, sigma2 = c·unit, sigma = √sigma2)."""
    rows = []
    for loss, cs in TABLE1.items():
        unit = sigma2_unit(loss, d_input=d_input, n_w=n_w, lr=lr)
        for phase, c in zip(PHASES, cs):
            rows.append(
                {"loss": loss, "phase": phase, "coefficient": c, "sigma2": c * unit, "sigma": float(np.sqrt(c * unit))}
            )
    table: pd.DataFrame = pd.DataFrame(rows)
    return table


__all__ = ["LOSSES", "PAPER_SIZES", "TABLE1", "TABLE1_SIGMA2_REFERENCE", "level_sigmas", "sigma2_unit", "table1"]
