"""The package installs from a wheel, outside the checkout, with its base dependencies only.

Builds the wheel, installs it into a fresh virtualenv in a temporary folder (no torch, no snakemake: the
base install is the geo/report stack), and runs ``geoens --help``, ``geoens --version`` and
``geoens validate config/paper.yaml --check-files`` from a rehearsal folder (config/paper.yaml's FILL-IN
paths hold real-layout files there). The schema must come from inside the installed package.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cluster.workflow import REPO

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, timeout: int = 1200) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO)], REPO)
    (whl,) = dist.glob("geoens-*.whl")
    return whl


def test_wheel_ships_the_schema_and_type_marker(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "geoens/schemas/config.schema.yaml" in names
    assert "geoens/py.typed" in names
    sources = sorted(str(p.relative_to(REPO / "src")) for p in (REPO / "src" / "geoens").rglob("*.py"))
    assert sorted(n for n in names if n.endswith(".py")) == sources, "every module of every subpackage ships"
    web = REPO / "src" / "geoens" / "reports" / "explorer_web"
    page = {str(p.relative_to(REPO / "src")) for p in web.rglob("*") if p.is_file()}
    assert {
        "geoens/reports/explorer_web/index.html",
        "geoens/reports/explorer_web/vendor/leaflet/leaflet.js",
    } <= page
    assert page <= set(names), "the explorer's page (template, code, vendored Leaflet and its licence) ships"
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [ln for ln in meta.splitlines() if ln.startswith("Requires-Dist:")]
    base = [ln for ln in requires if "extra ==" not in ln]
    assert any("netCDF4" in ln for ln in base), "netCDF4 is imported at run time"
    assert not any(ln.split()[1].startswith(("torch", "snakemake", "s2sphere")) for ln in base)
    assert any(ln.startswith("Requires-Dist: torch") and 'extra == "torch"' in ln for ln in requires)


def test_wheel_installs_and_validates_outside_the_checkout(
    wheel: Path, rehearsal: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    _run([base_python, "-m", "venv", str(venv)], tmp_path)
    py, geoens = venv / "bin" / "python", venv / "bin" / "geoens"
    _run([str(py), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"), str(wheel)], tmp_path)
    probe = "import importlib.util as u, geoens; print(geoens.__file__, u.find_spec('torch') is None)"
    where, no_torch = _run([str(py), "-c", probe], tmp_path).stdout.split()
    assert str(venv) in where and no_torch == "True"
    assert "validate" in _run([str(geoens), "--help"], tmp_path).stdout
    assert _run([str(geoens), "--version"], tmp_path).stdout.startswith("geoens ")
    out = _run([str(geoens), "validate", "config/paper.yaml", "--check-files"], rehearsal).stdout
    assert "config/paper.yaml: valid; grid 5400 x 10800" in out
    cmd = [str(geoens), "validate", "config/paper.yaml", "--check-files"]
    bad = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and "config file not found" in bad.stderr
