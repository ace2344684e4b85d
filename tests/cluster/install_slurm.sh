#!/usr/bin/env bash
# Install a one-node SLURM 22.05 (Debian bookworm packages) for tests/test_cluster.py and CI.
# Needs root (or sudo). Idempotent: does nothing when the binaries are already installed.
# Usage: tests/cluster/install_slurm.sh
set -euo pipefail

need=(slurmctld slurmd sbatch squeue scontrol munged)
missing=0
for b in "${need[@]}"; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing=1
done
if [ "$missing" -eq 0 ]; then
    echo "slurm already installed: $(dpkg-query -W -f='${Version}' slurmctld 2>/dev/null || echo unknown)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
# The packages' own services are not used: tests start the daemons by hand with their own config.
echo "installed slurmctld $(dpkg-query -W -f='${Version}' slurmctld)"
