"""The code examples of README.md and docs/*.md run, and import from the top level.

Each page's ```python blocks run in order in one namespace (a later block may use an earlier one's names),
in a temporary working directory. A comment line just before a block marks it:

* ``<!-- example: skip -->`` illustrative only (it uses the reader's model, loader, ...): never run;
* ``<!-- example: slow -->`` runs only with ``pytest -m slow``; later blocks must not depend on it.

A hidden set-up for the next block (e.g. a small model standing in for the reader's) is an HTML comment
``<!-- example-setup`` ... ``-->``, invisible on the rendered page. docs/architecture.md is prose only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import noiseprobe as npb

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "architecture.md")
MARKS = ("skip", "slow")


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # line of the opening fence (1-based)
    code: str
    mark: str | None  # None, "skip", "slow"
    setup: str  # hidden set-up run just before the block


def blocks(page: Path) -> list[Block]:
    """The ```python blocks of a page with their marks and hidden set-ups."""
    lines = page.read_text().splitlines()
    out: list[Block] = []
    mark, setup, i = None, "", 0
    while i < len(lines):
        line = lines[i].strip()
        if m := re.fullmatch(r"<!-- example: (\w+) -->", line):
            assert m[1] in MARKS, f"{page.name}:{i + 1}: unknown mark {m[1]!r} (allowed: {MARKS})"
            mark = m[1]
        elif line == "<!-- example-setup":
            end = lines.index("-->", i)
            setup, i = "\n".join(lines[i + 1 : end]), end
        elif line.startswith("```python"):
            end = lines.index("```", i + 1)
            out.append(Block(page.name, i + 1, "\n".join(lines[i + 1 : end]), mark, setup))
            mark, setup, i = None, "", end
        elif line.startswith("```"):  # another language: skip to its closing fence
            i = lines.index("```", i + 1)
        i += 1
    return out


def run_page(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: bool) -> int:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs_example__"}
    ran = 0
    for b in blocks(page):
        if b.mark == "skip" or (b.mark == "slow" and not slow):
            continue
        for part, what in ((b.setup, "set-up"), (b.code, "block")):
            if part:
                code = compile(part, f"{b.page}:{b.line} ({what})", "exec")
                exec(code, namespace)  # noqa: S102 - the docs' own examples
        ran += 1
    return ran


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_examples_run(page, tmp_path, monkeypatch):
    run_page(page, tmp_path, monkeypatch, slow=False)


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if any(b.mark == "slow" for b in blocks(p))], ids=lambda p: p.name)
def test_examples_run_with_slow_blocks(page, tmp_path, monkeypatch):
    run_page(page, tmp_path, monkeypatch, slow=True)


DEEP_IMPORT = re.compile(r"^\s*from (noiseprobe\.[\w.]+) import (\([^)]*\)|.+)$", re.M)  # one line or (...)


def test_examples_import_exported_names_from_the_top_level():
    """A name in ``noiseprobe.__all__`` is used as ``npb.X`` (or ``from noiseprobe import X``), never deep."""
    deep = []
    for page in PAGES:
        for b in blocks(page):
            for module, names in DEEP_IMPORT.findall(b.setup + "\n" + b.code):
                for name in re.split(r"[,\s()]+", names):
                    if name.split(" as ")[0] in npb.__all__:
                        deep.append(f"{b.page}:{b.line}: from {module} import {name}")
    assert deep == []


def test_most_examples_run():
    """Marks are the exception: at least two thirds of the blocks run in the default suite."""
    all_blocks = [b for p in PAGES for b in blocks(p)]
    default = [b for b in all_blocks if b.mark is None]
    assert len(default) >= 2 * len(all_blocks) / 3, [(b.page, b.line, b.mark) for b in all_blocks if b.mark]
