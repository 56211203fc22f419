"""docs/failures.md promises only what is tested: every row of its failure-class table names its tests
(``file.py::test`` or ``::test`` after a file), and each named file and test function exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _rows() -> list[list[str]]:
    text = (ROOT / "docs" / "failures.md").read_text()
    table = text.split("## Failure classes", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")][1:]  # the header row left out
    return [[c.strip() for c in ln.strip().strip("|").split(" | ")] for ln in lines if not ln.startswith("|---")]


def _test_file(name: str) -> Path | None:
    return next((p for p in (ROOT / name, ROOT / "tests" / "core" / name, ROOT / "tests" / name) if p.is_file()), None)


def test_every_failure_row_names_tests_that_exist():
    rows = _rows()
    assert len(rows) >= 20
    for cells in rows:
        what, tests = cells[0], cells[-1]
        refs = [r for r in re.findall(r"`([^`]+)`", tests) if r.endswith(".py") or "::" in r]
        assert any("::" in r for r in refs) or any(r.endswith(".py") for r in refs), f"row names no test: {what}"
        current: Path | None = None
        for ref in refs:
            file, _, func = ref.partition("::")
            if file:
                current = _test_file(file)
                assert current is not None, f"{what}: no test file {file}"
            if func:
                assert current is not None, f"{what}: {ref} follows no file"
                assert re.search(rf"^def {re.escape(func)}\(", current.read_text(), re.M), (
                    f"{what}: {current.name} has no test {func}"
                )


def test_the_checker_sees_a_missing_test(tmp_path, monkeypatch):
    """A row naming a test that does not exist fails the check (the check can fail)."""
    import pytest

    fake = tmp_path / "docs"
    fake.mkdir()
    rows = "\n".join(f"| row {i} | x | y | `test_cli.py::test_nothing_{i}` |" for i in range(20))
    (fake / "failures.md").write_text(f"## Failure classes\n\n| failure | a | b | test |\n|---|---|---|---|\n{rows}\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    (tmp_path / "tests" / "core").mkdir(parents=True)
    (tmp_path / "tests" / "core" / "test_cli.py").write_text("def test_something():\n    pass\n")
    with pytest.raises(AssertionError, match="has no test test_nothing_0"):
        test_every_failure_row_names_tests_that_exist()
