"""The layering of docs/architecture.md, checked on the source: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "noiseprobe"

#: package -> the packages of ours it may import (at any depth); "models" is the module models.py
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "data": {"core", "data"},
    "models": {"core"},
    "probes": {"core", "probes"},
    "nin": {"core", "data", "probes", "nin"},
    "minibatch": {"core", "data", "probes", "minibatch"},
    "limits": {"core", "probes", "limits"},
    "monitor": {"core", "data", "probes", "nin", "minibatch", "limits", "monitor"},
    "experiments": {"core", "data", "models", "probes", "nin", "minibatch", "limits", "monitor", "experiments"},
}


def _imports(path: Path) -> list[str]:
    """The noiseprobe packages a file imports anywhere in it: at module level, in a function, under
    TYPE_CHECKING, or by a literal name handed to ``importlib.import_module`` / ``__import__`` (core reaches
    above itself in none of these ways; the experiments registry is handed to it, ``core/ids.py``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "noiseprobe"]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Call) and node.args and _is_import_call(node.func):
            first = node.args[0]
            if isinstance(first, ast.JoinedStr) and first.values:  # f"noiseprobe.experiments.{module}"
                first = first.values[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names = [first.value]
        for name in names:
            parts = name.split(".")
            if parts[0] == "noiseprobe" and len(parts) > 1 and parts[1] in ALLOWED:
                out.append(parts[1])
    return out


def _is_import_call(func: ast.expr) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in ("import_module", "__import__")
    )


def layer_violations(pkg: str, files: list[Path]) -> list[str]:
    return [f"{f.name} imports noiseprobe.{t}" for f in files for t in _imports(f) if t not in ALLOWED[pkg]]


def test_packages_import_only_the_layers_below_them():
    bad = []
    for pkg in ALLOWED:
        files = [SRC / "models.py"] if pkg == "models" else sorted((SRC / pkg).rglob("*.py"))
        bad += [f"{pkg}/{v}" for v in layer_violations(pkg, files)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "body",
    [
        "from noiseprobe.experiments import REGISTRY",
        "def f():\n    from noiseprobe import experiments\n    return experiments",
        "def f():\n    import noiseprobe.monitor.plots",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from noiseprobe.monitor import NoiseMonitor",
        "import importlib\ndef f(m):\n    return importlib.import_module(f'noiseprobe.experiments.{m}')",
        "def f():\n    return __import__('noiseprobe.monitor')",
    ],
)
def test_the_layer_check_sees_every_kind_of_import_from_core(tmp_path, body):
    planted = tmp_path / "planted.py"
    planted.write_text(body + "\n", encoding="utf-8")
    assert layer_violations("core", [planted]), body
    assert not layer_violations("experiments", [planted])


def _module_name(path: Path) -> str:
    parts = ("noiseprobe",) + path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of ours it imports, at module level, in functions, or under TYPE_CHECKING.
    ``from package import name`` counts as importing ``package.name`` when that is a module, else
    ``package``; relative imports are resolved. A package's ``__init__`` run implicitly by importing one of
    its submodules is not an edge (it would make every package with re-exports circular)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def test_find_cycles_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_sees_function_level_and_type_checking_imports():
    graph = import_graph()
    assert "noiseprobe.core.errors" in graph["noiseprobe.core.report"]
    assert "noiseprobe.monitor.context" in graph["noiseprobe.monitor.metrics.noise"]
    assert "noiseprobe.monitor.monitor" in graph["noiseprobe"]  # a TYPE_CHECKING import
    assert "noiseprobe.monitor.monitor" in graph["noiseprobe.monitor.edge_of_stability"]  # a function-level one


def test_no_import_cycles_in_the_package():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


#: basenames several packages may share: a package's ``__init__``, and ``base`` (the base class and
#: registry of a package of plug-ins: ``probes/rules/base.py``, ``probes/operators/base.py``)
SHARED_NAMES = {"__init__", "base"}
#: packages whose modules are named after something outside the package (the layer rules after the PyTorch
#: module family they factor: ``rules/linear.py`` is nn.Linear's, not ``minibatch/linear.py``'s regression)
NAMESPACES = {"probes/rules"}


def duplicate_module_names(paths: list[Path]) -> dict[str, list[str]]:
    """basename -> the modules that share it (outside SHARED_NAMES and NAMESPACES)."""
    seen: dict[str, list[str]] = {}
    for p in paths:
        rel = p.relative_to(SRC)
        if p.stem not in SHARED_NAMES and rel.parent.as_posix() not in NAMESPACES:
            seen.setdefault(p.stem, []).append(rel.as_posix())
    return {name: where for name, where in seen.items() if len(where) > 1}


def test_each_module_name_names_one_concept():
    """One home per concept (issue 17.5): no two modules of the package share a name."""
    dupes = duplicate_module_names(sorted(SRC.rglob("*.py")))
    assert not dupes, f"modules sharing a name: {dupes}"
    planted = [SRC / "core" / "linalg.py", SRC / "probes" / "linalg.py", SRC / "probes" / "rules" / "linear.py"]
    assert duplicate_module_names(planted + [SRC / "minibatch" / "linear.py"]) == {
        "linalg": ["core/linalg.py", "probes/linalg.py"]
    }
