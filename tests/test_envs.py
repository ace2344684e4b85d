"""The conda env files provide exactly what their rules' scripts import (checked statically, not solved).

This machine cannot reach conda channels, so ``envs/*.yaml`` are never solved here. Instead, for every rule
in ``rules/*.smk`` this test takes its ``conda:`` env file and its ``script:``, collects the imports of the
script and, transitively, of every ``geoens`` module it reaches, and checks that the env file lists each
third-party distribution under its conda-forge name (or in its ``pip:`` section); and that the env lists
nothing that none of its scripts needs.

Which imports count (a sound over-approximation, kept simple):

* every ``import``/``from ... import`` anywhere in the script and in each reached ``geoens`` module: at
  module level *and* inside functions and methods. A deferred import still runs when its function is
  called, and deciding statically which functions a script cannot reach is not worth the risk; so a heavy
  import belongs in a module that the env's scripts do not import at all.
* except imports under ``if TYPE_CHECKING:`` and inside a ``try:`` whose handlers catch ``ImportError``,
  ``ModuleNotFoundError``, ``Exception`` or everything (optional imports with a fallback);
* ``geoens.a.x`` imports are followed into ``src/geoens/a/x.py`` (and every ``__init__.py`` on the way);
  ``importlib.util.find_spec("name")`` with a literal name counts as needing distribution ``name`` (the
  GeoCLIP adapter finds the ``geoclip`` wheel's weight files that way without importing it);
* standard-library modules (``sys.stdlib_module_names``) need nothing.

The package itself must be installed into every env from ``..``; the geo/report envs without extras (so no
torch), the torch env with ``[torch]``. Every conda dependency is pinned.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "geoens"

#: Top-level import name -> accepted conda-forge (or pip) distribution names. Others: the lower-case name.
DISTRIBUTIONS: dict[str, set[str]] = {
    "yaml": {"pyyaml"},
    "PIL": {"pillow"},
    "msgpack": {"msgpack-python"},
    "netCDF4": {"netcdf4"},
    "skimage": {"scikit-image"},
    "sklearn": {"scikit-learn"},
    "cv2": {"opencv", "py-opencv"},
    "osgeo": {"gdal"},
    "torch": {"pytorch", "pytorch-cpu", "pytorch-gpu"},
    "matplotlib": {"matplotlib", "matplotlib-base"},
    "huggingface_hub": {"huggingface_hub"},
    "global_land_mask": {"global-land-mask"},
}
#: Entries every env may list without a script importing them.
ALWAYS_ALLOWED = {"python", "pip"}
#: Handler exception names that make a ``try:`` block's imports optional.
OPTIONAL_GUARDS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def distributions(import_name: str) -> set[str]:
    """Accepted distribution names for a top-level import name."""
    return DISTRIBUTIONS.get(import_name, {import_name.lower()})


@dataclass
class Rule:
    """A rule's name, env file and script (paths resolved from ``rules/``)."""

    name: str
    smk: Path
    conda: Path | None
    script: Path | None
    other_action: bool


def workflow_rules() -> list[Rule]:
    """Every ``rule`` of ``rules/*.smk`` with its ``conda:`` and ``script:`` (``shell:``/``run:`` noted)."""
    out = []
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        text = smk.read_text()
        starts = [(m.start(), m.group(1)) for m in re.finditer(r"^[ \t]*rule (\w+):", text, re.M)]
        ends = [s for s, _ in starts[1:]] + [len(text)] if starts else []
        for (start, name), end in zip(starts, ends, strict=True):
            block = text[start:end]
            conda = re.search(r"^\s+conda:\s*\"([^\"]+)\"", block, re.M)
            script = re.search(r"^\s+script:\s*\"([^\"]+)\"", block, re.M)
            out.append(
                Rule(
                    name,
                    smk,
                    (smk.parent / conda.group(1)).resolve() if conda else None,
                    (smk.parent / script.group(1)).resolve() if script else None,
                    bool(re.search(r"^\s+(shell|run|wrapper|notebook):", block, re.M)),
                )
            )
    return out


@dataclass
class Imports:
    """What one file needs: ``geoens`` modules, other top-level modules, ``find_spec`` names."""

    package: set[str] = field(default_factory=set)
    external: set[str] = field(default_factory=set)
    found: set[str] = field(default_factory=set)


def _guarded(handlers: list[ast.ExceptHandler]) -> bool:
    for h in handlers:
        if h.type is None:
            return True
        names = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
        if any(isinstance(n, ast.Name) and n.id in OPTIONAL_GUARDS for n in names):
            return True
    return False


def _counted_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """All nodes below ``node``, leaving out TYPE_CHECKING blocks and ImportError-guarded try bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            yield from (n for stmt in child.orelse for n in [stmt, *_counted_nodes(stmt)])
            continue
        if isinstance(child, ast.Try) and _guarded(child.handlers):
            for stmt in [*child.handlers, *child.orelse, *child.finalbody]:
                yield stmt
                yield from _counted_nodes(stmt)
            continue
        yield child
        yield from _counted_nodes(child)


def _module_file(name: str) -> Path | None:
    """The file of module ``geoens[.a[.b]]``, or ``None`` if it is not a module of the package."""
    parts = name.split(".")[1:]
    if not parts:
        return PACKAGE / "__init__.py"
    for cand in (PACKAGE.joinpath(*parts).with_suffix(".py"), PACKAGE.joinpath(*parts, "__init__.py")):
        if cand.exists():
            return cand
    return None


@functools.cache
def file_imports(path: Path) -> Imports:
    """The imports of one Python file that count (see the module docstring)."""
    found = Imports()
    in_package = PACKAGE in path.parents
    for node in _counted_nodes(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level and in_package:  # relative import inside geoens
                pkg = ["geoens", *path.relative_to(PACKAGE).parent.parts]
                base = ".".join(pkg[: len(pkg) - (node.level - 1)])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names = [module]
            if module == "geoens" or module.startswith("geoens."):
                names += [f"{module}.{a.name}" for a in node.names if _module_file(f"{module}.{a.name}")]
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func).endswith("find_spec")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.found.add(str(node.args[0].value).split(".")[0])
        for name in names:
            top = name.split(".")[0]
            if top == "geoens":
                found.package.add(name)
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                found.external.add(top)
    return found


def needs(script: Path) -> tuple[set[str], set[str]]:
    """``(third-party imports, find_spec names)`` of ``script`` and the geoens modules it reaches."""
    external, spec, seen = set(), set(), set()
    todo = [script, PACKAGE / "__init__.py"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        imp = file_imports(path)
        external |= imp.external
        spec |= imp.found
        for mod in imp.package:
            # importing geoens.a.b runs geoens/__init__.py, geoens/a/__init__.py and geoens/a/b.py
            parts = mod.split(".")
            todo += [f for f in (_module_file(".".join(parts[:k])) for k in range(1, len(parts) + 1)) if f]
    return external, spec


@dataclass
class EnvFile:
    """Dependencies of one conda env file."""

    conda: dict[str, str]  # name -> version spec ("" when unpinned)
    pip: dict[str, str]
    package_installs: list[str]  # pip lines installing this repository (``-e ..[torch]`` ...)


def read_env(path: Path) -> EnvFile:
    """Parse a conda env file's ``dependencies`` (conda specs and the ``pip:`` section)."""
    data = yaml.safe_load(path.read_text())
    assert data.get("channels") and data["channels"][0] == "conda-forge", f"{path}: conda-forge first"
    env = EnvFile({}, {}, [])
    for dep in data["dependencies"]:
        if isinstance(dep, dict):
            for line in dep.get("pip", []):
                if ".." in line:
                    env.package_installs.append(line)
                    continue
                m = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", line)
                assert m, f"{path}: cannot read pip line {line!r}"
                env.pip[m.group(1).lower()] = m.group(2)
            continue
        m = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", str(dep))
        assert m, f"{path}: cannot read dependency {dep!r}"
        env.conda[m.group(1).lower()] = m.group(2)
    return env


def env_requirements() -> dict[Path, dict[str, set[str]]]:
    """Env file -> {top-level import or find_spec name -> the rules/scripts that need it}."""
    out: dict[Path, dict[str, set[str]]] = {}
    for rule in workflow_rules():
        if rule.script is None:
            continue
        assert rule.conda is not None, f"rule {rule.name} ({rule.smk.name}) runs a script without conda:"
        external, spec = needs(rule.script)
        reqs = out.setdefault(rule.conda, {})
        for name in external | spec:
            reqs.setdefault(name, set()).add(f"{rule.name} ({rule.script.name})")
    return out


def test_every_rule_with_an_action_has_a_script_and_env() -> None:
    rules = workflow_rules()
    assert len(rules) > 15
    for rule in rules:
        assert not rule.other_action, f"rule {rule.name}: shell/run actions are not covered by test_envs.py"
        if rule.script is not None:
            assert rule.script.exists(), f"rule {rule.name}: script {rule.script} not found"
            assert rule.conda is not None and rule.conda.exists(), f"rule {rule.name}: env {rule.conda}"


@pytest.mark.parametrize("env_name", ["geo", "torch", "report"])
def test_env_file_provides_exactly_what_its_scripts_import(env_name: str) -> None:
    path = (ROOT / "envs" / f"{env_name}.yaml").resolve()
    reqs = env_requirements()
    assert path in reqs, f"no rule uses {path}"
    env = read_env(path)
    provided = set(env.conda) | set(env.pip)
    missing = {
        name: sorted(users) for name, users in reqs[path].items() if not distributions(name) & provided
    }
    assert not missing, f"{path.name} lacks (conda-forge name of) {missing}"
    wanted = set().union(*(distributions(n) for n in reqs[path])) | ALWAYS_ALLOWED
    unused = sorted(provided - wanted)
    assert not unused, f"{path.name} lists {unused}, which none of its rules' scripts imports"
    unpinned = sorted(n for n, spec in env.conda.items() if n != "pip" and not re.search(r"[=<>]\s*\d", spec))
    assert not unpinned, f"{path.name}: pin {unpinned}"
    # the package itself, from the repository, with the torch extra only where torch is needed
    installs = env.package_installs
    assert len(installs) == 1, f"{path.name}: install the package once from .. ({installs})"
    install = env.package_installs[0]
    assert re.fullmatch(r"(-e )?\.\./?(\[[a-z,]+\])?", install.strip()), install
    extras = set(re.findall(r"\[([a-z,]+)\]", install)[0].split(",")) if "[" in install else set()
    needs_torch = "torch" in reqs[path]
    assert ("torch" in extras) == needs_torch, f"{path.name}: extras {extras}; torch needed: {needs_torch}"
    if not needs_torch:
        assert not provided & distributions("torch"), f"{path.name} must not pull in torch"


def test_import_collection_follows_package_and_skips_optional_imports(tmp_path: Path) -> None:
    """The rules above, on files written here (guards the checker itself)."""
    script = tmp_path / "s.py"
    script.write_text(
        "import json\nfrom geoens.core.io import atomic_path\n"
        "def f():\n    import rasterio\n"
        "try:\n    import cupy\nexcept ImportError:\n    cupy = None\n"
        "if TYPE_CHECKING:\n    import torch\n"
        "import importlib.util\nimportlib.util.find_spec('geoclip')\n"
    )
    external, spec = needs(script)
    assert "rasterio" in external and not {"cupy", "torch", "json", "importlib"} & external
    assert spec == {"geoclip"}
    # geoens.models.predictors reaches torch at module level; geoens.geo.rasters reaches rasterio
    assert "torch" in needs(ROOT / "workflow_scripts" / "predict.py")[0]
    assert "rasterio" in needs(ROOT / "workflow_scripts" / "masks_ls.py")[0]
