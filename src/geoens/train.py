"""Train every predictor (``ls``, ``lc``, ``geoest``) in one resumable loop, and cache predictions.

Training (:func:`train_model`): AdamW + per-step cosine schedule, seeded (torch, numpy, python ``random``; the
data order and every image's augmentation are functions of ``(seed, epoch, index)``), a checkpoint every epoch
(model, optimizer, scheduler, scaler, epoch, RNG states, early-stopping state, metrics history) in
``<out>/checkpoint.pt``; a rerun resumes from it and ends with the same weights as an uninterrupted run. Early
stopping on validation loss (``patience``); the final ``model.pt`` holds the best-validation-loss weights and
the metadata :func:`load_model` needs. Single process on CPU/GPU, or DistributedDataParallel when started by
``torchrun`` (``WORLD_SIZE``/``LOCAL_RANK``; only rank 0 writes); bf16/fp16 autocast on GPU only.

Prediction (:func:`predict`, :func:`predict_to_parquet`): per-image probability vectors (``geoest``: the
hierarchical fine-cell probabilities) and the top class; undecodable images are dropped and counted.

Command line (used by ``rules/train.smk``; under ``torchrun`` for several GPUs)::

    python -m geoens.train --model ls --labels results/labels/train --shards <dir> --out results/models/ls \
        --trainer '{"backbone": "resnet18", ...}'
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, DistributedSampler

from geoens.checkpoint import (
    Checkpointer,
    ProgressLog,
    SkipSampler,
    StopSignals,
    TrainingInterrupted,
    rng_state,
    run_child_ignoring_stop_signals,
    set_rng_state,
)
from geoens.constants import (
    CHECKPOINT_EVERY_STEPS,
    EXIT_RESUMABLE,
    LC_CLASSES,
    LS_BUCKETS,
    PROGRESS_EVERY_S,
)
from geoens.data import (
    AugmentConfig,
    Batch,
    FolderSource,
    ImageDataset,
    ImageSource,
    ShardIndex,
    ShardSource,
    collate_skip,
    make_transforms,
    read_label_parts,
)
from geoens.imagecache import CachedLoader, load_image_cache
from geoens.io import atomic_path, write_json
from geoens.models import GEOEST_HEADS, MultiHeadNet, backbone_norm, build_model, hierarchical_combine

log = logging.getLogger(__name__)

#: Predictors this module trains.
MODELS: tuple[str, ...] = ("ls", "lc", "geoest")
#: Class names of the attribute heads (for plots and metadata).
CLASS_NAMES: dict[str, tuple[str, ...]] = {"ls": LS_BUCKETS, "lc": LC_CLASSES}
#: Label column of each attribute model.
LABEL_COLUMN: dict[str, str] = {"ls": "ls_bucket", "lc": "lc7"}
#: Cell label columns of the geoest heads, coarse first.
CELL_COLUMNS: tuple[str, ...] = ("cell_coarse", "cell_middle", "cell_fine")
CHECKPOINT_VERSION = 1


class TrainingError(RuntimeError):
    """Training cannot proceed (no usable rows, no image found in the shards...)."""


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Per-predictor settings (``train.models.<name>`` in the config; see the schema for meanings)."""

    backbone: str = "resnet18"
    pretrained: bool = False
    pretrained_file: str | None = None
    image_size: int = 64
    epochs: int = 6
    batch_size: int = 64
    lr: float = 0.002
    weight_decay: float = 1e-4
    patience: int = 3
    gpus: int = 0
    max_train_images: int | None = None
    augment: AugmentConfig = AugmentConfig()

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | str) -> Self:
        """Build from a config mapping or its JSON string.

        Raises:
            ValueError: On a key that is not a trainer or augment setting (naming it).

        """
        data = json.loads(cfg) if isinstance(cfg, str) else dict(cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown trainer config key(s) {unknown}; known: {sorted(names)}")
        if "augment" in data and not isinstance(data["augment"], AugmentConfig):
            data["augment"] = AugmentConfig.from_mapping(data["augment"])
        return cls(**data)


# --------------------------------------------------------------------------------------------------------
# labels


def select_rows(labels: pd.DataFrame, model: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows a predictor trains on and their targets.

    ``ls``/``lc``: rows with ``attr_keep`` and a label ``>= 0`` (targets ``(n,)``); ``geoest``: rows whose
    three ``cell_*`` labels are ``>= 0`` (targets ``(n, 3)``, coarse, middle, fine). Rows are sorted by
    ``image_id`` so the order does not depend on how the label parts were written.

    Raises:
        KeyError: If a needed column is missing.
        ValueError: For an unknown model.

    """
    if model in LABEL_COLUMN:
        need = ["image_id", "split", "attr_keep", LABEL_COLUMN[model]]
    elif model == "geoest":
        need = ["image_id", "split", *CELL_COLUMNS]
    else:
        raise ValueError(f"unknown predictor '{model}' (expected one of {MODELS})")
    missing = [c for c in need if c not in labels.columns]
    if missing:
        raise KeyError(f"label table lacks column(s) {missing} needed by model '{model}'")
    if model in LABEL_COLUMN:
        col = LABEL_COLUMN[model]
        keep = labels["attr_keep"].astype(bool).to_numpy() & (labels[col].to_numpy() >= 0)
    else:
        keep = np.logical_and.reduce([labels[c].to_numpy() >= 0 for c in CELL_COLUMNS])
    rows = labels.loc[keep].sort_values("image_id", kind="stable").reset_index(drop=True)
    targets: np.ndarray
    if model in LABEL_COLUMN:
        targets = rows[LABEL_COLUMN[model]].to_numpy().astype(np.int64)
    else:
        targets = rows[list(CELL_COLUMNS)].to_numpy().astype(np.int64)
    return rows, targets


def read_partition_sizes(partitions_dir: str | Path) -> tuple[int, int, int]:
    """Count the classes of the coarse, middle and fine partition CSVs (GeoEstimation layout).

    Raises:
        FileNotFoundError: If a CSV is missing.
        ValueError: If a CSV lacks ``class_label`` or its labels are not ``0..n-1``.

    """
    sizes = []
    for level in GEOEST_HEADS:
        path = Path(partitions_dir) / f"{level}.csv"
        if not path.exists():
            raise FileNotFoundError(f"partition file not found: {path}")
        df = pd.read_csv(path, skiprows=2)
        if "class_label" not in df.columns:
            raise ValueError(
                f"{path}: no class_label column after the 2 comment lines (got {list(df.columns)})"
            )
        labels = np.sort(df["class_label"].to_numpy())
        if not np.array_equal(labels, np.arange(len(labels))):
            raise ValueError(f"{path}: class_label must be 0..{len(labels) - 1}")
        sizes.append(len(labels))
    return sizes[0], sizes[1], sizes[2]


def read_hierarchy(path: str | Path, n_fine: int | None = None) -> np.ndarray:
    """``(n_fine, 2)`` int64 array of the (middle, coarse) parents of each fine cell from hierarchy.parquet.

    Raises:
        ValueError: If the ``fine`` column is not ``0..n-1`` in order or does not match ``n_fine``.

    """
    df = pd.read_parquet(path, columns=["fine", "middle", "coarse"])
    fine = df["fine"].to_numpy()
    if not np.array_equal(fine, np.arange(len(df))):
        raise ValueError(f"{path}: rows must be ordered by fine = 0..{len(df) - 1}")
    if n_fine is not None and len(df) != n_fine:
        raise ValueError(f"{path}: {len(df)} fine cells but the fine partition has {n_fine}")
    return df[["middle", "coarse"]].to_numpy().astype(np.int64)


# --------------------------------------------------------------------------------------------------------
# run environment


@dataclasses.dataclass
class DistEnv:
    """Process placement: rank, local rank, world size and the torch device."""

    rank: int
    local_rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Whether this process writes outputs (rank 0)."""
        return self.rank == 0


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU is an error.

    Raises:
        RuntimeError: If ``cuda`` is requested and none is available.

    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no GPU")
    return torch.device(device)


def setup_distributed(device: str) -> DistEnv:
    """Read ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (set by torchrun) and join the process group if > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if world > 1:
        if dev.type == "cuda":
            torch.cuda.set_device(local_rank)
            dev = torch.device("cuda", local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank, local_rank, world, dev)


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return zlib.crc32(f"geoens-train:{seed}:{epoch}".encode())


# --------------------------------------------------------------------------------------------------------
# training


def _loss(logits: Mapping[str, torch.Tensor], targets: torch.Tensor, heads: Sequence[str]) -> torch.Tensor:
    """Mean cross-entropy of each head, summed over heads (GeoEstimation's multi-partition loss)."""
    if targets.ndim == 1:
        targets = targets[:, None]
    return sum(
        (functional.cross_entropy(logits[h].float(), targets[:, k]) for k, h in enumerate(heads)),
        torch.zeros((), device=targets.device),
    )


def _unwrap(model: nn.Module) -> MultiHeadNet:
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    assert isinstance(inner, MultiHeadNet)
    return inner


def _all_reduce(values: Sequence[float], env: DistEnv) -> list[float]:
    if env.world == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return t.tolist()


def _autocast(device: torch.device) -> tuple[Any, torch.dtype | None]:
    if device.type != "cuda":
        return None, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype), dtype


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
            ctx, _ = _autocast(env.device)
            if ctx is not None:
                with ctx:
                    logits = model(x)
            else:
                logits = model(x)
            loss_sum += float(_loss(logits, y, heads)) * len(batch)
            n_seen += len(batch)
            for k, h in enumerate(heads):
                pred = logits[h].argmax(dim=1)
                correct[k] += float((pred == y2[:, k]).sum())
                if k == 0 and n_confusion:
                    flat = y2[:, 0] * n_confusion + pred
                    confusion += torch.bincount(flat, minlength=n_confusion**2).reshape(n_confusion, -1)
    totals = _all_reduce([loss_sum, n_seen, n_skipped, *correct.tolist()], env)
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


def _fingerprint(
    model: str, cfg: TrainerConfig, seed: int, heads: Mapping[str, int], ids: Sequence[str]
) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([model, dataclasses.asdict(cfg), seed, dict(heads)], sort_keys=True).encode())
    for i in ids:
        h.update(i.encode() + b"\0")
    return h.hexdigest()


def _make_loader(
    dataset: ImageDataset,
    batch_size: int,
    num_workers: int,
    env: DistEnv,
    shuffle: bool,
    seed: int,
    drop_last: bool = False,
) -> tuple[DataLoader[Any], SkipSampler]:
    # SkipSampler: a mid-epoch resume skips the samples of the batches already done (skip = 0 otherwise)
    sampler = SkipSampler(
        DistributedSampler(
            dataset, num_replicas=env.world, rank=env.rank, shuffle=shuffle, seed=seed, drop_last=False
        )
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_skip,
        pin_memory=env.device.type == "cuda",
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )
    return loader, sampler


def _cached_loaders(
    cache: Any,
    train_ds: ImageDataset,
    val_ds: ImageDataset,
    train_sampler: SkipSampler,
    val_sampler: SkipSampler,
    cfg: TrainerConfig,
    seed: int,
    drop_last: bool,
) -> tuple[CachedLoader, CachedLoader]:
    """Loaders over the decoded-image cache with the JPEG loaders' samplers (same order, same batches).

    The samplers are the :class:`~geoens.checkpoint.SkipSampler` s of :func:`_make_loader`, so a mid-epoch
    resume skips the batches already done on this path too; their ``epoch`` seeds the augmentation.
    """
    mean, std = backbone_norm(cfg.backbone)
    size, bs = cfg.image_size, cfg.batch_size
    train = CachedLoader(cache, train_ds.ids, train_ds.targets.numpy(), train_sampler, bs, size, mean, std,
                         augment=cfg.augment, seed=seed, drop_last=drop_last)  # fmt: skip
    val = CachedLoader(cache, val_ds.ids, val_ds.targets.numpy(), val_sampler, bs, size, mean, std)
    return train, val


def train_model(
    model: str,
    labels: str | Path,
    shards_dir: str | Path,
    out_dir: str | Path,
    trainer: TrainerConfig | Mapping[str, Any] | str,
    *,
    partitions_dir: str | Path | None = None,
    shard_index: str | Path | None = None,
    device: str = "auto",
    num_workers: int = 2,
    seed: int = 0,
    threads: int | None = None,
    stop_after_epochs: int | None = None,
    checkpoint_every_steps: int = CHECKPOINT_EVERY_STEPS,
    progress_every_s: float = PROGRESS_EVERY_S,
    signals: StopSignals | None = None,
    image_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Train (or resume training) one predictor and write its outputs to ``out_dir``.

    Writes ``checkpoint.pt`` (resume state: every epoch, every ``checkpoint_every_steps`` optimizer steps and
    after a stop signal; a resume continues mid-epoch), ``best.pt`` (best weights so far) and, at the end,
    ``model.pt``, ``metrics.csv``, ``curve.png`` and ``confusion.png``. Rank 0 only under torchrun.

    Args:
        model: ``ls``, ``lc`` or ``geoest``.
        labels: Label Parquet file or folder of ``part-*.parquet`` (``split`` in train/val).
        shards_dir: Folder of msgpack shards holding the images.
        out_dir: ``results/models/<model>``.
        trainer: The ``train.models.<model>`` config.
        partitions_dir: Folder with ``{coarse,middle,fine}.csv`` and ``hierarchy.parquet`` (geoest).
        shard_index: Cached :class:`~geoens.data.ShardIndex` Parquet (built and saved there if missing).
        device: ``auto``, ``cpu`` or ``cuda``.
        num_workers: DataLoader worker processes.
        seed: Seed of initialisation, data order and augmentation.
        threads: ``torch.set_num_threads`` (the Snakemake job's threads).
        stop_after_epochs: Stop (as if killed) once this many epochs are done, without writing the final
            outputs; for tests of resuming.
        checkpoint_every_steps: Optimizer steps between mid-epoch checkpoints (0: only at epoch ends).
        progress_every_s: Seconds between in-epoch progress lines (images/s, ETA) in the log.
        signals: Active :class:`~geoens.checkpoint.StopSignals` (the command line installs them): after
            SIGTERM/SIGUSR1 the loop checkpoints at the next step boundary and raises
            :class:`~geoens.checkpoint.TrainingInterrupted`.
        image_cache: Folder written by :func:`geoens.imagecache.build_image_cache`: when it holds the images,
            they are read from there and augmented in batches in this process (no loader workers); when it
            says they were not cached (large or mixed sizes), or with ``None``, the JPEGs are read.

    Returns:
        A summary: epochs run, best epoch and validation loss, skipped images, whether it stopped early.

    Raises:
        TrainingError: If no training row is left or no label id is in the shards.
        TrainingInterrupted: After a stop signal, once the checkpoint is saved.

    """
    cfg = trainer if isinstance(trainer, TrainerConfig) else TrainerConfig.from_mapping(trainer)
    if model not in MODELS:
        raise ValueError(f"unknown predictor '{model}' (expected one of {MODELS})")
    if threads:
        torch.set_num_threads(int(threads))
    env = setup_distributed(device)
    out = Path(out_dir)
    if env.main:
        out.mkdir(parents=True, exist_ok=True)

    # ---- data
    table = read_label_parts(labels)
    rows, targets = select_rows(table, model)
    hierarchy = None
    if model == "geoest":
        if partitions_dir is None:
            raise ValueError("geoest needs partitions_dir (coarse/middle/fine CSVs and hierarchy.parquet)")
        n_cells = read_partition_sizes(partitions_dir)
        hierarchy = read_hierarchy(Path(partitions_dir) / "hierarchy.parquet", n_cells[2])
        for k, col in enumerate(CELL_COLUMNS):
            if len(targets) and targets[:, k].max() >= n_cells[k]:
                raise ValueError(f"label column {col} has class {targets[:, k].max()} >= {n_cells[k]} cells")
        heads = dict(zip(GEOEST_HEADS, n_cells, strict=True))
    else:
        heads = {model: len(CLASS_NAMES[model])}
        if len(targets) and targets.max() >= heads[model]:
            raise ValueError(
                f"label column {LABEL_COLUMN[model]} has class {targets.max()} >= {heads[model]}"
            )
    is_train = (rows["split"] == "train").to_numpy()
    is_val = (rows["split"] == "val").to_numpy()
    train_idx = np.flatnonzero(is_train)
    if cfg.max_train_images is not None and len(train_idx) > cfg.max_train_images:
        pick = np.random.default_rng(seed).choice(len(train_idx), cfg.max_train_images, replace=False)
        train_idx = train_idx[np.sort(pick)]
    val_idx = np.flatnonzero(is_val)
    if len(train_idx) == 0:
        raise TrainingError(
            f"model '{model}': no training row in {labels} (split == train with valid labels)"
        )
    train_ids = rows["image_id"].to_numpy()[train_idx].tolist()
    val_ids = rows["image_id"].to_numpy()[val_idx].tolist()

    index = load_or_build_index(shards_dir, shard_index, write=env.main)
    found = sum(i in index for i in train_ids)
    if found == 0:
        raise TrainingError(
            f"none of the {len(train_ids)} training ids of '{model}' is in the shards {shards_dir}"
        )
    if found < len(train_ids):
        log.warning(
            "%d of %d training ids are not in the shards (skipped)", len(train_ids) - found, len(train_ids)
        )
    source = ShardSource(shards_dir, index)
    mean, std = backbone_norm(cfg.backbone)
    train_ds = ImageDataset(
        source,
        train_ids,
        targets[train_idx],
        make_transforms(cfg.image_size, True, mean, std, cfg.augment),
        seed,
    )
    val_ds = ImageDataset(
        source, val_ids, targets[val_idx], make_transforms(cfg.image_size, False, mean, std)
    )
    drop_last = len(train_ds) // env.world > cfg.batch_size
    train_loader, train_sampler = _make_loader(
        train_ds, cfg.batch_size, num_workers, env, True, seed, drop_last=drop_last
    )
    val_loader, val_sampler = _make_loader(val_ds, cfg.batch_size, num_workers, env, False, seed)
    cache = load_image_cache(image_cache) if image_cache is not None else None
    if cache is not None:
        train_loader, val_loader = _cached_loaders(  # type: ignore[assignment]
            cache, train_ds, val_ds, train_sampler, val_sampler, cfg, seed, drop_last
        )
    log.info(
        "model %s: %d train / %d val images, heads %s, backbone %s @ %d px, device %s, world %d, %s",
        model, len(train_ds), len(val_ds), heads, cfg.backbone, cfg.image_size, env.device, env.world,
        "decoded-image cache" if cache is not None else f"JPEG shards, {num_workers} loader workers",
    )  # fmt: skip

    # ---- model, optimiser, schedule
    seed_everything(seed)
    net = build_model(model, cfg.backbone, cfg.pretrained, cfg.pretrained_file, n_cells=list(heads.values()))
    net.to(env.device)
    model_ddp: nn.Module = net
    if env.world > 1:
        model_ddp = nn.parallel.DistributedDataParallel(
            net, device_ids=[env.local_rank] if env.device.type == "cuda" else None
        )
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train_loader))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch)
    ctx_factory, amp_dtype = _autocast(env.device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    head_names = list(heads)
    n_conf = heads[model] if model in CLASS_NAMES else 0

    # ---- resume
    fingerprint = _fingerprint(model, cfg, seed, heads, train_ids + ["|"] + val_ids)
    ckpt_path, best_path = out / "checkpoint.pt", out / "best.pt"
    sync = (lambda flag: _all_reduce([float(flag)], env)[0] > 0) if env.world > 1 else None
    checkpoints = Checkpointer(
        ckpt_path,
        version=CHECKPOINT_VERSION,
        fingerprint=fingerprint,
        every_steps=checkpoint_every_steps,
        signals=signals,
        main=env.main,
        sync=sync,
        label=f"train {model}",
    )
    progress = ProgressLog(log, f"train {model}", cfg.epochs, steps_per_epoch, progress_every_s)
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
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        state = ckpt["state"]
        partial = ckpt.get("partial") or partial
        log.info("resumed from %s at epoch %d step %d", ckpt_path, state["epoch"] + 1, partial["step"])
    if state["epoch"] == 0 and partial["step"] == 0 and env.main:
        best_path.unlink(missing_ok=True)  # never finish with a previous run's best weights

    # ---- epochs
    skipped_total = sum(int(r["skipped_train"]) for r in state["history"])

    def save_checkpoint(step: int, sums: Mapping[str, Any] | None = None) -> None:
        checkpoints.save(
            {
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng_state(),
                "state": state,
                "partial": {"step": step, **(sums or {})},
            }
        )

    while state["epoch"] < cfg.epochs and not state["stopped"]:
        if stop_after_epochs is not None and state["epoch"] >= stop_after_epochs:
            return {"epochs": state["epoch"], "interrupted": True}
        epoch = state["epoch"]
        start_step = int(partial["step"])
        seed_everything(_epoch_seed(seed, epoch))
        if start_step and ckpt is not None:  # the RNG state saved at that step boundary
            set_rng_state(ckpt["rng"])
        train_sampler.set_epoch(epoch)
        train_sampler.skip = start_step * cfg.batch_size
        train_ds.set_epoch(epoch)
        model_ddp.train()
        lr_start = partial.get("lr_start", optimizer.param_groups[0]["lr"])
        t0 = time.perf_counter() - partial.get("seconds", 0.0)
        loss_sum, n_seen = partial.get("loss_sum", 0.0), partial.get("n_seen", 0)
        n_skipped, correct = partial.get("n_skipped", 0), partial.get("correct", 0.0)
        if not env.main:  # rank 0 carries the sums of the steps before the resume
            loss_sum, n_seen, n_skipped, correct = 0.0, 0, 0, 0.0
        partial = {"step": 0}
        progress.start_epoch(epoch)
        for step, batch in enumerate(train_loader, start=start_step + 1):
            assert isinstance(batch, Batch)
            n_skipped += len(batch.skipped)
            empty = len(batch) < 2  # BatchNorm needs two samples
            if env.world > 1:
                empty = _all_reduce([float(empty)], env)[0] > 0
            if empty:
                scheduler.step()
            else:
                x = batch.images.to(env.device, non_blocking=True)
                y = batch.targets.to(env.device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                if ctx_factory is not None:
                    with _autocast(env.device)[0]:
                        logits = model_ddp(x)
                else:
                    logits = model_ddp(x)
                loss = _loss(logits, y, head_names)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                loss_value = float(loss.detach())
                loss_sum += loss_value * len(batch)
                n_seen += len(batch)
                y0 = y if y.ndim == 1 else y[:, -1]
                correct += float((logits[head_names[-1]].argmax(1) == y0).sum())
                progress.update(step, len(batch) * env.world, loss_value)
            stop = checkpoints.stop_requested()
            if stop or (checkpoints.step_due(epoch * steps_per_epoch + step) and step < steps_per_epoch):
                # the epoch's running sums over all ranks; a resume gives them to rank 0 only
                tot = _all_reduce([loss_sum, n_seen, n_skipped, correct], env)
                sums = {
                    "loss_sum": tot[0],
                    "n_seen": int(tot[1]),
                    "n_skipped": int(tot[2]),
                    "correct": tot[3],
                }
                save_checkpoint(step, {**sums, "lr_start": lr_start, "seconds": time.perf_counter() - t0})
                if stop:
                    if env.world > 1:
                        dist.barrier()
                    raise checkpoints.interrupt(epoch, step)
        train_time = time.perf_counter() - t0
        loss_sum, f_seen, f_skipped, correct = _all_reduce([loss_sum, n_seen, n_skipped, correct], env)
        n_seen, n_skipped = int(f_seen), int(f_skipped)
        val = evaluate_loader(model_ddp, val_loader, head_names, env, n_conf)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": lr_start,
            "train_loss": loss_sum / n_seen if n_seen else math.nan,
            "train_acc": correct / n_seen if n_seen else math.nan,
            "val_loss": val["loss"],
        }
        if model in CLASS_NAMES:
            row["val_acc"] = val["acc"][0]
        else:
            for h, acc in zip(head_names, val["acc"], strict=True):
                row[f"val_acc_{h}"] = acc
        row.update(
            skipped_train=int(n_skipped),
            skipped_val=val["skipped"],
            images_per_s=n_seen / train_time if train_time > 0 else math.nan,
            seconds=train_time,
        )
        skipped_total += int(n_skipped)
        state["history"].append(row)
        state["epoch"] = epoch + 1
        improved = early_stopping_update(state, val["loss"] if val["n"] else None, epoch + 1, cfg.patience)
        if improved:
            state["best_confusion"] = val["confusion"]
            state["best_acc"] = val["acc"]
            if env.main:
                with atomic_path(best_path) as tmp:
                    torch.save(net.state_dict(), tmp)
        elif state["stopped"]:
            log.info("early stop after epoch %d (best %d)", epoch + 1, state["best_epoch"])
        log.info(
            "epoch %s", json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()})
        )
        save_checkpoint(0)
        if env.main:
            write_metrics(state["history"], out / "metrics.csv")
        if env.world > 1:
            dist.barrier()
        if checkpoints.stop_requested() and state["epoch"] < cfg.epochs and not state["stopped"]:
            raise checkpoints.interrupt(epoch + 1, 0)

    # ---- final outputs
    majority = majority_baseline(targets[train_idx], targets[val_idx], head_names)
    if env.main:
        if best_path.exists():
            net.load_state_dict(torch.load(best_path, map_location=env.device, weights_only=True))
        meta = {
            "model": model,
            "backbone": cfg.backbone,
            "image_size": cfg.image_size,
            "heads": heads,
            "classes": {h: list(CLASS_NAMES[h]) for h in heads if h in CLASS_NAMES},
            "mean": list(mean),
            "std": list(std),
            "hierarchy": hierarchy,
            "best_epoch": state["best_epoch"],
            "best_val_loss": state["best_val_loss"],
            "epochs_run": state["epoch"],
            "seed": seed,
            "trainer": dataclasses.asdict(cfg),
        }
        save_model(net, meta, out / "model.pt")
        write_metrics(state["history"], out / "metrics.csv")
        plot_curves(state["history"], out / "curve.png", model)
        plot_confusion(state, heads, out / "confusion.png", model, majority)
    if env.world > 1:
        dist.barrier()
    best_acc = state["best_acc"] if state["best_acc"] is not None else [math.nan] * len(head_names)
    summary = {
        "model": model,
        "backbone": cfg.backbone,
        "image_size": cfg.image_size,
        "n_train": len(train_ds),
        "n_val": len(val_ds),
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
        "best_val_loss": state["best_val_loss"],
        "heads": head_names,
        "val_acc": dict(zip(head_names, map(float, best_acc), strict=True)),
        "val_majority_acc": majority,
        "stopped_early": state["stopped"],
        "skipped_train_images": skipped_total,
        "interrupted": False,
    }
    if env.main:
        write_json(out / "summary.json", _json_safe(summary))
    log.info("done: %s", summary)
    return summary


def _json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by ``None`` (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def majority_baseline(
    train_targets: np.ndarray, val_targets: np.ndarray, heads: Sequence[str]
) -> dict[str, float]:
    """Validation accuracy of always answering the training split's most common class, per head.

    The chance level a trained predictor must beat (NaN for a head without validation rows).

    Args:
        train_targets: ``(n,)`` or ``(n, k)`` training labels (``k`` heads, in ``heads`` order).
        val_targets: Validation labels, same layout.
        heads: Head names.

    """
    tr = train_targets[:, None] if train_targets.ndim == 1 else train_targets
    va = val_targets[:, None] if val_targets.ndim == 1 else val_targets
    out: dict[str, float] = {}
    for k, head in enumerate(heads):
        if len(va) == 0 or len(tr) == 0:
            out[head] = math.nan
            continue
        top = int(np.bincount(tr[:, k]).argmax())
        out[head] = float(np.mean(va[:, k] == top))
    return out


def early_stopping_update(state: dict[str, Any], val_loss: float | None, epoch: int, patience: int) -> bool:
    """Update ``best_val_loss``, ``best_epoch``, ``bad_epochs`` and ``stopped`` of ``state`` after ``epoch``.

    An epoch improves if its validation loss is strictly lower than the best so far (or there is no
    validation set: ``val_loss`` None, then the last epoch is the best). After ``patience`` epochs in a row
    without improvement ``stopped`` becomes True.

    Returns:
        Whether this epoch is the new best.

    """
    if val_loss is None or val_loss < state["best_val_loss"]:
        state.update(best_val_loss=math.inf if val_loss is None else val_loss, best_epoch=epoch, bad_epochs=0)
        return True
    state["bad_epochs"] += 1
    if state["bad_epochs"] >= patience:
        state["stopped"] = True
    return False


def load_or_build_index(shards_dir: str | Path, cache: str | Path | None, write: bool = True) -> ShardIndex:
    """Load the cached :class:`ShardIndex` at ``cache`` if it matches the shards, else build (and save) it."""
    if cache is not None and Path(cache).exists():
        try:
            return ShardIndex.load(cache, shards_dir)
        except (ValueError, OSError) as exc:
            log.warning("rebuilding the shard index: %s", exc)
    log.info("indexing shards in %s", shards_dir)
    index = ShardIndex.build(shards_dir, show_progress=True)
    if cache is not None and write:
        with atomic_path(cache) as tmp:
            index.save(tmp)
    return index


def write_metrics(history: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Write the per-epoch metrics table as CSV (atomically)."""
    with atomic_path(path) as tmp:
        pd.DataFrame(list(history)).to_csv(tmp, index=False, float_format="%.6g")


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | Path, model: str) -> None:
    """Training/validation loss and validation accuracy per epoch (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.DataFrame(list(history))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    if len(df):
        ax1.plot(df["epoch"], df["train_loss"], "o-", label="train")
        ax1.plot(df["epoch"], df["val_loss"], "o-", label="validation")
        for col in [c for c in df.columns if c.startswith("val_acc")]:
            ax2.plot(
                df["epoch"],
                df[col],
                "o-",
                label="validation " + (col.removeprefix("val_acc").strip("_") or "top-1"),
            )
        ax2.plot(df["epoch"], df["train_acc"], "o--", color="grey", label="train (augmented)")
    ax1.set(xlabel="epoch", ylabel="loss", title=f"{model}: loss")
    ax2.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1), title=f"{model}: top-1 accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.legend()
    ax2.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def plot_confusion(
    state: Mapping[str, Any],
    heads: Mapping[str, int],
    path: str | Path,
    model: str,
    majority: Mapping[str, float] | None = None,
) -> None:
    """Plot the best epoch's validation confusion matrix (``ls``, ``lc``) or head accuracies (``geoest``).

    With ``majority`` (head -> majority-baseline accuracy) the baseline is shown beside the accuracy.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = dict(majority or {})
    conf = state.get("best_confusion")
    epoch = state.get("best_epoch")
    if model in CLASS_NAMES and conf is not None and np.asarray(conf).size:
        conf = np.asarray(conf)
        names = CLASS_NAMES[model]
        share = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2.5, 0.9 * len(names) + 2.3))
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{share[i, j]:.2f}\n({conf[i, j]})", ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")  # fmt: skip
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        acc = np.trace(conf) / max(conf.sum(), 1)
        title = f"{model}: validation (epoch {epoch})\naccuracy {100 * acc:.1f}%"
        if model in base:
            title += f", majority baseline {100 * base[model]:.1f}%"
        ax.set(xlabel="predicted", ylabel="true", title=title)
    else:
        accs = state.get("best_acc") or [math.nan] * len(heads)
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        xs = np.arange(len(heads))
        ax.bar(xs - 0.2, accs, width=0.4, color="tab:blue", label="model")
        maj = [base.get(h, math.nan) for h in heads]
        ax.bar(xs + 0.2, maj, width=0.4, color="lightgrey", label="majority baseline")
        for k, (h, a) in enumerate(zip(heads, accs, strict=True)):
            label = f"{a:.3f}\n{heads[h]} cells"
            ax.text(k - 0.2, (a if a == a else 0) + 0.02, label, ha="center", fontsize=7)
        ax.set_xticks(xs, list(heads))
        ax.legend(fontsize=7, loc="upper right")
        ax.set(ylim=(0, 1.15), ylabel="validation top-1 accuracy",
               title=f"{model}: per-partition accuracy (epoch {epoch})")  # fmt: skip
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------------------------------------
# model files


def save_model(net: MultiHeadNet, meta: Mapping[str, Any], path: str | Path) -> None:
    """Write final weights and metadata (``backbone``, ``heads``, ``image_size``...) for ``load_model``."""
    with atomic_path(path) as tmp:
        torch.save({"format": "geoens-model-1", "meta": dict(meta), "state_dict": net.state_dict()}, tmp)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[MultiHeadNet, dict[str, Any]]:
    """Load a ``model.pt`` written by :func:`train_model` (no pretrained weights needed).

    Returns:
        ``(network in eval mode, metadata)``; metadata keys: ``model``, ``backbone``, ``image_size``,
        ``heads`` (name -> classes), ``classes``, ``mean``, ``std``, ``hierarchy`` (geoest: ``(n_fine, 2)``
        middle/coarse parents), ``best_epoch``, ``best_val_loss``, ``trainer``.

    Raises:
        ValueError: If the file is not a geoens model.

    """
    blob = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(blob, dict) or blob.get("format") != "geoens-model-1":
        raise ValueError(f"{path} is not a geoens model file (format geoens-model-1)")
    meta = blob["meta"]
    net = build_model(meta["model"], meta["backbone"], pretrained=False, n_cells=list(meta["heads"].values()))
    net.load_state_dict(blob["state_dict"])
    net.to(device).eval()
    return net, meta


# --------------------------------------------------------------------------------------------------------
# prediction


def iter_predictions(
    model_path: str | Path,
    source: ImageSource,
    ids: Sequence[str],
    batch_size: int = 128,
    num_workers: int = 0,
    device: str = "auto",
    skipped: list[str] | None = None,
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Yield ``(ids, probabilities float64)`` per batch; missing/undecodable ids are appended to ``skipped``.

    ``geoest`` probabilities are the hierarchical fine-cell probabilities (:func:`hierarchical_combine`).
    """
    dev = resolve_device(device)
    net, meta = load_model(model_path, dev)
    tf = make_transforms(int(meta["image_size"]), False, meta["mean"], meta["std"])
    ds = ImageDataset(source, ids, None, tf)
    loader = DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_skip
    )
    heads = list(meta["heads"])
    ctx_factory, _ = _autocast(dev)
    with torch.no_grad():
        for batch in loader:
            if skipped is not None:
                skipped.extend(ds.ids[i] for i in batch.skipped)
            if len(batch) == 0:
                continue
            x = batch.images.to(dev)
            if ctx_factory is not None:
                with _autocast(dev)[0]:
                    features = net.backbone(x)
                # the heads leave autocast: float32 logits, so bf16 cannot tie or reorder near-equal cells
                features = features.float()
                logits = {h: net.heads[h](features) for h in heads}
            else:
                logits = net(x)
            probs = {h: torch.softmax(logits[h].double(), dim=1).cpu().numpy() for h in heads}
            if meta["model"] == "geoest":
                p = hierarchical_combine(probs["coarse"], probs["middle"], probs["fine"], meta["hierarchy"])
            else:
                p = probs[heads[0]]
            yield [ds.ids[int(i)] for i in batch.indices], p


def prediction_dataset(
    dataset: str,
    labels: str | Path,
    images: str | Path,
    shard_index: str | Path | None = None,
) -> tuple[ImageSource, list[str]]:
    """Image source and ids of a prediction dataset.

    Args:
        dataset: ``val`` (the training set's validation split, read from the shards) or a test-set name.
        labels: ``val``: the training label folder; a test set: its label Parquet (every row is predicted).
        images: ``val``: the shards folder; a test set: its image folder.
        shard_index: Cached shard index for ``val`` (built if missing, not written).

    """
    if dataset == "val":
        table = read_label_parts(labels, ["image_id", "split"])
        ids = sorted(table.loc[table["split"] == "val", "image_id"].astype(str))
        index = load_or_build_index(images, shard_index, write=False)
        return ShardSource(images, index), ids
    table = read_label_parts(labels, ["image_id"])
    return FolderSource(images), table["image_id"].astype(str).tolist()


def _prediction_table(ids: Sequence[str], probs: np.ndarray, n_classes: int) -> pa.Table:
    p32 = probs.astype(np.float32).reshape(len(ids), n_classes)
    flat = pa.array(p32.reshape(-1), pa.float32())
    return pa.table(
        {
            "image_id": pa.array([str(i) for i in ids], pa.string()),
            "probs": pa.FixedSizeListArray.from_arrays(flat, n_classes),
            "top_class": pa.array(p32.argmax(axis=1).astype(np.int32), pa.int32()),
        }
    )


def prediction_schema(n_classes: int) -> pa.Schema:
    """Return the predictions schema: ``image_id``, ``probs`` fixed_size_list<float32>, ``top_class``."""
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("probs", pa.list_(pa.float32(), n_classes)),
            ("top_class", pa.int32()),
        ]
    )


def predict(
    model_path: str | Path,
    source: ImageSource,
    ids: Sequence[str],
    batch_size: int = 128,
    num_workers: int = 0,
    device: str = "auto",
) -> pd.DataFrame:
    """Predict every image of ``ids``: DataFrame ``image_id, probs (float32 arrays), top_class``.

    Images that are missing or do not decode get no row; their ids are in ``df.attrs["skipped"]``.
    """
    skipped: list[str] = []
    chunks = list(iter_predictions(model_path, source, ids, batch_size, num_workers, device, skipped))
    out_ids = [i for c in chunks for i in c[0]]
    n = chunks[0][1].shape[1] if chunks else 0
    probs = (
        np.concatenate([c[1] for c in chunks]).astype(np.float32) if chunks else np.zeros((0, n), np.float32)
    )
    top = probs.argmax(axis=1).astype(np.int32) if len(probs) else np.zeros(0, np.int32)
    df = pd.DataFrame({"image_id": out_ids, "probs": list(probs), "top_class": top})
    df.attrs["skipped"] = skipped
    return df


def predict_to_parquet(
    model_path: str | Path,
    source: ImageSource,
    ids: Sequence[str],
    out_path: str | Path,
    skipped_json: str | Path | None = None,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str = "auto",
    show_progress: bool = False,
) -> dict[str, Any]:
    """Stream predictions to a Parquet file (schema :func:`prediction_schema`), atomically.

    Also writes ``skipped_json``: ``{"n_requested", "n_predicted", "n_skipped", "skipped_ids"}``.

    Returns:
        The same summary as the JSON.

    """
    _, meta = load_model(model_path, "cpu")
    n_classes = int(list(meta["heads"].values())[-1])
    skipped: list[str] = []
    n_pred = 0
    it: Any = iter_predictions(model_path, source, ids, batch_size, num_workers, device, skipped)
    if show_progress:
        from tqdm import tqdm

        it = tqdm(it, total=math.ceil(len(ids) / batch_size), desc="predict", mininterval=10)
    with atomic_path(out_path) as tmp, pq.ParquetWriter(str(tmp), prediction_schema(n_classes)) as writer:
        for chunk_ids, probs in it:
            writer.write_table(
                _prediction_table(chunk_ids, probs, n_classes).cast(prediction_schema(n_classes))
            )
            n_pred += len(chunk_ids)
    summary = {
        "n_requested": len(ids),
        "n_predicted": n_pred,
        "n_skipped": len(skipped),
        "skipped_ids": skipped,
    }
    if skipped:
        log.warning(
            "%d of %d images could not be read or decoded (no prediction row)", len(skipped), len(ids)
        )
    if skipped_json is not None:
        write_json(skipped_json, summary)
    return summary


# --------------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m geoens.train``."""
    p = argparse.ArgumentParser(prog="python -m geoens.train", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--labels", required=True, help="label Parquet file or folder of part-*.parquet")
    p.add_argument("--shards", required=True, help="folder of msgpack shards")
    p.add_argument("--out", required=True, help="output folder results/models/<model>")
    p.add_argument("--trainer", required=True, help="JSON of the train.models.<model> config")
    p.add_argument("--partitions", default=None, help="partitions folder (geoest)")
    p.add_argument("--shard-index", default=None, help="cached shard index Parquet")
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--image-cache", default=None, help="decoded-image cache folder (geoens.imagecache)")
    p.add_argument("--logfile", default=None, help="log file (not --log: torchrun would take it)")
    p.add_argument(
        "--checkpoint-every-steps",
        type=int,
        default=CHECKPOINT_EVERY_STEPS,
        help="optimizer steps between mid-epoch checkpoints (0: epoch ends only)",
    )
    p.add_argument(
        "--progress-every-s",
        type=float,
        default=PROGRESS_EVERY_S,
        help="seconds between progress lines (images/s, ETA) inside an epoch",
    )
    p.add_argument(
        "--gpus", type=int, default=0, help="> 1: relaunch under torchrun with this many processes"
    )
    return p


def torchrun_command(argv: Sequence[str], gpus: int) -> list[str]:
    """Return the command that runs ``python -m geoens.train argv`` as ``gpus`` DDP processes on this node."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    return [*cmd, "-m", "geoens.train", *argv]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    With ``--gpus N`` (N > 1) outside torchrun, re-launches itself as ``torchrun --nproc_per_node=N``; under
    torchrun (``WORLD_SIZE`` set) every process trains its share and rank 0 writes.

    Returns:
        0 when training finished; :data:`~geoens.constants.EXIT_RESUMABLE` (75) when SIGTERM/SIGUSR1 made it
        save a checkpoint and stop (rerun to resume); under the launcher, torchrun's exit status.

    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from geoens.logs import setup_logging

    rank = int(os.environ.get("RANK", "0"))
    logger = setup_logging(args.logfile if rank == 0 else None)
    if args.gpus > 1 and "WORLD_SIZE" not in os.environ:
        cmd = torchrun_command(argv, args.gpus)
        logger.info("launching %s", " ".join(cmd))
        return run_child_ignoring_stop_signals(cmd)
    status = 0
    with StopSignals() as signals:
        try:
            train_model(
                args.model,
                args.labels,
                args.shards,
                args.out,
                args.trainer,
                partitions_dir=args.partitions,
                shard_index=args.shard_index,
                device=args.device,
                num_workers=args.num_workers,
                seed=args.seed,
                threads=args.threads,
                image_cache=args.image_cache,
                checkpoint_every_steps=args.checkpoint_every_steps,
                progress_every_s=args.progress_every_s,
                signals=signals,
            )
        except TrainingInterrupted:
            status = EXIT_RESUMABLE
    if dist.is_initialized():
        dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())
