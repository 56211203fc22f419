"""The layering of docs/architecture.md, checked on the source: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

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
#: lazy (function-level) imports that reach up by name, each for a registry: the runner resolves experiment
#: ids (the report gets the monitor's plotter by registration instead)
LAZY_EXCEPTIONS = {("core", "experiments")}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported noiseprobe package, at module level?) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    top |= {id(n) for node in tree.body if isinstance(node, ast.If) for n in node.body}  # TYPE_CHECKING blocks
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "noiseprobe"]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "noiseprobe" and len(parts) > 1 and parts[1] in ALLOWED:
                out.append((parts[1], id(node) in top))
    return out


def test_packages_import_only_the_layers_below_them():
    bad = []
    for pkg in ALLOWED:
        files = [SRC / "models.py"] if pkg == "models" else sorted((SRC / pkg).rglob("*.py"))
        for f in files:
            for target, at_top in _imports(f):
                if target in ALLOWED[pkg] or (not at_top and (pkg, target) in LAZY_EXCEPTIONS):
                    continue
                bad.append(f"{f.relative_to(SRC)} imports noiseprobe.{target}")
    assert not bad, "\n".join(bad)


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
