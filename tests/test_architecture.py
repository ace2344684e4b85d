"""The package's shape: no import circle, imports at the top, short functions, modules of one concept.

These are the rules docs/ARCHITECTURE.md ("Where things live") states; this file keeps them true:

- the import graph of ``geoens`` (top-level and function-level imports alike) has no cycle;
- a function-level import exists only to defer a heavy optional dependency (torch, matplotlib, ...),
  directly or through a ``geoens`` module that imports one at its top, and says so in a ``# deferred:``
  comment on its line or the line above;
- no module is longer than ``MAX_MODULE_LINES`` and no function has more than ``MAX_STATEMENTS``
  statements (nested functions count separately);
- every module sits on a layer of the map in docs/ARCHITECTURE.md and imports only its own or lower layers;
- each file format is parsed in exactly one module (``FORMAT_HOMES``) and each public function or
  class name is defined in one module only.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "geoens"
MAX_MODULE_LINES = 600
MAX_STATEMENTS = 60
#: Third-party packages heavy or optional enough that a module may import them inside a function.
HEAVY = frozenset(
    {"torch", "torchvision", "timm", "transformers", "huggingface_hub", "matplotlib", "netCDF4", "geopandas"}
)


@dataclass(frozen=True)
class Import:
    """One import statement found in a module."""

    module: str  # importing module, dotted below geoens ("labels", "geoclip.towers")
    target: str  # imported module, absolute ("geoens.labels", "torch.nn")
    line: int
    function: str | None  # enclosing function, None at module level (incl. if/try blocks)
    type_checking: bool


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts) or "__init__"] = path
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
        if base == "geoens":
            return [f"geoens.{a.name}" for a in node.names]
        return [base]
    pkg = ["geoens", *module.split(".")]
    is_pkg = MODULES.get(module, Path()).name == "__init__.py"
    anchor = pkg if is_pkg else pkg[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)]
    base = ".".join([*anchor, *([node.module] if node.module else [])])
    if node.module is None:
        return [f"{base}.{a.name}" for a in node.names]
    return [base]


def _imports(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def visit(node: ast.AST, function: str | None, tc: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                yield from visit(child, function or child.name, tc)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from visit(child, function, True)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(module, alias.name, child.lineno, function, tc)
            elif isinstance(child, ast.ImportFrom):
                for target in _resolve(module, child):
                    yield Import(module, target, child.lineno, function, tc)
            else:
                yield from visit(child, function, tc)

    yield from visit(tree, None, False)


ALL_IMPORTS = [imp for name, path in MODULES.items() for imp in _imports(name, path)]


def _internal(target: str) -> str | None:
    """The geoens module an import target names, or None for third-party imports."""
    if target != "geoens" and not target.startswith("geoens."):
        return None
    parts = target.split(".")[1:]
    while parts and ".".join(parts) not in MODULES:
        parts = parts[:-1]
    return ".".join(parts) if parts else "__init__"


def import_graph() -> dict[str, set[str]]:
    """Module -> geoens modules it imports (any level, type-checking imports excluded)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in ALL_IMPORTS:
        dep = _internal(imp.target)
        if dep is not None and dep != imp.module and not imp.type_checking:
            graph[imp.module].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def heavy_modules() -> set[str]:
    """geoens modules that import a HEAVY package at their top level, directly or through each other."""
    top: dict[str, set[str]] = {m: set() for m in MODULES}
    heavy: set[str] = set()
    for imp in ALL_IMPORTS:
        if imp.function is not None or imp.type_checking:
            continue
        dep = _internal(imp.target)
        if dep is not None:
            top[imp.module].add(dep)
        elif imp.target.split(".")[0] in HEAVY:
            heavy.add(imp.module)
    changed = True
    while changed:
        changed = False
        for m, deps in top.items():
            if m not in heavy and deps & heavy:
                heavy.add(m)
                changed = True
    return heavy


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, f"import cycles: {found}"


def test_function_level_imports_only_defer_heavy_dependencies() -> None:
    heavy = heavy_modules()
    bad = []
    for imp in ALL_IMPORTS:
        if imp.function is None:
            continue
        dep = _internal(imp.target)
        is_heavy = imp.target.split(".")[0] in HEAVY if dep is None else dep in heavy
        lines = MODULES[imp.module].read_text(encoding="utf-8").splitlines()
        commented = any("# deferred" in lines[i] for i in (imp.line - 2, imp.line - 1) if i >= 0)
        if not (is_heavy and commented):
            why = "not a heavy dependency" if not is_heavy else "no '# deferred:' comment"
            bad.append(f"{imp.module}.{imp.function} line {imp.line}: {imp.target} ({why})")
    assert not bad, "\n".join(bad)


def statement_counts(path: Path) -> Iterator[tuple[str, int]]:
    """(function name, statements in its body, nested functions excluded) for every function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def count(node: ast.AST) -> int:
        n = 0
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                n += 1
                continue
            if isinstance(child, ast.stmt):
                n += 1
            n += count(child)
        return n

    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, count(node)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_short_and_its_functions_shorter(module: str) -> None:
    path = MODULES[module]
    n_lines = len(path.read_text(encoding="utf-8").splitlines())
    assert n_lines <= MAX_MODULE_LINES, f"{path.name}: {n_lines} lines"
    long = [(name, n) for name, n in statement_counts(path) if n > MAX_STATEMENTS]
    assert long == [], f"{path.name}: functions over {MAX_STATEMENTS} statements"


#: Each on-disk format, the one module allowed to parse it, and a regular expression that finds a parser.
FORMAT_HOMES = {
    "msgpack shards": ("shards", r"^\s*(import msgpack|from msgpack)"),
    "GeoEstimation partition CSV": ("partitions", r"min_concept_probability"),
    "label tables": ("labeltable", r"glob\(\"part-\*\.parquet\"\)|f\"part-\{"),
}
#: Public names that several modules may define (entry points).
SHARED_NAMES = frozenset({"main", "build_parser"})


@pytest.mark.parametrize("fmt", sorted(FORMAT_HOMES))
def test_each_format_is_parsed_in_one_module(fmt: str) -> None:
    home, pattern = FORMAT_HOMES[fmt]
    text = {m: p.read_text(encoding="utf-8") for m, p in MODULES.items()}
    where = sorted(m for m, t in text.items() if re.search(pattern, t, flags=re.MULTILINE))
    assert where == [home], f"{fmt} parsed in {where}"


def test_each_public_name_has_one_home() -> None:
    homes: dict[str, list[str]] = {}
    for module, path in MODULES.items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_"):
                homes.setdefault(node.name, []).append(module)
    twice = {name: where for name, where in homes.items() if len(where) > 1 and name not in SHARED_NAMES}
    assert not twice, "\n".join(f"{n}: {w}" for n, w in sorted(twice.items()))


def test_the_checks_catch_a_cycle_and_a_long_function(tmp_path: Path) -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_STATEMENTS + 1))
    (tmp_path / "m.py").write_text(f"def f():\n{body}\n")
    assert dict(statement_counts(tmp_path / "m.py")) == {"f": MAX_STATEMENTS + 1}


ARCHITECTURE = SRC.parents[1] / "docs" / "ARCHITECTURE.md"


def documented_layers() -> dict[str, int]:
    """Module -> layer, from the "Where things live" table of docs/ARCHITECTURE.md."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `geoens\.([\w.]+)` \| (\d+) \|", section, flags=re.MULTILINE)
    layers: dict[str, int] = {}
    for module, layer in rows:
        assert module not in layers, f"{module} listed twice in {ARCHITECTURE.name}"
        layers[module] = int(layer)
    return layers


def test_every_module_is_on_the_map() -> None:
    layers = documented_layers()
    assert sorted(layers) == sorted(m for m in MODULES if m != "__init__")


def test_imports_go_down_the_layers() -> None:
    """A module imports only modules of its own or a lower layer: the map in the docs is the import rule."""
    layers = documented_layers()
    up = [
        f"{m} (layer {layers[m]}) imports {d} (layer {layers[d]})"
        for m, deps in import_graph().items()
        for d in sorted(deps)
        if m in layers and d in layers and layers[d] > layers[m]
    ]
    assert not up, "\n".join(up)


@pytest.mark.parametrize("doc", ["README.md", "docs/DECISIONS.md", "docs/ARCHITECTURE.md", "docs/cluster.md"])
def test_docs_name_tests_that_exist(doc: str) -> None:
    """Every ``tests/test_x.py[::name]`` and backticked ``test_name`` a document cites exists."""
    tests_dir = SRC.parents[1] / "tests"
    bodies = {p.name: p.read_text(encoding="utf-8") for p in tests_dir.glob("*.py")}
    text = (SRC.parents[1] / doc).read_text(encoding="utf-8")
    missing = []
    for m in re.finditer(r"(test_[a-z0-9_]+)\.py(?:::([A-Za-z0-9_]+))?", text):
        body = bodies.get(f"{m.group(1)}.py")
        if body is None or (m.group(2) and f"def {m.group(2)}(" not in body):
            missing.append(m.group(0))
    for m in re.finditer(r"`(test_[a-z0-9_]+)`", text):
        if f"{m.group(1)}.py" not in bodies and not any(f"def {m.group(1)}(" in b for b in bodies.values()):
            missing.append(m.group(1))
    assert not missing, f"{doc} cites tests that do not exist: {missing}"
