"""Readable units, checked on the source (issue 17 point 3): no library function above ``MAX_FUNCTION`` lines
(``end_lineno - lineno + 1`` of the ``def``, docstring included) unless the comment right above its ``def``
(or its decorators) starts with ``# long:`` and gives the reason; no experiment module above
``MAX_EXPERIMENT_MODULE`` lines."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "noiseprobe"
MAX_FUNCTION = 80
MAX_EXPERIMENT_MODULE = 300
MARK = "# long:"


def long_functions(source: str, limit: int = MAX_FUNCTION) -> list[tuple[str, int, int]]:
    """(name, line of the ``def``, length) of each function of ``source`` longer than ``limit`` lines whose
    comment block directly above the ``def`` or its first decorator has no line starting with ``# long:``
    followed by a reason."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        assert node.end_lineno is not None
        length = node.end_lineno - node.lineno + 1
        if length > limit and not _has_reason(lines, min([node.lineno, *(d.lineno for d in node.decorator_list)])):
            found.append((node.name, node.lineno, length))
    return found


def _has_reason(lines: list[str], first: int) -> bool:
    """Whether the contiguous comment lines above line ``first`` (1-based) hold ``# long: <reason>``."""
    i = first - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        text = lines[i].strip()
        if text.startswith(MARK) and text[len(MARK) :].strip():
            return True
        i -= 1
    return False


def long_module(source: str, limit: int = MAX_EXPERIMENT_MODULE) -> int | None:
    """The line count of ``source`` when it is above ``limit``, else None."""
    n = len(source.splitlines())
    return n if n > limit else None


def test_no_library_function_is_long_without_a_reason() -> None:
    offenders = [
        f"{path.relative_to(SRC.parent)}:{line} {name} ({length} lines)"
        for path in sorted(SRC.rglob("*.py"))
        for name, line, length in long_functions(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, f"functions over {MAX_FUNCTION} lines without a '{MARK}' reason above the def: {offenders}"


def test_no_experiment_module_is_long() -> None:
    offenders = {
        path.name: n
        for path in sorted((SRC / "experiments").glob("*.py"))
        if (n := long_module(path.read_text(encoding="utf-8"))) is not None
    }
    assert not offenders, f"experiment modules over {MAX_EXPERIMENT_MODULE} lines: {offenders}"


def _function(lines: int, above: str = "", decorated: bool = False) -> str:
    body = "".join(f"    x{i} = {i}\n" for i in range(lines - 1))
    return f"import functools\n\n{above}{'@functools.cache' + chr(10) if decorated else ''}def f():\n{body}"


def test_the_checks_can_fail() -> None:
    """Planted cases through the same checkers: a function of 81 lines fails, of 80 passes; a ``# long:``
    comment with a reason right above the def or its decorator lets it pass, one without a reason, one
    separated by a blank line or a plain comment does not; nested functions are checked too."""
    assert long_functions(_function(81)) == [("f", 3, 81)]
    assert long_functions(_function(80)) == []
    assert long_functions(_function(81, "# long: one fused loop keeps the lanes in registers\n")) == []
    assert long_functions(_function(81, "# long: a reason\n# more of it\n", decorated=True)) == []
    assert long_functions(_function(81, "# long:\n")) == [("f", 4, 81)]
    assert long_functions(_function(81, "# long: a reason\n\n")) == [("f", 5, 81)]
    assert long_functions(_function(81, "# it is long\n", decorated=True)) == [("f", 5, 81)]
    nested = (
        "def outer():\n" + "".join("    " + line + "\n" for line in _function(81).splitlines()[2:]) + "    return f\n"
    )
    assert [name for name, _, _ in long_functions(nested)] == ["outer", "f"]
    assert long_module("x = 1\n" * 301) == 301
    assert long_module("x = 1\n" * 300) is None
