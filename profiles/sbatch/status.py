#!/usr/bin/env python3
"""Snakemake cluster-generic status command for SLURM without an accounting database.

Usage: ``status.py <jobid>`` (``<jobid>`` as printed by ``sbatch --parsable``, ``123`` or ``123;cluster``).
Prints exactly one of ``running``, ``success`` or ``failed``.

Order of look-ups: ``squeue`` (knows pending/running jobs, and finished ones until ``MinJobAge``),
then ``scontrol show job`` (same window, other code path), then ``sacct`` (only where accounting is
set up). A job that none of them knows any more is reported ``failed`` with a message on stderr, so
that Snakemake checks its outputs rather than waiting for ever. Transient controller errors are
retried before giving up. Standard library only: it runs with whatever ``python3`` is on the PATH.
"""

from __future__ import annotations

import subprocess
import sys
import time

RUNNING = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESIZING",
    "RESV_DEL_HOLD",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "SPECIAL_EXIT",
    "PREEMPTED",
}
SUCCESS = {"COMPLETED"}
FAILED = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "REVOKED"}
ATTEMPTS = 5
PAUSE_S = 2.0


def classify(state: str) -> str | None:
    """Map a SLURM job state (``CANCELLED by 0`` and ``RUNNING+`` forms too) to a Snakemake status."""
    word = state.strip().split()[0].rstrip("+") if state.strip() else ""
    if word in SUCCESS:
        return "success"
    if word in FAILED:
        return "failed"
    if word in RUNNING:
        return "running"
    return None


def _run(cmd: list[str]) -> tuple[int, str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return 1, str(err)
    return proc.returncode, proc.stdout if proc.returncode == 0 else proc.stderr


def query_squeue(jobid: str) -> str | None:
    """Return the job's state from squeue, or ``None`` when squeue does not know it."""
    rc, out = _run(["squeue", "--noheader", "--states=all", "--format=%T", "--jobs", jobid])
    lines = [line for line in out.splitlines() if line.strip()] if rc == 0 else []
    return lines[0] if lines else None


def query_scontrol(jobid: str) -> str | None:
    """Return the job's ``JobState`` from ``scontrol show job``, or ``None``."""
    rc, out = _run(["scontrol", "show", "job", jobid])
    if rc != 0:
        return None
    for token in out.split():
        if token.startswith("JobState="):
            return token.split("=", 1)[1]
    return None


def query_sacct(jobid: str) -> str | None:
    """Return the job's state from the accounting database, or ``None`` (also when there is none)."""
    rc, out = _run(["sacct", "--noheader", "--parsable2", "-X", "--format=State", "--jobs", jobid])
    lines = [line for line in out.splitlines() if line.strip()] if rc == 0 else []
    return lines[0] if lines else None


def describe_failure(jobid: str) -> str:
    """Return ``state, exit code and log file`` of a job as far as ``scontrol`` still knows it."""
    rc, out = _run(["scontrol", "show", "job", jobid])
    if rc != 0:
        return f"SLURM job {jobid} failed"
    fields = dict(token.split("=", 1) for token in out.split() if "=" in token)
    return (
        f"SLURM job {jobid} {fields.get('JobState', 'failed')} (exit code {fields.get('ExitCode', '?')}, "
        f"reason {fields.get('Reason', '?')}); log: {fields.get('StdOut', '?')}"
    )


def status(jobid: str) -> str:
    """Return ``running``, ``success`` or ``failed`` for a SLURM job id."""
    jobid = jobid.split(";")[0].strip()
    if not jobid:
        raise SystemExit("usage: status.py <jobid>")
    for attempt in range(ATTEMPTS):
        for query in (query_squeue, query_scontrol, query_sacct):
            state = query(jobid)
            if state is not None:
                result = classify(state)
                if result is not None:
                    return result
                print(f"status.py: unknown SLURM state {state!r} for job {jobid}", file=sys.stderr)
                return "running"
        if attempt + 1 < ATTEMPTS:
            time.sleep(PAUSE_S)
    print(
        f"status.py: SLURM job {jobid} is unknown to squeue, scontrol and sacct (finished longer ago than "
        "MinJobAge, and no accounting): reporting it failed",
        file=sys.stderr,
    )
    return "failed"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: status.py <jobid>")
    result = status(sys.argv[1])
    if result == "failed":
        print(f"status.py: {describe_failure(sys.argv[1].split(';')[0].strip())}", file=sys.stderr)
    print(result)
