"""Cluster execution through profiles/slurm (slurm executor) and profiles/sbatch (cluster-generic + sbatch).

Each test runs Snakemake against a real one-node SLURM that the ``slurm_cluster`` fixture starts
(tests/cluster/slurm.py). A small Snakefile written by the tests proves the profiles (jobs really go
through SLURM, the training rule lands in the GPU partition, a failing job fails the run and the error
names its log); then the real tiny demo workflow runs through the slurm profile.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from cluster.slurm import NODE_CPUS, SlurmCluster
from cluster.workflow import REPO, TINY_CONFIG, copy_workflow, run_snakemake, snakemake_env

PROFILES = {"slurm": REPO / "profiles" / "slurm", "sbatch": REPO / "profiles" / "sbatch"}

# Overrides for the test cluster: quick status polling, and no more threads per job than the node's
# 2 CPUs (the profiles ask 9 for the GPU rules). Everything else comes from the profile as a user runs it.
FAST_POLL = {
    "slurm": ["--slurm-init-seconds-before-status-checks", "1"],
    "sbatch": ["--seconds-between-status-checks", "2"],
}
SMALL_NODE = ["--max-threads", str(NODE_CPUS)]

SNAKEFILE = textwrap.dedent(
    """
    MODELS = ["ls", "lc"]

    rule all:
        input:
            "results/summary.txt",

    rule prepare:
        output:
            "results/prepared.txt",
        log:
            "logs/prepare.log",
        resources:
            mem_mb=200,
            runtime=5,
        shell:
            "echo job=$SLURM_JOB_ID > {output} 2> {log}"

    rule train:
        input:
            "results/prepared.txt",
        output:
            "results/models/{model}.txt",
        log:
            "logs/train_{model}.log",
        resources:
            gpu=0,
        shell:
            "echo job=$SLURM_JOB_ID > {output} 2> {log}"

    rule summarize:
        input:
            prepared="results/prepared.txt",
            models=expand("results/models/{model}.txt", model=MODELS),
        output:
            "results/summary.txt",
        log:
            "logs/summarize.log",
        shell:
            "cat {input.prepared} {input.models} > {output} 2> {log}"
    """
)

FAILING_SNAKEFILE = textwrap.dedent(
    """
    rule all:
        input:
            "results/never.txt",

    rule broken:
        output:
            "results/never.txt",
        log:
            "logs/broken.log",
        resources:
            mem_mb=200,
            runtime=5,
        shell:
            "echo geoens-broken-job-marker >&2; exit 3"
    """
)


def _load_status_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sbatch_status", PROFILES["sbatch"] / "status.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("COMPLETED", "success"),
        ("PENDING", "running"),
        ("RUNNING", "running"),
        ("COMPLETING", "running"),
        ("CONFIGURING", "running"),
        ("REQUEUED", "running"),
        ("FAILED", "failed"),
        ("CANCELLED by 0", "failed"),
        ("CANCELLED+", "failed"),
        ("TIMEOUT", "failed"),
        ("OUT_OF_MEMORY", "failed"),
        ("NODE_FAIL", "failed"),
        ("", None),
        ("SOMETHING_NEW", None),
    ],
)
def test_status_script_maps_slurm_states(state: str, expected: str | None) -> None:
    assert _load_status_script().classify(state) == expected


def test_status_script_needs_a_job_id() -> None:
    proc = subprocess.run(
        [sys.executable, str(PROFILES["sbatch"] / "status.py")], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode != 0 and "usage: status.py <jobid>" in proc.stderr


def _run_profile(
    cluster: SlurmCluster, workdir: Path, profile: str, *targets: str, extra: tuple[str, ...] = ()
) -> str:
    """Run snakemake with a profile against the test cluster; return the output (any return code)."""
    args = [*targets, "--profile", str(PROFILES[profile]), *FAST_POLL[profile], "--latency-wait", "5", *extra]
    run = run_snakemake(workdir, *args, env=snakemake_env({"SLURM_CONF": str(cluster.conf)}), timeout=600)
    return f"rc={run.returncode}\n{run.output}"


def _job_lines(path: Path) -> dict[str, str]:
    fields = dict(token.split("=", 1) for token in path.read_text().split())
    return fields


def _write(workdir: Path, snakefile: str) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "Snakefile").write_text(snakefile)
    return workdir


def _slurm_jobs(cluster: SlurmCluster) -> dict[str, tuple[str, str]]:
    """``{job id: (partition, state)}`` of every job SLURM still remembers (finished ones for MinJobAge)."""
    out = cluster.run("squeue", "--noheader", "--states=all", "--format=%i|%P|%T").stdout
    return {f[0]: (f[1], f[2]) for f in (line.split("|") for line in out.splitlines()) if len(f) == 3}


@pytest.mark.slurm
@pytest.mark.parametrize("profile", ["slurm", "sbatch"])
def test_small_workflow_runs_through_slurm(slurm_cluster: SlurmCluster, tmp_path: Path, profile: str) -> None:
    workdir = _write(tmp_path / profile, SNAKEFILE)
    out = _run_profile(slurm_cluster, workdir, profile, "all", extra=tuple(SMALL_NODE))
    assert out.startswith("rc=0"), out[-6000:]

    prepared = _job_lines(workdir / "results" / "prepared.txt")
    models = {m: _job_lines(workdir / "results" / "models" / f"{m}.txt") for m in ("ls", "lc")}
    # every job ran inside its own SLURM allocation ...
    job_ids = [prepared["job"], *(m["job"] for m in models.values())]
    assert all(re.fullmatch(r"\d+", j) for j in job_ids), job_ids
    assert len(set(job_ids)) == 3
    # ... which SLURM reports as completed; default-resources put ordinary jobs in the CPU partition,
    # set-resources put the training jobs in the "gpu" one
    jobs = _slurm_jobs(slurm_cluster)
    assert jobs[prepared["job"]] == ("cpu", "COMPLETED"), jobs
    assert {jobs[m["job"]] for m in models.values()} == {("gpu", "COMPLETED")}, jobs
    assert (workdir / "results" / "summary.txt").read_text().count("job=") == 3


@pytest.mark.slurm
@pytest.mark.parametrize("profile", ["slurm", "sbatch"])
def test_failed_slurm_job_fails_the_workflow_and_names_its_log(
    slurm_cluster: SlurmCluster, tmp_path: Path, profile: str
) -> None:
    workdir = _write(tmp_path / profile, FAILING_SNAKEFILE)
    out = _run_profile(slurm_cluster, workdir, profile, "all", extra=("--retries", "0"))
    assert not out.startswith("rc=0"), out[-6000:]
    assert "Error in rule broken" in out, out[-6000:]
    assert not (workdir / "results" / "never.txt").exists()

    # the error output names the SLURM log of the failed job, and that log holds the job's stderr
    slurm_logs = sorted((workdir / "logs" / "slurm").rglob("*.log"))
    assert slurm_logs, f"no SLURM log under {workdir / 'logs' / 'slurm'}\n{out[-4000:]}"
    named = [log for log in slurm_logs if str(log.relative_to(workdir)) in out or str(log) in out]
    assert named, f"none of {slurm_logs} named in the output:\n{out[-4000:]}"
    assert any("geoens-broken-job-marker" in log.read_text() for log in named)
    # and SLURM itself recorded the job as failed
    states = slurm_cluster.run("squeue", "--noheader", "--states=all", "--format=%j|%T").stdout
    assert "FAILED" in states, states


# The full tiny workflow to results/figures/rva.pdf, every job through SLURM (a few minutes of job-step
# overhead on top of the local run). GEOENS_SLURM_QUICK=1 stops at the masks/atoms and one trained model's
# predictions (train and predict: the GPU rules), for a quick check.
TINY_TARGETS = ["results/atoms/atoms.parquet", "results/predictions/im2gps3k/lc.parquet"]
FULL_TARGETS = ["results/figures/rva.pdf"]


@pytest.mark.slurm
@pytest.mark.slow
def test_tiny_demo_workflow_through_slurm_profile(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    if not (REPO / TINY_CONFIG).exists():
        pytest.skip(f"{TINY_CONFIG} not written yet")
    workdir = copy_workflow(tmp_path / "wf")
    targets = TINY_TARGETS if os.environ.get("GEOENS_SLURM_QUICK") == "1" else FULL_TARGETS
    extra = ("--configfile", str(TINY_CONFIG), "--retries", "0", *SMALL_NODE)
    out = _run_profile(slurm_cluster, workdir, "slurm", *targets, extra=extra)
    assert out.startswith("rc=0"), out[-8000:]
    for target in targets:
        assert (workdir / target).stat().st_size > 0
    # every job went through SLURM, the GPU rules to the "gpu" partition and the rest to "cpu"
    out = slurm_cluster.run("squeue", "--noheader", "--states=all", "--format=%k|%P|%T|%Z").stdout
    ours = [line.split("|") for line in out.splitlines() if line.endswith(f"|{workdir}")]
    by_rule = {
        comment.removeprefix("rule_").split("_wildcards_")[0]: (part, state)
        for comment, part, state, _ in ours
    }
    assert {"demo_world", "partitions", "relabel_train", "mask_ls", "mask_lc", "mask_s2", "atoms"} <= set(
        by_rule
    )
    assert by_rule["train"] == ("gpu", "COMPLETED") and by_rule["predict"] == ("gpu", "COMPLETED"), by_rule
    assert by_rule["atoms"] == ("cpu", "COMPLETED"), by_rule
    assert all(state == "COMPLETED" for _, state in by_rule.values()), by_rule


# A long job that SLURM warns before its end (what `--signal=TERM@<seconds>` or a preemption does; here
# `scancel --signal=TERM`, which reaches the same processes: every process of the job's steps, including
# Snakemake's job process, which on SIGTERM waits for its running script). The job's script
# uses geoens' StopSignals like the training loops: it saves its step, exits 75, Snakemake resubmits it
# (retries: 1 in the profile) with the runtime of attempt 2, and the retry resumes from the saved step.
# (Snakemake passes `attempt` to resource functions, not to scripts: the script sees the runtime.)
PREEMPT_SNAKEFILE = textwrap.dedent(
    """
    rule all:
        input:
            "results/done.json",

    rule long_job:
        output:
            "results/done.json",
        log:
            "logs/long_job.log",
        resources:
            mem_mb=200,
            runtime=lambda wc, attempt: 5 * attempt,
            # as docs/cluster.md advises for train/geoclip_tower (here far too late to matter: the test
            # signals the job itself after a few seconds)
            slurm_extra="'--signal=TERM@30'",
        script:
            "long_job.py"
    """
)
PREEMPT_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    from geoens.models.checkpoint import StopSignals
    from geoens.core.constants import EXIT_RESUMABLE

    snakemake = globals()["snakemake"]
    state_file = Path("results/state.json")
    state = json.loads(state_file.read_text()) if state_file.exists() else {"step": 0, "resumed_at": []}
    state["resumed_at"].append(state["step"])
    with StopSignals() as signals, open(snakemake.log[0], "a") as log:
        while state["step"] < 30:
            time.sleep(0.5)
            state["step"] += 1
            print(f"runtime {snakemake.resources.runtime} job {os.environ.get('SLURM_JOB_ID')} "
                  f"step {state['step']}", file=log, flush=True)
            if signals.received:
                state["signal"] = signals.received
                state_file.write_text(json.dumps(state))
                print(f"{signals.received}: saved step {state['step']}, will resume", file=log, flush=True)
                sys.exit(EXIT_RESUMABLE)
    state["runtime"] = snakemake.resources.runtime
    Path(snakemake.output[0]).write_text(json.dumps(state))
    """
)


@pytest.mark.slurm
def test_signalled_job_checkpoints_and_resumes_on_retry(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    import json
    import time

    sig = "TERM"
    workdir = _write(tmp_path / sig, PREEMPT_SNAKEFILE)
    (workdir / "long_job.py").write_text(PREEMPT_SCRIPT)
    args = ["all", "--profile", str(PROFILES["slurm"]), *FAST_POLL["slurm"], "--latency-wait", "5"]
    env = snakemake_env({"SLURM_CONF": str(slurm_cluster.conf)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    log = workdir / "logs" / "long_job.log"
    try:
        deadline = time.monotonic() + 300
        while not (log.exists() and "step 3" in log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-6000:]
            time.sleep(0.2)
        job = re.search(r"job (\d+) step 3", log.read_text())
        assert job is not None
        slurm_cluster.run("scancel", f"--signal={sig}", job.group(1))
        out = proc.communicate(timeout=600)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-6000:]
    done = json.loads((workdir / "results" / "done.json").read_text())
    # the retry ran with the runtime of attempt 2 and resumed where the signalled attempt saved
    assert done["signal"] == f"SIG{sig}" and done["runtime"] == 10, done
    assert done["resumed_at"][0] == 0 and done["resumed_at"][1] >= 3, done
