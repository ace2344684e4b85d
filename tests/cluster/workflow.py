"""Helpers to run the real workflow (or a small test Snakefile) in a temporary copy, as a subprocess.

``copy_workflow(dest)`` copies what Snakemake needs (Snakefile, rules/, workflow_scripts/,
envs/, config.yaml, tests/data/tiny.yaml) so a test can run and modify the workflow without touching
the repository. The package itself is installed editable, so ``import geoens`` works from the copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# profiles/ too: Snakemake applies profiles/default to every run from the workflow's directory.
WORKFLOW_PARTS = (
    "Snakefile",
    "rules",
    "workflow_scripts",
    "envs",
    "config.yaml",
    "config",
    "profiles",
    "docs",
)
TINY_CONFIG = Path("tests/data/tiny.yaml")


@dataclass
class SnakemakeRun:
    """Outcome of one ``snakemake`` subprocess."""

    args: list[str]
    returncode: int
    output: str
    seconds: float

    def check(self) -> SnakemakeRun:
        """Raise AssertionError (with the output's tail) unless the run succeeded."""
        if self.returncode != 0:
            raise AssertionError(
                f"snakemake {' '.join(self.args)} failed (rc={self.returncode}):\n{self.output[-6000:]}"
            )
        return self


def copy_workflow(dest: Path, with_tiny: bool = True) -> Path:
    """Copy the workflow's files into ``dest`` (created) and return it.

    Args:
        dest: Target directory.
        with_tiny: Also copy ``tests/data/`` (the tiny config and anything it points at).
    """
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / part)
    if with_tiny and (REPO / "tests" / "data").is_dir():
        shutil.copytree(REPO / "tests" / "data", dest / "tests" / "data")
    return dest


def snakemake_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a snakemake subprocess: offline Hugging Face, venv first on PATH, no SLURM."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env["HF_HUB_OFFLINE"] = "1"
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("SNAKEMAKE_PROFILE", None)
    env.update(extra or {})
    return env


def run_snakemake(
    workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> SnakemakeRun:
    """Run ``python -m snakemake <args>`` in ``workdir``; stdout and stderr are combined."""
    full = [sys.executable, "-m", "snakemake", *args]
    t0 = time.monotonic()
    proc = subprocess.run(
        full,
        cwd=workdir,
        env=env if env is not None else snakemake_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    return SnakemakeRun(list(args), proc.returncode, proc.stdout, time.monotonic() - t0)


_JOB_ROW = re.compile(r"^(\S+)\s+(\d+)$")


def planned_jobs(workdir: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, int]:
    """Return ``{rule: number of jobs}`` that ``snakemake --dry-run`` would run (empty when up to date)."""
    run = run_snakemake(workdir, *args, "--dry-run", "--quiet", "rules", env=env).check()
    jobs: dict[str, int] = {}
    in_table = False
    for line in run.output.splitlines():
        stripped = line.strip()
        if stripped.startswith("job") and "count" in stripped:
            in_table = True
            continue
        if not in_table or not stripped or set(stripped) <= {"-", " "}:
            continue
        match = _JOB_ROW.match(stripped)
        if match is None:
            in_table = False
            continue
        if match.group(1) == "total":
            break  # the dry run prints the table twice; the first one is enough
        jobs[match.group(1)] = int(match.group(2))
    return jobs


def file_mtimes(root: Path, under: str = "results") -> dict[str, int]:
    """Return ``{relative path: mtime_ns}`` of every file below ``root/under``."""
    base = root / under
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(base.rglob("*")) if p.is_file()}
