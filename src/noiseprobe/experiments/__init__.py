"""Registry of reproduced figures and tables: id -> (module, class name, one-line description).

Modules are imported only when their experiment is used, so one experiment's import cost (or
breakage) never affects another.
"""

from __future__ import annotations

import importlib

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.experiment import Experiment

#: id -> (module under noiseprobe.experiments, class name, description)
REGISTRY: dict[str, tuple[str, str, str]] = {
    "nin-fig1": ("nin_fig1", "Fig1", "NIN paper Fig. 1: NIW/train/test decay and decay times vs sigma, 3x1024 MLP, CE"),
    "nin-fig2-top": ("nin_toy", "Fig2Top", "NIN paper Fig. 2 top: linear toy model, four regimes and phase diagram"),
    "nin-fig2-bottom": (
        "nin_fig2_bottom",
        "Fig2Bottom",
        "NIN paper Fig. 2 bottom: 1x1024 MLP, MSE, Table 1 noise levels",
    ),
    "nin-fig3": ("nin_fig3", "Fig3", "NIN paper Fig. 3: 1x1024 MLP, cross-entropy, Table 1 noise levels"),
    "nin-table1": ("nin_table1", "Table1", "NIN paper Table 1: noise levels from d_input, N_w and the learning rate"),
    "mbn-fig1": (
        "mbn_fig1",
        "Fig1",
        "Minibatch-noise Fig. 1: loss variance vs width (SGD/Adam); negative optimal weight decay",
    ),
    "mbn-fig1-left": ("mbn_fig1", "Fig1Left", "Minibatch-noise Fig. 1 left/middle only: loss variance vs width"),
    "mbn-fig1-right": (
        "mbn_fig1",
        "Fig1Right",
        "Minibatch-noise Fig. 1 right only: logistic regression, negative optimal weight decay",
    ),
    "mbn-fig2": (
        "mbn_tails",
        "Fig2",
        "Minibatch-noise Fig. 2: stationary distribution and tail index vs batch size at a*lr = 1",
    ),
    "mbn-fig3": (
        "mbn_fig3",
        "Fig3",
        "Minibatch-noise Fig. 3: 1d fluctuation vs batch size, exact vs Hessian approximations",
    ),
    "mbn-fig4": ("mbn_fig4", "Fig4", "Minibatch-noise Fig. 4: parameter distributions in 1d and high dimension"),
    "mbn-fig5": ("mbn_fig5", "Fig5", "Minibatch-noise Fig. 5: test loss vs weight decay with divergence lines"),
    "mbn-fig6": ("mbn_fig6", "Fig6", "Minibatch-noise Fig. 6: high-dimensional regression across N/D"),
    "mbn-fig7": (
        "mbn_tails",
        "Fig7",
        "Minibatch-noise Fig. 7: tail index vs learning rate (eq. 93, exact, continuous, measured)",
    ),
    "mbn-table2": ("mbn_table2", "Table2", "Minibatch-noise Table 2: SGD noise vs Hessian approximation"),
    "sl-fig1": ("sl_fig1", "Fig1", "Singular-limits Fig. 1: GD stops, noisy GD keeps moving along the zero-loss set"),
    "sl-fig2": ("sl_fig2", "Fig2", "Singular-limits Fig. 2: fast approach, slow drift, limiting flow overlaid"),
    "sl-fig3": ("sl_fig3", "Fig3", "Singular-limits Fig. 3: non-degenerate vs degenerate noise, two clocks"),
    "sl-fig4": ("sl_fig4", "Fig4", "Singular-limits Fig. 4: independent vs correlated noise end points"),
    "gns-critical-batch": (
        "gns_critical_batch",
        "CriticalBatch",
        "McCandlish et al. 2018: steps/examples to a target loss vs batch size; B_crit vs the monitor's B_simple, B_noise",
    ),
    "eos-sharpness": (
        "eos_sharpness",
        "EoSSharpness",
        "Cohen et al. 2021: full-batch GD sharpness rises to 2/lr and hovers (edge of stability)",
    ),
    "eoss-batch-sharpness": (
        "eoss_batch_sharpness",
        "EoSSBatchSharpness",
        "Andreyev & Beneventano 2024: SGD batch sharpness stabilises at 2/lr, full-batch lambda_max below it",
    ),
    "gns-layers": (
        "gns_layers",
        "GNSLayers",
        "Gray et al. 2024: normalisation-layer B_simple against total B_simple through training (small GPT)",
    ),
}

#: the quick runs `noiseprobe demo` makes, one or more per paper
DEMO: tuple[str, ...] = ("nin-fig2-top", "nin-fig2-bottom", "nin-table1", "mbn-fig3", "mbn-fig2", "sl-fig2")


def get(exp_id: str) -> Experiment:
    """Instantiate the experiment registered under ``exp_id``, or a user's ``package.module:Class``."""
    if ":" in exp_id and exp_id not in REGISTRY:
        module, _, cls = exp_id.partition(":")
        try:
            obj = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError) as exc:
            raise ConfigError("experiment", exp_id, f"an importable module:Class ({exc})") from None
        if not (isinstance(obj, type) and issubclass(obj, Experiment)):
            raise ConfigError("experiment", exp_id, "a subclass of noiseprobe.core.experiment.Experiment")
        return obj()
    if exp_id not in REGISTRY:
        raise ConfigError("experiment", exp_id, "one of " + ", ".join(REGISTRY) + " (see `noiseprobe list`)")
    module, cls, _ = REGISTRY[exp_id]
    return getattr(importlib.import_module(f"noiseprobe.experiments.{module}"), cls)()


def available(exp_id: str) -> bool:
    """True when the experiment's module exists and imports."""
    try:
        get(exp_id)
    except (ImportError, AttributeError):
        return False
    return True
