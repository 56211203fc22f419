"""NIN paper (001) Fig. 3: the Fig. 2 bottom network (1 × 1024 ReLU MLP) trained with cross-entropy at the
Table 1 CE noise levels (the same sweep, checks and figures, :mod:`noiseprobe.experiments.nin_fig2_bottom`)."""

from __future__ import annotations

from typing import Any, ClassVar

from noiseprobe.experiments._nin_config import preset
from noiseprobe.experiments.nin_fig2_bottom import Fig2Bottom
from noiseprobe.nin.levels import TABLE1


class Fig3(Fig2Bottom):
    """Fig. 3: the Fig. 2 bottom network with cross-entropy and the Table 1 CE levels."""

    id = "nin-fig3"
    title = "NIN Fig. 3: 1x1024 ReLU MLP, cross-entropy, the four phases at the Table 1 CE levels"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": preset(
            seed=2022,
            pool=2,
            hidden=[64],
            loss="ce",
            lr=0.01,
            batch_size=1000,
            epochs=150,
            record_every=5,
            levels=[1e-4, 1.0, 3.0, 10.0],
            n_seeds=3,
        ),
        "full": preset(
            seed=2022,
            dataset="fashion-mnist",
            hidden=[1024],
            loss="ce",
            lr=0.01,
            batch_size=1000,
            epochs=200,
            record_every=2,
            levels=list(TABLE1["ce"]),
            n_seeds=4,
            sigmas_per_chunk=4,
        ),
    }
