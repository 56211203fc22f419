"""Progress bars that stay quiet when output is not a terminal or when asked to."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "", quiet: bool = False) -> Iterator[T]:
    """Wrap ``items`` in a tqdm bar on stderr unless ``quiet`` or stderr is not a terminal."""
    disable = quiet or not sys.stderr.isatty()
    yield from tqdm(items, total=total, desc=desc, disable=disable, leave=False, dynamic_ncols=True)


def warn(message: str) -> None:
    """One line on stderr about something the run handled itself (a corrupt file healed, a skipped run)."""
    print(f"noiseprobe: warning: {message}", file=sys.stderr, flush=True)
