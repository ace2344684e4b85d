"""Shared pytest fixtures. Keep this file small and additive: only fixtures that several files need."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.slurm import SlurmCluster, start_cluster, unavailable_reason
from cluster.workflow import REPO, TINY_CONFIG, copy_workflow, run_snakemake, snakemake_env

#: The peers' reference data beside the checkout (tests that need them skip when absent).
PEERS = REPO.parent / "shared" / "reference" / "peers"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A real one-node SLURM (munged, slurmctld, slurmd) for the whole session; torn down at the end.

    Skips when SLURM cannot run here. With ``GEOENS_INSTALL_SLURM=1`` (set by CI) missing packages are
    installed first with ``tests/cluster/install_slurm.sh``.
    """
    reason = unavailable_reason(allow_install=os.environ.get("GEOENS_INSTALL_SLURM") == "1")
    if reason is not None:
        pytest.skip(reason)
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small rehearsal folder (``python -m geoens.demo.rehearsal --scale 20``): the real input layouts
    at the paths of config/paper.yaml, a ``my.yaml``, the workflow linked in. Skips without peers' data."""
    if not PEERS.is_dir():
        pytest.skip(f"peers' reference data not found at {PEERS}")
    out = tmp_path_factory.mktemp("rehearsal") / "r"
    args = ["--scale", "20", "--geotags", "3000", "--places", "200", "--streetview", "50"]
    args += ["--workflow", str(REPO), "--peers", str(PEERS)]
    proc = subprocess.run(
        [sys.executable, "-m", "geoens.demo.rehearsal", str(out), *args],
        capture_output=True, text=True, env=snakemake_env(), timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def tiny_explorer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny workflow run (tests/data/tiny.yaml) up to its map explorer, results/explorer/index.html."""
    workdir = copy_workflow(tmp_path_factory.mktemp("explorer") / "wf")
    targets = ["results/explorer/index.html", "results/tables/im2gps3k_original.csv"]
    targets.append("results/tables/streetview_original.csv")
    run_snakemake(workdir, *targets, "--cores", "2", "--configfile", str(TINY_CONFIG), timeout=1800).check()
    return workdir
