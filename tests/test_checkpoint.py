"""Training fit for a cluster queue: a job stopped in the middle of an epoch resumes there, bit for bit.

``python -m geoens.models.predictors`` runs in a subprocess on a tiny generated shard set
(``test_train.make_world``) and gets a real signal in the middle of its first epoch: SIGTERM / SIGUSR1 (what
SLURM sends before a time limit or a preemption) must save a mid-epoch checkpoint and exit with status 75;
SIGKILL (no chance to save) must leave the last periodic ``--checkpoint-every-steps`` checkpoint. Rerunning
the same command resumes, and the final weights equal those of an uninterrupted run exactly (CPU, one thread).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import geoens
from geoens.core.constants import CHECKPOINT_EVERY_STEPS, EXIT_RESUMABLE, PROGRESS_EVERY_S
from geoens.models.checkpoint import (
    Checkpointer,
    ProgressLog,
    SkipSampler,
    StopSignals,
    TrainingInterrupted,
    format_duration,
)
from geoens.models.predictors import build_parser
from test_train import FAST, make_world

N_IMAGES, N_VAL, BATCH = 100, 4, 2
#: lc rows: image 1 has no lc7 label and image 2 is not kept, so 94 train rows = 47 steps of 2.
STEPS = 47
TRAINER = {**FAST, "batch_size": BATCH, "epochs": 2}


def _command(
    paths: dict[str, Path], out: Path, every: int, gpus: int = 0, extra: tuple[str, ...] = ()
) -> list[str]:
    return [
        sys.executable, "-m", "geoens.models.predictors", "--model", "lc",
        "--labels", str(paths["labels"]), "--shards", str(paths["shards"]), "--out", str(out),
        "--trainer", json.dumps(TRAINER), "--device", "cpu", "--num-workers", "0", "--seed", "3",
        "--threads", "1", "--logfile", str(out / "train.log"),
        "--checkpoint-every-steps", str(every), "--progress-every-s", "0", "--gpus", str(gpus),
        *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    src = str(Path(geoens.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _run(
    paths: dict[str, Path], out: Path, every: int, gpus: int = 0, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        _command(paths, out, every, gpus, extra),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _interrupt(
    paths: dict[str, Path],
    out: Path,
    every: int,
    sig: signal.Signals,
    min_step: int,
    gpus: int = 0,
    extra: tuple[str, ...] = (),
) -> int:
    """Start training, send ``sig`` once the log shows step >= ``min_step`` of epoch 1; return the status.

    The signal goes to the whole process group, as SLURM signals every process of a job step.
    """
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        _command(paths, out, every, gpus, extra), env=_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    pattern = re.compile(r"train lc epoch 1/2 step (\d+)/")
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            text = (out / "train.log").read_text() if (out / "train.log").exists() else ""
            if any(int(m) >= min_step for m in pattern.findall(text)):
                os.killpg(proc.pid, sig)
                break
            time.sleep(0.01)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"training never reached step {min_step}: {proc.communicate()[1][-3000:]}")
        proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    blob = torch.load(path, weights_only=False)
    return blob["state_dict"] if "state_dict" in blob else blob["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = _state_dict(a), _state_dict(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs between {a} and {b}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shard set and an uninterrupted reference run (``reference/``)."""
    root = tmp_path_factory.mktemp("queue")
    paths = make_world(root, n=N_IMAGES, n_val=N_VAL)
    done = _run(paths, root / "reference", every=0)
    assert done.returncode == 0, done.stderr[-3000:]
    paths["reference"] = root / "reference"
    return paths


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_stop_signal_checkpoints_mid_epoch_and_resume_is_bitwise_identical(
    world: dict[str, Path], tmp_path: Path, sig: signal.Signals
) -> None:
    out = tmp_path / "run"
    status = _interrupt(world, out, every=0, sig=sig, min_step=3)
    log_text = (out / "train.log").read_text()
    assert status == EXIT_RESUMABLE, log_text[-3000:]
    assert f"{sig.name}: saved checkpoint {out / 'checkpoint.pt'} at epoch 1 step" in log_text
    assert f"exiting with status {EXIT_RESUMABLE}, a rerun resumes from it" in log_text
    assert not (out / "model.pt").exists()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    step = ckpt["partial"]["step"]
    assert ckpt["state"]["epoch"] == 0 and 3 <= step < STEPS, (ckpt["state"]["epoch"], step)
    assert ckpt["partial"]["n_seen"] == BATCH * step
    # in-epoch progress lines: images/s and ETAs
    assert re.search(
        r"train lc epoch 1/2 step 3/47 \(6%\): [\d.]+ images/s, loss [\d.]+; epoch ETA \S+, run ETA", log_text
    )

    resumed = _run(world, out, every=0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {out / 'checkpoint.pt'} at epoch 1 step {step}" in (out / "train.log").read_text()
    ref = world["reference"]
    _assert_same_weights(ref / "model.pt", out / "model.pt")
    _assert_same_weights(ref / "checkpoint.pt", out / "checkpoint.pt")  # last epoch's weights too
    cols = ["train_loss", "train_acc", "val_loss", "val_acc"]
    pd.testing.assert_frame_equal(
        pd.read_csv(ref / "metrics.csv")[cols], pd.read_csv(out / "metrics.csv")[cols]
    )
    # the comparison can fail: training went on after the interrupted checkpoint
    assert not torch.equal(
        ckpt["model"]["heads.lc.weight"], _state_dict(out / "checkpoint.pt")["heads.lc.weight"]
    )


def test_checkpoint_over_other_input_files_is_not_resumed(world: dict[str, Path], tmp_path: Path) -> None:
    """Inputs made again after a kill (same image ids, a new world): training starts from scratch.

    Resuming would continue a model of the old images; the ids alone cannot tell, the files' stamp does.
    """
    import shutil

    paths = {k: tmp_path / k for k in ("labels", "shards")}
    for k, dst in paths.items():
        shutil.copytree(world[k], dst)
    out = tmp_path / "run"
    assert _interrupt(paths, out, every=0, sig=signal.SIGTERM, min_step=3) == EXIT_RESUMABLE
    assert (out / "checkpoint.pt").exists()
    # the labels are written again (same bytes here; a changed world would change them too)
    for f in sorted(p for p in paths["labels"].rglob("*") if p.is_file()):
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    done = _run(paths, out, every=0)
    assert done.returncode == 0, done.stderr[-3000:]
    text = (out / "train.log").read_text()
    assert "belongs to another config or to other input files: starting from scratch" in text
    assert "resumed from" not in text
    _assert_same_weights(world["reference"] / "model.pt", out / "model.pt")  # a full, fresh run


def test_inputs_stamp_follows_names_sizes_and_times(tmp_path: Path) -> None:
    from geoens.core import io
    from geoens.models.checkpoint import inputs_stamp

    d = tmp_path / "d"
    d.mkdir()
    (d / "a.bin").write_bytes(b"12")
    f = tmp_path / "f.parquet"
    f.write_bytes(b"x")
    first = inputs_stamp(d, f, None)
    assert inputs_stamp(d, f, None) == first  # untouched: the same
    assert inputs_stamp(d, f) != first and inputs_stamp(f, d, None) != first
    (d / "a.bin").write_bytes(b"13")  # same size: the modification time tells
    st = (d / "a.bin").stat()
    os.utime(d / "a.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    io._FINGERPRINTS.clear()  # folder fingerprints are cached per process; each training run is a new one
    second = inputs_stamp(d, f, None)
    assert second != first
    (d / "sub").mkdir()
    (d / "sub" / "b.bin").write_bytes(b"")
    assert inputs_stamp(d, f, None) != second
    assert inputs_stamp(tmp_path / "missing") != inputs_stamp(None)


def test_killed_job_resumes_from_periodic_checkpoint(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    status = _interrupt(world, out, every=5, sig=signal.SIGKILL, min_step=12)
    assert status == -signal.SIGKILL
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    step = ckpt["partial"]["step"]
    assert ckpt["state"]["epoch"] == 0 and step >= 10 and step % 5 == 0, step
    resumed = _run(world, out, every=5)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_weights(world["reference"] / "model.pt", out / "model.pt")


def test_cached_path_resumes_mid_epoch_bitwise_and_augments_per_epoch(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """The decoded-image cache path (demo): SIGTERM mid-epoch, resume, same weights as uninterrupted."""
    from geoens.models.datasets import ShardIndex, ShardSource
    from geoens.models.imagecache import build_image_cache

    index = ShardIndex.build(world["shards"])
    cache = tmp_path / "cache"
    assert build_image_cache(ShardSource(world["shards"], index), index.ids, cache)["cached"]
    extra = ("--image-cache", str(cache))
    ref = tmp_path / "ref"
    assert _run(world, ref, every=0, extra=extra).returncode == 0
    assert "decoded-image cache" in (ref / "train.log").read_text()
    out = tmp_path / "run"
    assert _interrupt(world, out, every=0, sig=signal.SIGTERM, min_step=3, extra=extra) == EXIT_RESUMABLE
    step = torch.load(out / "checkpoint.pt", weights_only=False)["partial"]["step"]
    assert 3 <= step < STEPS
    assert _run(world, out, every=0, extra=extra).returncode == 0
    _assert_same_weights(ref / "model.pt", out / "model.pt")


def test_skip_sampler_passes_its_epoch_on() -> None:
    """The cached loader seeds each epoch's augmentation with the sampler's epoch: it must change."""
    from torch.utils.data import DistributedSampler

    sampler = SkipSampler(DistributedSampler(list(range(10)), num_replicas=1, rank=0, shuffle=True, seed=0))
    sampler.set_epoch(3)
    assert sampler.epoch == 3


def test_save_if_due_saves_on_schedule_and_after_a_signal(tmp_path: Path) -> None:
    signals = StopSignals()  # not entered: the flag is set by hand below
    ckpt = Checkpointer(tmp_path / "c.pt", version=1, fingerprint="f", every_steps=3, signals=signals)
    saved: list[object] = []
    for g in range(1, 7):
        ckpt.save_if_due(g, lambda g=g: saved.append(g), epoch=0, step=g)  # type: ignore[misc]
    ckpt.save_if_due(9, lambda: saved.append("not due"), epoch=1, step=3, due=False)
    ckpt.interrupt_at_epoch_end(1, remaining=True)  # no signal: training goes on
    assert saved == [3, 6]
    signals.received = "SIGTERM"
    barrier: list[int] = []
    with pytest.raises(TrainingInterrupted, match="SIGTERM: saved checkpoint .* at epoch 2 step 1"):
        ckpt.save_if_due(
            10,
            lambda: saved.append(10),
            epoch=1,
            step=1,
            due=False,
            before_interrupt=lambda: barrier.append(1),
        )
    assert saved[-1] == 10 and barrier == [1]
    ckpt.interrupt_at_epoch_end(2, remaining=False)  # the last epoch is done: finish normally
    with pytest.raises(TrainingInterrupted, match="at epoch 3 step 0"):
        ckpt.interrupt_at_epoch_end(2, remaining=True)


def test_schema_defaults_are_the_constants() -> None:
    from geoens.core.config import load_schema

    train = load_schema()["properties"]["train"]["properties"]
    assert train["checkpoint_every_steps"]["default"] == CHECKPOINT_EVERY_STEPS
    assert train["progress_every_s"]["default"] == PROGRESS_EVERY_S
    parser_defaults = build_parser().parse_args(["--model", "lc", "--labels", "l", "--shards", "s",
                                                 "--out", "o", "--trainer", "{}"])  # fmt: skip
    assert parser_defaults.checkpoint_every_steps == CHECKPOINT_EVERY_STEPS


def test_skip_sampler_and_progress_line(caplog: pytest.LogCaptureFixture) -> None:
    base = torch.utils.data.RandomSampler(range(10), generator=torch.Generator().manual_seed(0))
    full = list(SkipSampler(base))
    base.generator = torch.Generator().manual_seed(0)
    assert list(SkipSampler(base, skip=4)) == full[4:] and len(SkipSampler(base, skip=4)) == 6
    assert np.array_equal(sorted(full), np.arange(10))
    assert [format_duration(s) for s in (5.2, 125, 7260, float("nan"))] == ["5s", "2m05s", "2h01m", "?"]
    logger = logging.getLogger("geoens.test_progress")
    progress = ProgressLog(logger, "train x", n_epochs=3, steps_per_epoch=10, every_s=0)
    progress.start_epoch(1)
    with caplog.at_level(logging.INFO, logger="geoens.test_progress"):
        progress.update(4, 8)
    assert re.fullmatch(
        r"train x epoch 2/3 step 4/10 \(40%\): [\d.]+ images/s; epoch ETA \S+, run ETA \S+",
        caplog.messages[0],
    )


@pytest.mark.slow
def test_ddp_ranks_stop_at_the_same_step_and_resume(world: dict[str, Path], tmp_path: Path) -> None:
    """Two DDP processes (torchrun, gloo on CPU): SIGTERM to the whole job, one checkpoint, same weights."""
    ref = _run(world, tmp_path / "ref", every=0, gpus=2)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "run"
    status = _interrupt(world, out, every=0, sig=signal.SIGTERM, min_step=3, gpus=2)
    assert status != 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    step = ckpt["partial"]["step"]
    assert ckpt["state"]["epoch"] == 0 and 3 <= step < STEPS // 2, step
    assert ckpt["partial"]["n_seen"] == 2 * BATCH * step  # the sums of both ranks
    assert "SIGTERM: saved checkpoint" in (out / "train.log").read_text()
    resumed = _run(world, out, every=0, gpus=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_weights(tmp_path / "ref" / "model.pt", out / "model.pt")
    cols = ["train_loss", "val_loss", "val_acc"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "ref" / "metrics.csv")[cols], pd.read_csv(out / "metrics.csv")[cols]
    )
