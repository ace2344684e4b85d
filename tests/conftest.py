"""Shared pytest fixtures. Keep this file small and additive: only fixtures that several files need."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cluster.slurm import SlurmCluster, start_cluster, unavailable_reason


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
