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
#: ids, the report draws a monitor's log directory
LAZY_EXCEPTIONS = {("core", "experiments"), ("core", "monitor")}


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
