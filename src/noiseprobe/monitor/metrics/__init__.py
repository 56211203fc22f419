"""The monitor's built-in metrics, one :class:`~noiseprobe.monitor.metric.Metric` class each, by family.

Importing this package registers them (:func:`~noiseprobe.monitor.metric.register_metric`). A new
metric is a class beside its family (or in a module of its own imported here), with its formula and
source in its docstring and a row in docs/monitor.md.

==================  =====================================================  ===========================
module              metrics (name: class)                                  source
==================  =====================================================  ===========================
:mod:`.noise`       tr_sigma: TrSigma, g_sq: GSq, b_simple: BSimple,       McCandlish et al. 2018;
                    temperature: Temperature, top_k_c: TopKC,              paper 002 eq. 2, Prop. 1
                    two_batch: TwoBatch(ddp_model)
:mod:`.curvature`   sharpness: Sharpness, batch_sharpness:                 Cohen et al. 2021, 2022;
                    BatchSharpness, eoss_ratio: EoSSRatio, top_k_h: TopKH, Andreyev & Beneventano
                    b_noise: BNoise                                        2024; McCandlish eq. 2.6
:mod:`.heavy_tails` tail_index: TailIndex                                  paper 002 §5
:mod:`.layers`      layers: Layers(groups=…)                               Gray et al. 2024
:mod:`.predictions` fluctuation: Fluctuation, niw_decay: NIWDecay(handle), papers 002 Thm 1, 001 eq. 2,
                    label_noise_reg: LabelNoiseReg(sigma=…),               003 Theorems A and B
                    dropout_reg: DropoutReg
==================  =====================================================  ===========================
"""

# isort: off  (the import order is the registration order, which is the order of "all" and of the columns)
from noiseprobe.monitor.metric import DEFAULT, METRICS, Metric, register_metric, resolve_metrics
from noiseprobe.monitor.metrics.curvature import BatchSharpness, BNoise, EoSSRatio, Sharpness, TopKH
from noiseprobe.monitor.metrics.heavy_tails import TailIndex
from noiseprobe.monitor.metrics.layers import Layers
from noiseprobe.monitor.metrics.noise import BSimple, GSq, Temperature, TopKC, TrSigma, TwoBatch
from noiseprobe.monitor.metrics.predictions import DropoutReg, Fluctuation, LabelNoiseReg, NIWDecay

# isort: on

__all__ = [
    "DEFAULT",
    "METRICS",
    "BNoise",
    "BatchSharpness",
    "EoSSRatio",
    "BSimple",
    "DropoutReg",
    "Fluctuation",
    "GSq",
    "LabelNoiseReg",
    "Layers",
    "Metric",
    "NIWDecay",
    "Sharpness",
    "TailIndex",
    "Temperature",
    "TopKC",
    "TopKH",
    "TrSigma",
    "TwoBatch",
    "register_metric",
    "resolve_metrics",
]
