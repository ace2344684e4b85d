"""Steps "model", "resume" and "epochs" of :func:`geoens.models.predictors.train_model`.

:func:`build_optimisation` (network, optimizer, per-step cosine schedule, grad scaler), :func:`resume` (the
checkpoint of a matching earlier run, if any) and :func:`run_epochs` (train, validate, early-stop and
checkpoint each epoch; mid-epoch checkpoints and stop signals), over one :class:`Run`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional

from geoens.core.io import atomic_path
from geoens.models.checkpoint import Checkpointer, ProgressLog, StopSignals, rng_state, set_rng_state
from geoens.models.datasets import Batch
from geoens.models.nets import MultiHeadNet, build_model
from geoens.models.training.config import CLASS_NAMES, TrainerConfig
from geoens.models.training.inputs import TrainData
from geoens.models.training.runtime import (
    DistEnv,
    all_reduce,
    autocast,
    early_stopping_update,
    epoch_seed,
    seed_everything,
    write_metrics,
)

log = logging.getLogger("geoens.train")

#: Format version of ``checkpoint.pt`` of :func:`geoens.models.predictors.train_model`.
CHECKPOINT_VERSION = 1


@dataclasses.dataclass
class Optimisation:
    """The network and what trains it.

    Attributes:
        net: The network (its weights are saved).
        model: ``net``, or ``net`` wrapped in DistributedDataParallel (what the loop calls).
        optimizer: AdamW.
        scheduler: Per-step cosine schedule.
        scaler: fp16 gradient scaler (disabled unless fp16 autocast).
        steps_per_epoch: Optimizer steps of a full epoch.
        use_autocast: Whether the forward passes run under autocast (GPU).

    """

    net: MultiHeadNet
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    use_autocast: bool


@dataclasses.dataclass
class Resume:
    """Where a run stands: its checkpointer, progress log, loop state and mid-epoch sums.

    Attributes:
        checkpoints: When and where the run checkpoints.
        progress: In-epoch progress lines.
        state: ``epoch``, ``best_val_loss``, ``best_epoch``, ``bad_epochs``, ``stopped``, ``history``,
            ``best_confusion``, ``best_acc``.
        partial: Optimizer steps done in epoch ``state["epoch"]`` (``step``) and that epoch's running sums.
        ckpt: The checkpoint resumed from (``None``: a fresh start).

    """

    checkpoints: Checkpointer
    progress: ProgressLog
    state: dict[str, Any]
    partial: dict[str, Any]
    ckpt: dict[str, Any] | None


@dataclasses.dataclass
class Run:
    """Everything one training run's steps share."""

    model: str
    cfg: TrainerConfig
    env: DistEnv
    out: Path
    seed: int
    data: TrainData
    opt: Optimisation
    res: Resume

    @property
    def head_names(self) -> list[str]:
        """Head names, in output order."""
        return list(self.data.heads)

    @property
    def best_path(self) -> Path:
        """``best.pt``: the best weights so far."""
        return self.out / "best.pt"


@dataclasses.dataclass
class EpochSums:
    """Running sums of one epoch's training steps (carried over a mid-epoch resume)."""

    epoch: int
    start_step: int
    lr_start: float
    t0: float
    loss_sum: float
    n_seen: int
    n_skipped: int
    correct: float


def build_optimisation(
    model: str,
    cfg: TrainerConfig,
    heads: Mapping[str, int],
    env: DistEnv,
    train_loader: Iterable[Batch],
    seed: int,
) -> Optimisation:
    """Seed, build the network (DistributedDataParallel when several ranks), optimizer, schedule, scaler."""
    seed_everything(seed)
    net = build_model(model, cfg.backbone, cfg.pretrained, cfg.pretrained_file, n_cells=list(heads.values()))
    net.to(env.device)
    model_ddp: nn.Module = net
    if env.world > 1:
        model_ddp = nn.parallel.DistributedDataParallel(
            net, device_ids=[env.local_rank] if env.device.type == "cuda" else None
        )
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train_loader))  # type: ignore[arg-type]
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch)
    ctx_factory, amp_dtype = autocast(env.device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    return Optimisation(
        net, model_ddp, optimizer, scheduler, scaler, steps_per_epoch, ctx_factory is not None
    )


def fingerprint(
    model: str,
    cfg: TrainerConfig,
    seed: int,
    heads: Mapping[str, int],
    ids: Sequence[str],
    stamp: str = "",
) -> str:
    """Hash of everything a checkpoint must match to be resumed.

    The model, config, seed, heads, image ids and ``stamp``, the
    :func:`~geoens.models.checkpoint.inputs_stamp` of the input files (images, labels, partitions).
    """
    h = hashlib.sha256()
    h.update(json.dumps([model, dataclasses.asdict(cfg), seed, dict(heads), stamp], sort_keys=True).encode())
    for i in ids:
        h.update(i.encode() + b"\0")
    return h.hexdigest()


def resume(
    model: str,
    cfg: TrainerConfig,
    seed: int,
    env: DistEnv,
    out: Path,
    data: TrainData,
    opt: Optimisation,
    *,
    checkpoint_every_steps: int,
    progress_every_s: float,
    signals: StopSignals | None,
    stamp: str = "",
) -> Resume:
    """The resume step: load a matching ``checkpoint.pt`` into the network, optimizer, schedule and RNGs.

    ``stamp`` identifies the input files (:func:`~geoens.models.checkpoint.inputs_stamp`): a checkpoint made
    over other files is not resumed.
    """
    ids = data.train_ids + ["|"] + data.val_ids
    ckpt_path = out / "checkpoint.pt"
    sync = (lambda flag: all_reduce([float(flag)], env)[0] > 0) if env.world > 1 else None
    checkpoints = Checkpointer(
        ckpt_path,
        version=CHECKPOINT_VERSION,
        fingerprint=fingerprint(model, cfg, seed, data.heads, ids, stamp),
        every_steps=checkpoint_every_steps,
        signals=signals,
        main=env.main,
        sync=sync,
        label=f"train {model}",
    )
    progress = ProgressLog(log, f"train {model}", cfg.epochs, opt.steps_per_epoch, progress_every_s)
    state: dict[str, Any] = {
        "epoch": 0,
        "best_val_loss": math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "stopped": False,
        "history": [],
        "best_confusion": None,
        "best_acc": None,
    }
    # mid-epoch resume: optimizer steps done in epoch state["epoch"] and that epoch's running sums
    partial: dict[str, Any] = {"step": 0}
    ckpt = checkpoints.load(env.device)
    if ckpt is not None:
        opt.net.load_state_dict(ckpt["model"])
        opt.optimizer.load_state_dict(ckpt["optimizer"])
        opt.scheduler.load_state_dict(ckpt["scheduler"])
        opt.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        state = ckpt["state"]
        partial = ckpt.get("partial") or partial
        log.info("resumed from %s at epoch %d step %d", ckpt_path, state["epoch"] + 1, partial["step"])
    if state["epoch"] == 0 and partial["step"] == 0 and env.main:
        (out / "best.pt").unlink(missing_ok=True)  # never finish with a previous run's best weights
    return Resume(checkpoints, progress, state, partial, ckpt)


def loss_of(logits: Mapping[str, torch.Tensor], targets: torch.Tensor, heads: Sequence[str]) -> torch.Tensor:
    """Mean cross-entropy of each head, summed over heads (GeoEstimation's multi-partition loss)."""
    if targets.ndim == 1:
        targets = targets[:, None]
    return sum(
        (functional.cross_entropy(logits[h].float(), targets[:, k]) for k, h in enumerate(heads)),
        torch.zeros((), device=targets.device),
    )


def evaluate_loader(
    model: nn.Module,
    loader: Iterable[Any],
    heads: Sequence[str],
    env: DistEnv,
    n_confusion: int = 0,
) -> dict[str, Any]:
    """Compute validation loss (mean per image), top-1 accuracy per head, skipped count, confusion matrix.

    The confusion matrix (rows = truth, columns = prediction) is of the first head, if ``n_confusion`` > 0.
    """
    model.eval()
    loss_sum, n_seen, n_skipped = 0.0, 0, 0
    correct = np.zeros(len(heads))
    confusion = torch.zeros((n_confusion, n_confusion), dtype=torch.float64, device=env.device)
    with torch.no_grad():
        for batch in loader:
            assert isinstance(batch, Batch)
            n_skipped += len(batch.skipped)
            if len(batch) == 0:
                continue
            x = batch.images.to(env.device, non_blocking=True)
            y = batch.targets.to(env.device)
            y2 = y[:, None] if y.ndim == 1 else y
            ctx, _ = autocast(env.device)
            if ctx is not None:
                with ctx:
                    logits = model(x)
            else:
                logits = model(x)
            loss_sum += float(loss_of(logits, y, heads)) * len(batch)
            n_seen += len(batch)
            for k, h in enumerate(heads):
                pred = logits[h].argmax(dim=1)
                correct[k] += float((pred == y2[:, k]).sum())
                if k == 0 and n_confusion:
                    flat = y2[:, 0] * n_confusion + pred
                    confusion += torch.bincount(flat, minlength=n_confusion**2).reshape(n_confusion, -1)
    totals = all_reduce([loss_sum, n_seen, n_skipped, *correct.tolist()], env)
    if env.world > 1 and n_confusion:
        dist.all_reduce(confusion)
    n = totals[1]
    return {
        "loss": totals[0] / n if n else math.nan,
        "acc": [c / n if n else math.nan for c in totals[3:]],
        "n": int(n),
        "skipped": int(totals[2]),
        "confusion": confusion.cpu().numpy().astype(np.int64),
    }


def save_checkpoint(run: Run, step: int, sums: Mapping[str, Any] | None = None) -> None:
    """Checkpoint the run after ``step`` optimizer steps of the current epoch (0: at an epoch end)."""
    opt = run.opt
    run.res.checkpoints.save(
        {
            "model": opt.net.state_dict(),
            "optimizer": opt.optimizer.state_dict(),
            "scheduler": opt.scheduler.state_dict(),
            "scaler": opt.scaler.state_dict(),
            "rng": rng_state(),
            "state": run.res.state,
            "partial": {"step": step, **(sums or {})},
        }
    )


def start_epoch(run: Run) -> EpochSums:
    """Seed the epoch (or restore the RNGs of a mid-epoch checkpoint) and pick up its running sums."""
    res, data = run.res, run.data
    epoch = res.state["epoch"]
    partial = res.partial
    start_step = int(partial["step"])
    seed_everything(epoch_seed(run.seed, epoch))
    if start_step and res.ckpt is not None:  # the RNG state saved at that step boundary
        set_rng_state(res.ckpt["rng"])
    data.train_sampler.set_epoch(epoch)
    data.train_sampler.skip = start_step * run.cfg.batch_size
    data.train_ds.set_epoch(epoch)
    run.opt.model.train()
    lr_start = partial.get("lr_start", run.opt.optimizer.param_groups[0]["lr"])
    t0 = time.perf_counter() - partial.get("seconds", 0.0)
    loss_sum, n_seen = partial.get("loss_sum", 0.0), partial.get("n_seen", 0)
    n_skipped, correct = partial.get("n_skipped", 0), partial.get("correct", 0.0)
    if not run.env.main:  # rank 0 carries the sums of the steps before the resume
        loss_sum, n_seen, n_skipped, correct = 0.0, 0, 0, 0.0
    res.partial = {"step": 0}
    res.progress.start_epoch(epoch)
    return EpochSums(epoch, start_step, lr_start, t0, loss_sum, n_seen, n_skipped, correct)


def train_step(run: Run, sums: EpochSums, step: int, batch: Batch) -> None:
    """One optimizer step on ``batch`` (a batch of fewer than 2 images only advances the schedule)."""
    env, opt, heads = run.env, run.opt, run.head_names
    sums.n_skipped += len(batch.skipped)
    empty = len(batch) < 2  # BatchNorm needs two samples
    if env.world > 1:
        empty = all_reduce([float(empty)], env)[0] > 0
    if empty:
        opt.scheduler.step()
        return
    x = batch.images.to(env.device, non_blocking=True)
    y = batch.targets.to(env.device, non_blocking=True)
    opt.optimizer.zero_grad(set_to_none=True)
    if opt.use_autocast:
        with autocast(env.device)[0]:
            logits = opt.model(x)
    else:
        logits = opt.model(x)
    loss = loss_of(logits, y, heads)
    opt.scaler.scale(loss).backward()
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.scheduler.step()
    loss_value = float(loss.detach())
    sums.loss_sum += loss_value * len(batch)
    sums.n_seen += len(batch)
    y0 = y if y.ndim == 1 else y[:, -1]
    sums.correct += float((logits[heads[-1]].argmax(1) == y0).sum())
    run.res.progress.update(step, len(batch) * env.world, loss_value)


def _barrier() -> None:
    dist.barrier()


def checkpoint_step(run: Run, sums: EpochSums, step: int) -> None:
    """The periodic mid-epoch checkpoint, and after a stop signal a checkpoint and the interrupt.

    Raises:
        TrainingInterrupted: After a stop signal, once the checkpoint is saved.

    """
    env = run.env

    def save() -> None:
        # the epoch's running sums over all ranks; a resume gives them to rank 0 only
        tot = all_reduce([sums.loss_sum, sums.n_seen, sums.n_skipped, sums.correct], env)
        done = {
            "loss_sum": tot[0],
            "n_seen": int(tot[1]),
            "n_skipped": int(tot[2]),
            "correct": tot[3],
        }
        seconds = time.perf_counter() - sums.t0
        save_checkpoint(run, step, {**done, "lr_start": sums.lr_start, "seconds": seconds})

    run.res.checkpoints.save_if_due(
        sums.epoch * run.opt.steps_per_epoch + step,
        save,
        epoch=sums.epoch,
        step=step,
        due=step < run.opt.steps_per_epoch,
        before_interrupt=_barrier if env.world > 1 else None,
    )


def epoch_row(
    run: Run, sums: EpochSums, totals: Sequence[float], train_time: float, val: Mapping[str, Any]
) -> dict[str, Any]:
    """The epoch's metrics row from its sums over all ranks (``totals``: loss, seen, skipped, correct)."""
    loss_sum, f_seen, f_skipped, correct = totals
    n_seen, n_skipped = int(f_seen), int(f_skipped)
    row: dict[str, Any] = {
        "epoch": sums.epoch + 1,
        "lr": sums.lr_start,
        "train_loss": loss_sum / n_seen if n_seen else math.nan,
        "train_acc": correct / n_seen if n_seen else math.nan,
        "val_loss": val["loss"],
    }
    if run.model in CLASS_NAMES:
        row["val_acc"] = val["acc"][0]
    else:
        for h, acc in zip(run.head_names, val["acc"], strict=True):
            row[f"val_acc_{h}"] = acc
    row.update(
        skipped_train=int(n_skipped),
        skipped_val=val["skipped"],
        images_per_s=n_seen / train_time if train_time > 0 else math.nan,
        seconds=train_time,
    )
    return row


def finish_epoch(run: Run, sums: EpochSums) -> None:
    """Validate, record the metrics row, early-stop, keep the best weights and checkpoint the epoch's end.

    Raises:
        TrainingInterrupted: If a stop signal arrived and epochs remain, once the checkpoint is saved.

    """
    env, state, epoch = run.env, run.res.state, sums.epoch
    n_conf = run.data.heads[run.model] if run.model in CLASS_NAMES else 0
    train_time = time.perf_counter() - sums.t0
    totals = all_reduce([sums.loss_sum, sums.n_seen, sums.n_skipped, sums.correct], env)
    val = evaluate_loader(run.opt.model, run.data.val_loader, run.head_names, env, n_conf)
    row = epoch_row(run, sums, totals, train_time, val)
    state["history"].append(row)
    state["epoch"] = epoch + 1
    improved = early_stopping_update(state, val["loss"] if val["n"] else None, epoch + 1, run.cfg.patience)
    if improved:
        state["best_confusion"] = val["confusion"]
        state["best_acc"] = val["acc"]
        if env.main:
            with atomic_path(run.best_path) as tmp:
                torch.save(run.opt.net.state_dict(), tmp)
    elif state["stopped"]:
        log.info("early stop after epoch %d (best %d)", epoch + 1, state["best_epoch"])
    log.info("epoch %s", json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}))
    save_checkpoint(run, 0)
    if env.main:
        write_metrics(state["history"], run.out / "metrics.csv")
    if env.world > 1:
        dist.barrier()
    remaining = state["epoch"] < run.cfg.epochs and not state["stopped"]
    run.res.checkpoints.interrupt_at_epoch_end(epoch + 1, remaining)


def run_epochs(run: Run, stop_after_epochs: int | None = None) -> bool:
    """Train the remaining epochs; ``False`` when ``stop_after_epochs`` stopped it (as if killed).

    Raises:
        TrainingInterrupted: After a stop signal, once the checkpoint is saved.

    """
    state = run.res.state
    while state["epoch"] < run.cfg.epochs and not state["stopped"]:
        if stop_after_epochs is not None and state["epoch"] >= stop_after_epochs:
            return False
        sums = start_epoch(run)
        for step, batch in enumerate(run.data.train_loader, start=sums.start_step + 1):
            assert isinstance(batch, Batch)
            train_step(run, sums, step, batch)
            checkpoint_step(run, sums, step)
        finish_epoch(run, sums)
    return True
