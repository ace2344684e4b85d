"""Contrastive training of the small image tower into GeoCLIP's frozen location space; tower files."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (torch convention)
from torch import Tensor

from geoens.core.constants import PROGRESS_EVERY_S
from geoens.core.io import atomic_path
from geoens.core.types import F32Array
from geoens.models.checkpoint import Checkpointer, ProgressLog, rng_state, set_rng_state
from geoens.models.geoclip.location import (
    EMBED_DIM,
    GeoClipError,
    LocationEncoder,
    file_sha256,
    load_gps_gallery,
    load_location_encoder,
    load_logit_scale,
    weights_dir,
)
from geoens.models.geoclip.towers import TrainedImageTower
from geoens.models.training.config import TrainerConfig
from geoens.models.training.runtime import resolve_device

log = logging.getLogger("geoens.geoclip")

#: Format version of the tower's training checkpoint (``results/models/geoclip_tower/checkpoint.pt``).
TOWER_CHECKPOINT_VERSION = 1

# --------------------------------------------------------------------------------------------------
# Contrastive training of the small tower into the frozen location space
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TowerTrainConfig(TrainerConfig):
    """Hyper-parameters of :func:`train_tower`: the ``geoclip.tower`` trainer settings plus GeoCLIP's extras.

    Attributes (beyond :class:`geoens.models.training.config.TrainerConfig`'s):
        queue_size: Dynamic queue of recent batches' GPS embeddings used as negatives (GeoCLIP: 4096).
        gallery_negatives: GPS-gallery points (sampled once, seeded) used as extra fixed negatives.
        learn_logit_scale: Learn the logit scale (initialised from GeoCLIP's shipped value).
        seed: Random seed.
        device: ``auto``, ``cpu`` or ``cuda``.
        num_workers: DataLoader workers.

    """

    queue_size: int = 1024
    gallery_negatives: int = 2048
    learn_logit_scale: bool = True
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **overrides: Any) -> TowerTrainConfig:
        """Build from the ``geoclip.tower`` mapping plus the ``geoclip`` section's extras.

        Raises:
            ValueError: On a key that is not a setting (naming it).

        """
        return cls.from_mapping({**cfg, **overrides})


class GpsQueue:
    """FIFO queue of location embeddings of recent batches (GeoCLIP's ``dequeue_and_enqueue``).

    The location encoder is frozen, so the queue stores embeddings rather than GPS points.
    """

    def __init__(self, size: int, init: Tensor) -> None:
        if size < 0:
            raise GeoClipError(f"queue_size must be >= 0, got {size}")
        self.size = size
        self.buf = init[:size].clone() if size else init[:0].clone()
        self.ptr = 0

    def get(self) -> Tensor:
        """Return the queued embeddings ``(size, 512)``."""
        return self.buf

    def push(self, emb: Tensor) -> None:
        """Enqueue a batch of embeddings, overwriting the oldest ones."""
        if self.size == 0:
            return
        emb = emb.detach()
        n = emb.shape[0]
        if n >= self.size:
            self.buf.copy_(emb[-self.size :])
            self.ptr = 0
            return
        end = self.ptr + n
        if end <= self.size:
            self.buf[self.ptr : end] = emb
        else:
            first = self.size - self.ptr
            self.buf[self.ptr :] = emb[:first]
            self.buf[: end - self.size] = emb[first:]
        self.ptr = end % self.size


def contrastive_loss(
    img_emb: Tensor, pos_loc_emb: Tensor, neg_loc_emb: Tensor, logit_scale: Tensor
) -> Tensor:
    """GeoCLIP's image-to-GPS loss: cross-entropy of ``scale * cos`` over [batch GPS; negatives].

    Image ``i``'s target is its own GPS, column ``i``; the other images' GPS and the negatives are the rest.
    """
    locs = torch.cat([pos_loc_emb, neg_loc_emb], dim=0)
    logits = logit_scale * (F.normalize(img_emb, dim=1) @ F.normalize(locs, dim=1).T)
    targets = torch.arange(img_emb.shape[0], device=img_emb.device)
    return F.cross_entropy(logits, targets)


GpsBatch = tuple[Tensor, Tensor]
"""A training batch: images ``(B, 3, H, W)`` and ``(B, 2)`` ``(lat, lon)`` degrees."""


@torch.no_grad()
def evaluate_loss(
    tower: TrainedImageTower,
    batches: Iterable[GpsBatch],
    encoder: LocationEncoder,
    negatives: Tensor,
    device: torch.device,
) -> float:
    """Mean contrastive loss over ``batches`` against fixed ``negatives`` (no queue: deterministic)."""
    tower.eval()
    total, count = 0.0, 0
    for images, gps in batches:
        images, gps = images.to(device), gps.to(device, torch.float32)
        loss = contrastive_loss(tower(images), encoder(gps), negatives, tower.logit_scale())
        total += float(loss) * images.shape[0]
        count += images.shape[0]
    return total / max(count, 1)


@dataclass
class TowerRun:
    """The state of one tower training run, shared by its steps.

    Attributes:
        cfg: Hyper-parameters.
        device: Where the tower trains.
        enc: The frozen location encoder.
        gal_emb: Location embeddings of the fixed gallery negatives.
        queue: The GPS-embedding queue (dynamic negatives).
        tower: The tower being trained.
        opt: AdamW over the trainable parameters.
        sched: Per-epoch cosine schedule.
        st: The loop state a checkpoint stores (``epoch``, ``step``, ``global_step``, ``total``, ``count``,
            ``history``, ``best_loss``, ``best_state``, ``stale``, ``done``).
        checkpoint: Where and when to checkpoint (``None``: no checkpoint, no resume).
        progress: In-epoch progress lines.

    """

    cfg: TowerTrainConfig
    device: torch.device
    enc: LocationEncoder
    gal_emb: Tensor
    queue: GpsQueue
    tower: TrainedImageTower
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    st: dict[str, Any]
    checkpoint: Checkpointer | None
    progress: ProgressLog


def tower_negatives(
    cfg: TowerTrainConfig, enc: LocationEncoder, gal: F32Array, device: torch.device
) -> tuple[Tensor, GpsQueue]:
    """Embeddings of the seeded gallery sample (fixed negatives) and the queue filled from the gallery."""
    rng = np.random.default_rng(cfg.seed)
    n_gal = min(cfg.gallery_negatives, len(gal))
    gal_idx = np.sort(rng.choice(len(gal), size=n_gal, replace=False)) if n_gal else np.zeros(0, dtype=int)
    with torch.no_grad():
        gal_emb = enc(torch.from_numpy(gal[gal_idx]).to(device)) if n_gal else torch.zeros(0, EMBED_DIM)
        q_idx = rng.choice(len(gal), size=cfg.queue_size, replace=len(gal) < cfg.queue_size)
        queue = GpsQueue(cfg.queue_size, enc(torch.from_numpy(gal[q_idx]).to(device)))
    return gal_emb.to(device), queue


def start_tower_run(
    cfg: TowerTrainConfig,
    encoder: LocationEncoder | None,
    gallery: F32Array | None,
    checkpoint: Checkpointer | None,
    progress: ProgressLog,
) -> TowerRun:
    """Seed, load the encoder and gallery, build tower, optimizer and schedule; resume a checkpoint."""
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    enc = (encoder if encoder is not None else load_location_encoder()).to(device).eval()
    enc.requires_grad_(False)
    gal = gallery if gallery is not None else load_gps_gallery()
    gal_emb, queue = tower_negatives(cfg, enc, gal, device)

    tower = TrainedImageTower(
        cfg.backbone, cfg.pretrained, init_logit_scale=load_logit_scale(), pretrained_file=cfg.pretrained_file
    ).to(device)
    tower.logit_scale_log.requires_grad_(cfg.learn_logit_scale)
    params = [p for p in tower.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))

    # the loop's state; a checkpoint stores it with the weights, optimizer, schedule, queue and RNG
    st: dict[str, Any] = {
        "epoch": 0, "step": 0, "global_step": 0, "total": 0.0, "count": 0, "history": [],
        "best_loss": math.inf, "best_state": copy.deepcopy(tower.state_dict()), "stale": 0, "done": False,
    }  # fmt: skip
    run = TowerRun(cfg, device, enc, gal_emb, queue, tower, opt, sched, st, checkpoint, progress)
    resume_tower(run)
    return run


def resume_tower(run: TowerRun) -> None:
    """Load a matching checkpoint (weights, optimizer, schedule, queue, RNG, loop state), if any."""
    checkpoint = run.checkpoint
    saved = checkpoint.load("cpu") if checkpoint is not None else None
    if checkpoint is not None and saved is not None:
        run.tower.load_state_dict(saved["tower"])
        run.opt.load_state_dict(saved["optimizer"])
        run.sched.load_state_dict(saved["scheduler"])
        run.queue.buf, run.queue.ptr = saved["queue"].to(run.device), int(saved["queue_ptr"])
        set_rng_state(saved["rng"])
        run.st = saved["state"]
        log.info(
            "geoclip tower: resumed from %s at epoch %d step %d",
            checkpoint.path, run.st["epoch"] + 1, run.st["step"],
        )  # fmt: skip


def save_tower_checkpoint(run: TowerRun) -> None:
    """Write the whole training state to the run's checkpoint."""
    assert run.checkpoint is not None
    run.checkpoint.save(
        {
            "tower": run.tower.state_dict(),
            "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(),
            "queue": run.queue.buf,
            "queue_ptr": run.queue.ptr,
            "rng": rng_state(),
            "state": run.st,
        }
    )


def tower_step(run: TowerRun, images: Tensor, gps: Tensor) -> float:
    """One optimizer step on a batch; the batch's location embeddings join the queue. Returns the loss."""
    images, gps = images.to(run.device), gps.to(run.device, torch.float32)
    with torch.no_grad():
        pos = run.enc(gps)
    negatives = torch.cat([run.queue.get(), run.gal_emb], dim=0)
    loss = contrastive_loss(run.tower(images), pos, negatives, run.tower.logit_scale())
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    run.queue.push(pos)
    loss_value = float(loss.detach())
    run.st["total"] += loss_value * images.shape[0]
    run.st["count"] += images.shape[0]
    return loss_value


def tower_epoch(
    run: TowerRun,
    train_batches: Callable[[int, int], Iterable[GpsBatch]],
    on_step: Callable[[int, int], None] | None,
) -> None:
    """Train the rest of the current epoch (from ``st["step"]``), checkpointing when due or signalled.

    Raises:
        TrainingInterrupted: After a stop signal, once the checkpoint is saved.

    """
    st, checkpoint = run.st, run.checkpoint
    epoch = st["epoch"]
    run.tower.train()
    run.progress.start_epoch(epoch)
    for step, (images, gps) in enumerate(train_batches(epoch, st["step"]), start=st["step"] + 1):
        loss_value = tower_step(run, images, gps)
        st["step"], st["global_step"] = step, st["global_step"] + 1
        run.progress.update(step, images.shape[0], loss_value)
        if on_step is not None:
            on_step(epoch, step)
        if checkpoint is not None:
            checkpoint.save_if_due(
                st["global_step"], lambda: save_tower_checkpoint(run), epoch=epoch, step=step
            )


def end_tower_epoch(
    run: TowerRun,
    val_batches: Callable[[], Iterable[GpsBatch]] | None,
    on_epoch: Callable[[dict[str, float]], None] | None,
) -> None:
    """Step the schedule, validate, record the metrics row, keep the best tower, early-stop, checkpoint.

    Raises:
        TrainingInterrupted: If a stop signal arrived and epochs remain, once the checkpoint is saved.

    """
    st, cfg, checkpoint, tower = run.st, run.cfg, run.checkpoint, run.tower
    epoch = st["epoch"]
    run.sched.step()
    row = {
        "epoch": float(epoch),
        "train_loss": st["total"] / max(st["count"], 1),
        "logit_scale": float(tower.logit_scale().detach()),
    }
    if val_batches is not None:
        row["val_loss"] = evaluate_loss(tower, val_batches(), run.enc, run.gal_emb, run.device)
    st["history"].append(row)
    log.info("geoclip tower epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
    if on_epoch is not None:
        on_epoch(row)
    score = row.get("val_loss", row["train_loss"] if val_batches is None else math.inf)
    if val_batches is None or score < st["best_loss"]:
        st.update(best_loss=score, best_state=copy.deepcopy(tower.state_dict()), stale=0)
    else:
        st["stale"] += 1
        if st["stale"] >= cfg.patience:
            log.info("early stopping after epoch %d (no val improvement in %d epochs)", epoch, st["stale"])
            st["done"] = True
    st.update(epoch=epoch + 1, step=0, total=0.0, count=0)
    if checkpoint is not None:
        save_tower_checkpoint(run)
        checkpoint.interrupt_at_epoch_end(epoch + 1, st["epoch"] < cfg.epochs and not st["done"])


def train_tower(
    train_batches: Callable[[int, int], Iterable[GpsBatch]],
    val_batches: Callable[[], Iterable[GpsBatch]] | None,
    cfg: TowerTrainConfig,
    encoder: LocationEncoder | None = None,
    gallery: F32Array | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    *,
    checkpoint: Checkpointer | None = None,
    steps_per_epoch: int | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[TrainedImageTower, list[dict[str, float]]]:
    """Train a small image tower into GeoCLIP's frozen location space with GeoCLIP's objective.

    Each step: image embeddings vs the location embeddings of the batch's own GPS (positives; the other
    images' GPS are negatives too), of a dynamic queue of recent batches' GPS, and of a fixed seeded sample
    of GeoCLIP's GPS gallery; cross-entropy on ``logit_scale * cos``. The location encoder stays frozen.
    The tower with the lowest validation loss is kept (early stopping with ``cfg.patience``).

    With ``checkpoint``, the whole training state (weights, optimizer, schedule, GPS queue, early-stopping
    state, RNG) is saved at every epoch end, every ``checkpoint.every_steps`` steps and after a stop signal
    (then :class:`~geoens.models.checkpoint.TrainingInterrupted` is raised), and a matching checkpoint is
    resumed, also in the middle of an epoch, ending with the same weights as an uninterrupted run.

    Args:
        train_batches: ``(epoch, first batch) -> iterable of (images, gps)``, shuffled per epoch by the
            caller; a resume asks for the batches from ``first batch`` on
            (:func:`geoens.models.geoclip.stage.gps_batches`).
        val_batches: ``() -> iterable of (images, gps)`` or ``None`` (then the last epoch is kept).
        cfg: Hyper-parameters.
        encoder: GeoCLIP's location encoder (default: the shipped weights).
        gallery: ``(n, 2)`` GPS gallery (default: GeoCLIP's 100K gallery).
        on_epoch: Called with each epoch's metrics row.
        checkpoint: Where and when to checkpoint (``None``: no checkpoint, no resume).
        steps_per_epoch: Batches per epoch, for the progress line's ETA (``None``: no ETA).
        progress_every_s: Seconds between in-epoch progress lines (images/s, ETA) in the log.
        on_step: Called with ``(epoch, step)`` after each optimizer step.

    Returns:
        The trained tower (eval mode, on CPU) and one metrics row per epoch
        (``epoch, train_loss, val_loss, logit_scale``).

    """
    progress = ProgressLog(log, "geoclip tower", cfg.epochs, steps_per_epoch, progress_every_s)
    run = start_tower_run(cfg, encoder, gallery, checkpoint, progress)
    while run.st["epoch"] < cfg.epochs and not run.st["done"]:
        tower_epoch(run, train_batches, on_step)
        end_tower_epoch(run, val_batches, on_epoch)
    history: list[dict[str, float]] = run.st["history"]
    run.tower.load_state_dict(run.st["best_state"])
    return run.tower.cpu().eval(), history


def save_tower(
    path: str | Path, tower: TrainedImageTower, cfg: TowerTrainConfig, history: list[dict[str, float]]
) -> None:
    """Save a trained tower's weights and metadata (atomic)."""
    payload = {
        "kind": "geoclip_tower",
        "backbone": tower.backbone_name,
        "embed_dim": EMBED_DIM,
        "state_dict": tower.state_dict(),
        "logit_scale": float(tower.logit_scale().detach()),
        "config": asdict(cfg),
        "history": history,
        "location_encoder_sha256": file_sha256(weights_dir() / "location_encoder_weights.pth"),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_tower(path: str | Path) -> tuple[TrainedImageTower, dict[str, Any]]:
    """Load a tower saved by :func:`save_tower` (eval mode, CPU) and its metadata.

    Raises:
        GeoClipError: If the file is not a GeoCLIP tower.

    """
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("kind") != "geoclip_tower":
        raise GeoClipError(f"{path}: not a GeoCLIP image tower saved by geoens (missing kind=geoclip_tower)")
    tower = TrainedImageTower(payload["backbone"], pretrained=False)
    tower.load_state_dict(payload["state_dict"])
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return tower.eval(), meta
