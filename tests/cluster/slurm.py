"""A real one-node SLURM for tests: install check, bring-up and tear-down.

The cluster lives entirely in one temporary directory: its own munge key and socket, its own
``slurm.conf`` (passed to every SLURM command through the ``SLURM_CONF`` environment variable), state,
spool, pid and log files, and free TCP ports. Nothing under ``/etc`` is touched, and the system's
munge/slurm services are not used. Needs root (slurmd must run as root) and the Debian packages
installed by ``tests/cluster/install_slurm.sh``.

Usage::

    cluster = start_cluster(tmp_dir)
    try:
        subprocess.run(["sbatch", ...], env=cluster.env)
    finally:
        cluster.stop()

Run ``python tests/cluster/slurm.py`` to bring a cluster up, print its environment and time, and
tear it down again.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO / "tests" / "cluster" / "install_slurm.sh"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "scancel", "srun")
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
PARTITION = "cpu"  # the default partition; "gpu" holds the same node (the profiles' placeholder names)
PARTITIONS = ("cpu", "gpu")
NODE_CPUS = 2
NODE_MEM_MB = 16000  # what the node claims (config_overrides: not checked against the machine, not enforced)
DEFAULT_CONF = "/etc/slurm/slurm.conf"
RUN_CONF = "/run/slurm/conf/slurm.conf"
# The slurm executor's squeue status needs MinJobAge >= 3 x its first-check delay; an hour also keeps every
# job of a full test run visible to the tests' squeue checks.
MIN_JOB_AGE_S = 3600


@dataclass
class SlurmCluster:
    """A running one-node SLURM cluster.

    Attributes:
        root: Directory holding config, state, logs and the munge socket.
        conf: The ``slurm.conf`` path (also ``env["SLURM_CONF"]``).
        node: Node name (the short host name).
        partition: The default partition's name.
        env: Environment for subprocesses that talk to this cluster (``SLURM_CONF`` set, sbin on PATH).
        startup_s: Seconds from starting munged until the node reported idle.
    """

    root: Path
    conf: Path
    node: str
    partition: str
    env: dict[str, str]
    startup_s: float = 0.0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    conf_link: Path | None = None

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command against this cluster and return its completed process."""
        return subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, check=check, timeout=timeout
        )

    def logs(self) -> str:
        """Return the tail of the daemons' log files (for failure messages)."""
        parts = []
        for name in ("munged.log", "slurmctld.log", "slurmctld.out", "slurmd.log", "slurmd.out"):
            path = self.root / "log" / name
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-30:]
                parts.append(f"--- {path} ---\n" + "\n".join(lines))
        return "\n".join(parts)

    def active_jobs(self) -> list[str]:
        """Return the ids of jobs that are pending, running or completing."""
        states = "PENDING,CONFIGURING,RUNNING,COMPLETING,SUSPENDED"
        proc = self.run("squeue", "--noheader", f"--states={states}", "--format=%i", check=False, timeout=10)
        return proc.stdout.split() if proc.returncode == 0 else []

    def stop(self) -> None:
        """Cancel all jobs, stop the daemons and remove the cluster's directory."""
        if self.procs and all(proc.poll() is None for proc in self.procs):
            jobs = self.active_jobs()
            if jobs:
                self.run("scancel", "--full", *jobs, check=False, timeout=10)
                deadline = time.monotonic() + 20
                while self.active_jobs() and time.monotonic() < deadline:
                    time.sleep(0.5)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()
        _kill_step_daemons(self.conf)
        if self.conf_link is not None:
            unlink_run_conf(self.conf_link, self.conf)
            self.conf_link = None
        shutil.rmtree(self.root, ignore_errors=True)


def _kill_step_daemons(conf: Path) -> None:
    """Kill ``slurmstepd`` processes left over from this cluster (they outlive slurmd)."""
    marker = f"SLURM_CONF={conf}".encode()
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            if not (proc_dir / "cmdline").read_bytes().startswith(b"slurmstepd"):
                continue
            if marker in (proc_dir / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc_dir.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in SBIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def missing_binaries() -> list[str]:
    """Return the SLURM/munge executables that are not installed."""
    return [name for name in BINARIES if _which(name) is None]


def unavailable_reason(allow_install: bool = False) -> str | None:
    """Say why a local SLURM cannot be started here, or ``None`` when it can.

    Args:
        allow_install: Run ``tests/cluster/install_slurm.sh`` first when binaries are missing.

    Returns:
        A human-readable reason to skip, or ``None``.
    """
    if os.name != "posix":
        return "a local SLURM needs a POSIX system"
    if os.geteuid() != 0:
        return "starting slurmd needs root (run the slurm tests as root, e.g. in CI)"
    if Path(DEFAULT_CONF).exists():
        return f"a system SLURM config exists ({DEFAULT_CONF}): the test cluster would clash with it"
    missing = missing_binaries()
    if missing and allow_install:
        proc = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            return f"{INSTALL_SCRIPT} failed (rc={proc.returncode}): {proc.stderr[-500:]}"
        missing = missing_binaries()
    if missing:
        hint = "set GEOENS_INSTALL_SLURM=1 to let the tests install them, or run " + str(INSTALL_SCRIPT)
        return f"SLURM/munge binaries not installed ({', '.join(missing)}); {hint}"
    return None


def link_run_conf(conf: Path) -> Path | None:
    """Make ``conf`` the node's configless config, ``/run/slurm/conf/slurm.conf`` (a symlink).

    Inside a job, the slurm executor's job step runs ``srun`` with ``SLURM_CONF`` removed from the
    environment, so ``srun`` finds its config like on a real cluster node: ``/etc/slurm/slurm.conf``, then
    the configless cache ``/run/slurm/conf/slurm.conf``. We never touch ``/etc``; the symlink is removed
    on :meth:`SlurmCluster.stop` (and dangles harmlessly if a crash skips that, as the target is gone).

    Returns:
        The link, or ``None`` when a real config is already installed (then it is left alone).
    """
    if Path(DEFAULT_CONF).exists():
        return None
    link = Path(RUN_CONF)
    if link.exists() and not link.is_symlink():
        return None
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(conf)
    os.replace(tmp, link)
    return link


def unlink_run_conf(link: Path, conf: Path) -> None:
    """Remove ``link`` if it still points at ``conf`` (another cluster may have replaced it)."""
    if link.is_symlink() and Path(os.readlink(link)) == conf:
        link.unlink()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_slurm_conf(root: Path, node: str, cpus: int = NODE_CPUS, mem_mb: int = NODE_MEM_MB) -> Path:
    """Write a self-contained one-node ``slurm.conf`` under ``root`` and return its path.

    Args:
        root: Directory for config, state, spool, pid and log files.
        node: Node (and controller) host name.
        cpus: CPUs the node offers.
        mem_mb: Memory (MB) the node claims. ``SlurmdParameters=config_overrides`` makes slurmd trust the
            config instead of draining a node that has less, and without cgroups nothing enforces it: the
            workflow's rules ask for up to 8 GB per job, the tiny test jobs use far less.
    """
    for sub in ("state", "spool", "log", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ctld_port, slurmd_port = _free_port(), _free_port()
    conf = root / "slurm.conf"
    conf.write_text(
        f"""# geoens test cluster (tests/cluster/slurm.py): one node, no accounting, no cgroups.
ClusterName=geoenstest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root / "run" / "munge.sock"}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "run" / "slurmctld.pid"}
SlurmdPidFile={root / "run" / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge={MIN_JOB_AGE_S}
InactiveLimit=0
KillWait=5
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName={PARTITIONS[0]} Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName={PARTITIONS[1]} Nodes={node} Default=NO MaxTime=INFINITE State=UP
"""
    )
    return conf


def _wait(predicate: Callable[[], bool], timeout: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in cluster.procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{proc.args!r} exited with {proc.returncode} while {what}\n{cluster.logs()}"
                )
        if predicate():
            return
        time.sleep(0.25)
    raise TimeoutError(f"timed out after {timeout:.0f} s {what}\n{cluster.logs()}")


def start_cluster(
    root: Path, cpus: int = NODE_CPUS, mem_mb: int = NODE_MEM_MB, timeout: float = 60
) -> SlurmCluster:
    """Start munged, slurmctld and slurmd in ``root`` and wait until the node is idle.

    Args:
        root: An empty directory (removed again by :meth:`SlurmCluster.stop`).
        cpus: CPUs the node offers.
        mem_mb: Memory (MB) the node claims.
        timeout: Seconds to wait for the node to become idle.

    Returns:
        The running cluster; call ``stop()`` when done.

    Raises:
        RuntimeError: A daemon exited early (the message holds the daemons' log tails).
        TimeoutError: The node did not become idle in time.
    """
    t0 = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    node = socket.gethostname().split(".")[0]
    conf = write_slurm_conf(root, node, cpus=cpus, mem_mb=mem_mb)
    path = os.pathsep.join([*SBIN_DIRS, os.environ.get("PATH", "")])
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": path}
    for var in [v for v in env if v.startswith(("SLURM_", "SBATCH_", "SRUN_")) and v != "SLURM_CONF"]:
        env.pop(var)
    cluster = SlurmCluster(root=root, conf=conf, node=node, partition=PARTITION, env=env)
    cluster.conf_link = link_run_conf(conf)
    run, log = root / "run", root / "log"
    key = run / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    try:
        munged = [
            str(_which("munged")),
            "--foreground",
            "--force",
            f"--key-file={key}",
            f"--socket={run / 'munge.sock'}",
            f"--pid-file={run / 'munged.pid'}",
            f"--log-file={log / 'munged.log'}",
            f"--seed-file={run / 'munged.seed'}",
        ]
        cluster.procs.append(
            subprocess.Popen(munged, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        )
        _wait(lambda: (run / "munge.sock").exists(), 15, "waiting for munged", cluster)
        ctld = [str(_which("slurmctld")), "-D", "-i", "-f", str(conf)]
        with (log / "slurmctld.out").open("ab") as out:
            cluster.procs.append(subprocess.Popen(ctld, env=env, stdout=out, stderr=subprocess.STDOUT))
        _wait(
            lambda: cluster.run("scontrol", "ping", check=False).returncode == 0,
            30,
            "pinging slurmctld",
            cluster,
        )
        slurmd = [str(_which("slurmd")), "-D", "-f", str(conf), "-N", node]
        with (log / "slurmd.out").open("ab") as out:
            cluster.procs.append(subprocess.Popen(slurmd, env=env, stdout=out, stderr=subprocess.STDOUT))

        def idle() -> bool:
            out = cluster.run("sinfo", "--noheader", "--Node", "--format=%N %t", check=False).stdout
            return any(line.split()[1:2] == ["idle"] for line in out.splitlines())

        _wait(idle, timeout, "waiting for the node to become idle in sinfo", cluster)
    except BaseException:
        cluster.stop()
        raise
    cluster.startup_s = time.monotonic() - t0
    return cluster


if __name__ == "__main__":
    import tempfile

    reason = unavailable_reason(allow_install=os.environ.get("GEOENS_INSTALL_SLURM") == "1")
    if reason:
        raise SystemExit(f"cannot start SLURM: {reason}")
    demo = start_cluster(Path(tempfile.mkdtemp(prefix="geoens-slurm-")))
    try:
        print(f"SLURM up in {demo.startup_s:.1f} s; export SLURM_CONF={demo.conf}")
        print(demo.run("sinfo").stdout)
        print(demo.run("srun", "-n1", "hostname", timeout=60).stdout)
    finally:
        demo.stop()
