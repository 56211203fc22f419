"""Build the API reference from the docstrings with pdoc: ``python docs/api.py [OUT]`` (``make api``)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

#: the packages documented (their modules follow); the top level lists the public entry points
PACKAGES = (
    "noiseprobe",
    "noiseprobe.core",
    "noiseprobe.data",
    "noiseprobe.probes",
    "noiseprobe.nin",
    "noiseprobe.minibatch",
    "noiseprobe.limits",
    "noiseprobe.experiments",
)


def build(out: Path) -> list[str]:
    """Write the HTML reference to ``out``; return pdoc's warnings (an empty list when clean)."""
    import pdoc

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.render.configure(docformat="markdown", footer_text="noiseprobe API reference")
        pdoc.pdoc(*PACKAGES, output_directory=Path(out))
    return [f"{w.category.__name__}: {w.message}" for w in caught]


if __name__ == "__main__":
    problems = build(Path(sys.argv[1] if len(sys.argv) > 1 else "build/api"))
    print("\n".join(problems) or "API reference written, no warnings")
    sys.exit(1 if problems else 0)
