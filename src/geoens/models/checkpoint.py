"""What makes a training loop fit for a cluster queue; shared by the predictors' and the GeoCLIP tower's.

* :class:`StopSignals`: SIGTERM and SIGUSR1 (what SLURM sends before a time limit or a preemption) set a flag
  instead of killing the process; the loop checks it after every optimizer step.
* :class:`Checkpointer`: a checkpoint every ``every_steps`` optimizer steps and at once when a stop signal
  arrived; after a signal-triggered save it logs that it saved and will resume, and raises
  :class:`TrainingInterrupted`, which the command lines turn into exit status
  :data:`~geoens.core.constants.EXIT_RESUMABLE` (75, non-zero: Snakemake and SLURM retry the job).
* :class:`SkipSampler`: resuming in the middle of an epoch skips the batches already trained on without
  reading their images, so a resumed run sees exactly the batches an uninterrupted one would.
* :class:`ProgressLog`: a log line inside an epoch every ``every_s`` seconds with images/s and ETAs.
* :func:`rng_state` / :func:`set_rng_state`: the RNG states a checkpoint stores.

A checkpoint is a plain dict written atomically with ``torch.save``; each loop decides what goes in it.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

import numpy as np
import torch
from torch.utils.data import Sampler

from geoens.core.constants import EXIT_RESUMABLE, STOP_SIGNALS
from geoens.core.io import atomic_path, folder_fingerprint

log = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):  # noqa: N818 (not an error: the job is to be retried)
    """Training saved a checkpoint after a stop signal and stopped; rerunning resumes from it.

    Attributes:
        signal_name: ``SIGTERM`` or ``SIGUSR1``.
        epoch: Epoch (0-based) the checkpoint is in.
        step: Optimizer steps of that epoch already done.
        path: The checkpoint file.

    """

    def __init__(self, signal_name: str, epoch: int, step: int, path: Path) -> None:
        super().__init__(
            f"{signal_name}: saved checkpoint {path} at epoch {epoch + 1} step {step}; "
            f"exiting with status {EXIT_RESUMABLE}, a rerun resumes from it"
        )
        self.signal_name = signal_name
        self.epoch = epoch
        self.step = step
        self.path = path


class StopSignals:
    """Context manager: while active, SIGTERM and SIGUSR1 only record that they arrived.

    Outside the main thread (where Python cannot install handlers) it does nothing and never reports a
    signal. The previous handlers are restored on exit.
    """

    def __init__(self, names: tuple[str, ...] = STOP_SIGNALS) -> None:
        self.signals = [signal.Signals[n] for n in names]
        self.received: str | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only set the flag: logging or saving inside a signal handler could deadlock.
        self.received = self.received or signal.Signals(signum).name

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def run_child_ignoring_stop_signals(cmd: list[str]) -> int:
    """Run ``cmd`` with SIGTERM/SIGUSR1 ignored here and return its exit status.

    For a launcher (``--gpus N`` re-launching under torchrun): it must outlive its children while they save
    their checkpoints. The children inherit the ignored SIGUSR1 (so torchrun's agent is not killed by it);
    training processes install their own handlers, torchrun forwards SIGTERM to its workers.
    """
    previous = {s: signal.signal(signal.Signals[s], signal.SIG_IGN) for s in STOP_SIGNALS}
    try:
        return subprocess.run(cmd, check=False).returncode
    finally:
        for name, handler in previous.items():
            signal.signal(signal.Signals[name], handler)


def inputs_stamp(*paths: str | Path | None) -> str:
    """Identity of a run's input files, in a checkpoint's fingerprint: it is only resumed over the same ones.

    A folder counts by :func:`geoens.core.io.folder_fingerprint` (names, sizes and modification times of the
    files inside), a file by its size and modification time; ``None`` and missing paths as absent. When the
    images or labels are made again (new data, a changed world) with the same image ids, training starts from
    scratch instead of continuing a model of the old data. Contents are not read, so this is cheap for large
    shards.
    """
    h = hashlib.sha256()
    for raw in paths:
        if raw is None:
            h.update(b"none\0")
            continue
        p = Path(os.path.normpath(os.path.abspath(raw)))  # `./results/x` and `/abs/results/x` are one file
        if p.is_dir():
            h.update(f"{p}\0{folder_fingerprint(p)}\0".encode())
        elif p.exists():
            st = p.stat()
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        else:
            h.update(f"{p}\0missing\0".encode())
    return h.hexdigest()


class Checkpointer:
    """When and where a loop saves: every ``every_steps`` steps, at epoch ends, and after a stop signal.

    Args:
        path: The checkpoint file.
        version: Format version of the loop's checkpoints (a file of another version is not resumed).
        fingerprint: Hash of everything that must match for a resume (config, seed, image ids and the
            :func:`inputs_stamp` of the input files).
        every_steps: Optimizer steps between mid-epoch checkpoints (counted over the whole run); 0: none.
        signals: The active :class:`StopSignals` (``None``: signals are not watched).
        main: Whether this process writes (rank 0).
        sync: Under DistributedDataParallel, ``flag -> whether any rank has it set``, so that every rank
            stops at the same step.
        label: Name used in log lines (``train lc``, ``geoclip tower``).

    """

    def __init__(
        self,
        path: str | Path,
        *,
        version: int,
        fingerprint: str,
        every_steps: int = 0,
        signals: StopSignals | None = None,
        main: bool = True,
        sync: Callable[[bool], bool] | None = None,
        label: str = "training",
    ) -> None:
        if every_steps < 0:
            raise ValueError(f"checkpoint_every_steps must be >= 0, got {every_steps}")
        self.path = Path(path)
        self.version = version
        self.fingerprint = fingerprint
        self.every_steps = every_steps
        self.signals = signals
        self.main = main
        self.sync = sync
        self.label = label

    def stop_requested(self) -> bool:
        """Whether a stop signal arrived (on any rank, with ``sync``)."""
        flag = self.signals is not None and self.signals.received is not None
        return self.sync(flag) if self.sync is not None else flag

    def step_due(self, global_step: int) -> bool:
        """Whether the periodic checkpoint falls on this (1-based, whole-run) step."""
        return self.every_steps > 0 and global_step % self.every_steps == 0

    def save(self, payload: Mapping[str, Any]) -> None:
        """Write ``payload`` plus ``version`` and ``fingerprint`` atomically (rank 0 only)."""
        if self.main:
            blob = {**payload, "version": self.version, "fingerprint": self.fingerprint}
            with atomic_path(self.path) as tmp:
                torch.save(blob, tmp)

    def load(self, device: torch.device | str = "cpu") -> dict[str, Any] | None:
        """The checkpoint if it exists and belongs to this run (same ``version`` and ``fingerprint``)."""
        if not self.path.exists():
            return None
        ckpt = torch.load(self.path, map_location=device, weights_only=False)
        if ckpt.get("version") == self.version and ckpt.get("fingerprint") == self.fingerprint:
            return dict(ckpt)
        log.warning("%s belongs to another config or to other input files: starting from scratch", self.path)
        return None

    def save_if_due(
        self,
        global_step: int,
        save: Callable[[], None],
        *,
        epoch: int,
        step: int,
        due: bool = True,
        before_interrupt: Callable[[], None] | None = None,
    ) -> None:
        """After an optimizer step: ``save()`` when a stop signal arrived or the periodic checkpoint is due.

        Args:
            global_step: The step's number over the whole run (1-based), for :meth:`step_due`.
            save: Writes the loop's checkpoint.
            epoch: The epoch (0-based) the step is in, for the interrupt.
            step: Optimizer steps of that epoch done, for the interrupt.
            due: ``False`` skips the periodic checkpoint at this step (a stop signal still saves).
            before_interrupt: Called after a signal-triggered save, before raising (a DDP barrier).

        Raises:
            TrainingInterrupted: After a stop signal, once ``save()`` returned.

        """
        stop = self.stop_requested()
        if stop or (self.step_due(global_step) and due):
            save()
            if stop:
                if before_interrupt is not None:
                    before_interrupt()
                raise self.interrupt(epoch, step)

    def interrupt_at_epoch_end(self, epochs_done: int, remaining: bool) -> None:
        """After the epoch-end checkpoint: stop here if a signal arrived and ``remaining`` epochs are to run.

        Raises:
            TrainingInterrupted: If a stop signal arrived and ``remaining``.

        """
        if self.stop_requested() and remaining:
            raise self.interrupt(epochs_done, 0)

    def interrupt(self, epoch: int, step: int) -> TrainingInterrupted:
        """Log that the checkpoint is saved and the job will resume; return the exception to raise."""
        name = (self.signals.received if self.signals is not None else None) or "stop signal"
        exc = TrainingInterrupted(name, epoch, step, self.path)
        log.warning("%s: %s", self.label, exc)
        return exc


class SkipSampler(Sampler[int]):
    """The indices of ``base`` without the first ``skip`` (resuming ``skip // batch_size`` batches in).

    ``base`` is iterated in full (same random draws as without skipping), only the first indices are
    dropped; ``set_epoch`` is passed on (:class:`~torch.utils.data.DistributedSampler`).
    """

    def __init__(self, base: Sampler[int], skip: int = 0) -> None:
        self.base = base
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)  # type: ignore[arg-type]

    @property
    def epoch(self) -> int:
        """The base sampler's epoch (the cached loader seeds its augmentation with it)."""
        return int(getattr(self.base, "epoch", 0))

    def set_epoch(self, epoch: int) -> None:
        """Forward to the base sampler if it has ``set_epoch``."""
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)


def format_duration(seconds: float) -> str:
    """``3h05m``, ``4m07s``, ``12s`` (``?`` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class ProgressLog:
    """A progress line inside an epoch, at most every ``every_s`` seconds.

    ``<label> epoch 2/6 step 120/400 (30%): 211.4 images/s, loss 1.2345; epoch ETA 1m20s, run ETA 9m40s``.
    The run ETA assumes every remaining epoch runs (early stopping can end sooner) and leaves out validation.

    Args:
        logger: Where the lines go.
        label: Name at the start of each line.
        n_epochs: Epochs of the run.
        steps_per_epoch: Optimizer steps per epoch (``None``: no ETA).
        every_s: Seconds between lines (0: every step).

    """

    def __init__(
        self,
        logger: logging.Logger,
        label: str,
        n_epochs: int,
        steps_per_epoch: int | None,
        every_s: float,
    ) -> None:
        self.logger = logger
        self.label = label
        self.n_epochs = n_epochs
        self.steps_per_epoch = steps_per_epoch
        self.every_s = every_s
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        """Reset the clocks at the start (or resumed start) of ``epoch``."""
        self.epoch = epoch
        self.t0 = self.last = time.perf_counter()
        self.images = 0
        self.steps = 0

    def update(self, step: int, n_images: int, loss: float | None = None) -> None:
        """Record one step (``step`` = steps of this epoch done, 1-based) and log if it is time."""
        self.images += n_images
        self.steps += 1
        now = time.perf_counter()
        if now - self.last < self.every_s:
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        rate = self.images / elapsed
        head = f"{self.label} epoch {self.epoch + 1}/{self.n_epochs} step {step}"
        if self.steps_per_epoch:
            head += f"/{self.steps_per_epoch} ({100 * step / self.steps_per_epoch:.0f}%)"
        msg = f"{head}: {rate:.1f} images/s"
        if loss is not None:
            msg += f", loss {loss:.4f}"
        if self.steps_per_epoch:
            per_step = elapsed / self.steps
            left = max(self.steps_per_epoch - step, 0) * per_step
            later = (self.n_epochs - self.epoch - 1) * self.steps_per_epoch * per_step
            msg += f"; epoch ETA {format_duration(left)}, run ETA {format_duration(left + later)}"
        self.logger.info(msg)


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch (and CUDA when present)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state` output."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
