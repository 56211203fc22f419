"""One figure style for every experiment, and atomic saving."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from noiseprobe.core.store import atomic_write  # noqa: E402

#: colours of the four NIN phases, used wherever phases are shaded
PHASE_COLOURS = {"decoupled": "#9ecae1", "decay": "#a1d99b", "catapult": "#fdae6b", "divergent": "#fc9272"}

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 110,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.3,
}


def new_figure(ncols: int = 1, nrows: int = 1, *, width: float = 4.0, height: float = 3.2, **kw):
    """A (fig, axes) pair in the project style; ``axes`` is an array unless 1×1."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=True, constrained_layout=True, **kw
        )
    return fig, axes


def savefig(fig: Figure, path: Path | str) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    path = Path(path)
    buf = io.BytesIO()
    with plt.rc_context(STYLE):
        fig.savefig(buf, format="png")
    atomic_write(path, buf.getvalue())
    plt.close(fig)
    return path
