"""Step "data" of :func:`~geoens.models.predictors.train_model`: label rows, heads, split, loaders."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, DistributedSampler

from geoens.data.labeltable import read_label_table
from geoens.geo.partitions import read_hierarchy, read_partition_csv
from geoens.models.checkpoint import SkipSampler
from geoens.models.datasets import (
    Batch,
    ImageDataset,
    ShardIndex,
    ShardSource,
    collate_skip,
    make_transforms,
)
from geoens.models.imagecache import CachedLoader, ImageCache, load_image_cache
from geoens.models.nets import GEOEST_HEADS, backbone_norm
from geoens.models.training.config import (
    CELL_COLUMNS,
    CLASS_NAMES,
    LABEL_COLUMN,
    TrainerConfig,
    TrainingError,
    select_rows,
)
from geoens.models.training.runtime import DistEnv, load_or_build_index

log = logging.getLogger("geoens.train")


@dataclasses.dataclass
class TrainData:
    """What the data step hands to the rest of a run.

    Attributes:
        targets: Targets of every selected label row (``(n,)``, or ``(n, 3)`` for ``geoest``).
        heads: Head name -> number of classes, in output order.
        hierarchy: ``geoest``: ``(n_fine, 2)`` middle/coarse parents; else ``None``.
        train_idx: Rows (into ``targets``) of the training split.
        val_idx: Rows of the validation split.
        train_ids: Image ids of the training rows.
        val_ids: Image ids of the validation rows.
        train_ds: Training dataset (augmented).
        val_ds: Validation dataset.
        train_loader: Training batches (JPEG loader or decoded-image cache).
        val_loader: Validation batches.
        train_sampler: The training loader's sampler (epoch and mid-epoch skip).
        mean: Input normalisation mean of the backbone.
        std: Input normalisation std of the backbone.

    """

    targets: np.ndarray
    heads: dict[str, int]
    hierarchy: np.ndarray | None
    train_idx: np.ndarray
    val_idx: np.ndarray
    train_ids: list[str]
    val_ids: list[str]
    train_ds: ImageDataset
    val_ds: ImageDataset
    train_loader: Iterable[Batch]
    val_loader: Iterable[Batch]
    train_sampler: SkipSampler
    mean: tuple[float, ...]
    std: tuple[float, ...]


def partition_sizes(partitions_dir: str | Path) -> tuple[int, int, int]:
    """Count the classes of the coarse, middle and fine partition CSVs (read by ``read_partition_csv``).

    Raises:
        FileNotFoundError: If a CSV is missing.
        PartitionError: If a CSV is malformed (its labels are not ``0..n-1``...).

    """
    sizes = [len(read_partition_csv(Path(partitions_dir) / f"{level}.csv")) for level in GEOEST_HEADS]
    return sizes[0], sizes[1], sizes[2]


def hierarchy_parents(path: str | Path, n_fine: int | None = None) -> np.ndarray:
    """``(n_fine, 2)`` int64 array of the (middle, coarse) parents of each fine cell from hierarchy.parquet.

    Raises:
        ValueError: If the ``fine`` column is not ``0..n-1`` in order or does not match ``n_fine``.

    """
    df = read_hierarchy(path)
    fine = df["fine"].to_numpy()
    if not np.array_equal(fine, np.arange(len(df))):
        raise ValueError(f"{path}: rows must be ordered by fine = 0..{len(df) - 1}")
    if n_fine is not None and len(df) != n_fine:
        raise ValueError(f"{path}: {len(df)} fine cells but the fine partition has {n_fine}")
    return df[["middle", "coarse"]].to_numpy().astype(np.int64)


def label_heads(
    model: str, targets: np.ndarray, partitions_dir: str | Path | None
) -> tuple[dict[str, int], np.ndarray | None]:
    """Heads (name -> classes) of ``model`` and, for ``geoest``, the cell hierarchy; targets are checked.

    Raises:
        ValueError: If ``geoest`` has no ``partitions_dir`` or a target is beyond its head's classes.

    """
    hierarchy = None
    if model == "geoest":
        if partitions_dir is None:
            raise ValueError("geoest needs partitions_dir (coarse/middle/fine CSVs and hierarchy.parquet)")
        n_cells = partition_sizes(partitions_dir)
        hierarchy = hierarchy_parents(Path(partitions_dir) / "hierarchy.parquet", n_cells[2])
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
    return heads, hierarchy


def split_rows(
    rows: pd.DataFrame, cfg: TrainerConfig, seed: int, model: str, labels: str | Path
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """``(train rows, val rows, train ids, val ids)``; ``max_train_images`` keeps a seeded subset.

    Raises:
        TrainingError: If no training row is left.

    """
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
    return train_idx, val_idx, train_ids, val_ids


def check_shards(index: ShardIndex, train_ids: list[str], model: str, shards_dir: str | Path) -> None:
    """Warn about training ids missing from the shards.

    Raises:
        TrainingError: If none is there.

    """
    found = sum(i in index for i in train_ids)
    if found == 0:
        raise TrainingError(
            f"none of the {len(train_ids)} training ids of '{model}' is in the shards {shards_dir}"
        )
    if found < len(train_ids):
        log.warning(
            "%d of %d training ids are not in the shards (skipped)", len(train_ids) - found, len(train_ids)
        )


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    num_workers: int,
    env: DistEnv,
    shuffle: bool,
    seed: int,
    drop_last: bool = False,
) -> tuple[DataLoader[Any], SkipSampler]:
    """A JPEG loader over ``dataset`` (this rank's share) and its sampler."""
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


def cached_loaders(
    cache: ImageCache,
    train_ds: ImageDataset,
    val_ds: ImageDataset,
    train_sampler: SkipSampler,
    val_sampler: SkipSampler,
    cfg: TrainerConfig,
    seed: int,
    drop_last: bool,
) -> tuple[CachedLoader, CachedLoader]:
    """Loaders over the decoded-image cache with the JPEG loaders' samplers (same order, same batches).

    The samplers are the :class:`~geoens.models.checkpoint.SkipSampler` s of :func:`make_loader`, so a
    mid-epoch resume skips the batches already done on this path too; their ``epoch`` seeds the augmentation.
    """
    mean, std = backbone_norm(cfg.backbone)
    size, bs = cfg.image_size, cfg.batch_size
    train = CachedLoader(cache, train_ds.ids, train_ds.targets.numpy(), train_sampler, bs, size, mean, std,
                         augment=cfg.augment, seed=seed, drop_last=drop_last)  # fmt: skip
    val = CachedLoader(cache, val_ds.ids, val_ds.targets.numpy(), val_sampler, bs, size, mean, std)
    return train, val


def load_data(
    model: str,
    labels: str | Path,
    shards_dir: str | Path,
    cfg: TrainerConfig,
    env: DistEnv,
    *,
    partitions_dir: str | Path | None,
    shard_index: str | Path | None,
    num_workers: int,
    seed: int,
    image_cache: str | Path | None,
) -> TrainData:
    """The data step: rows, heads, split, datasets and loaders of one run (arguments as ``train_model``'s).

    Raises:
        TrainingError: If no training row is left or no label id is in the shards.

    """
    table = read_label_table(labels)
    rows, targets = select_rows(table, model)
    heads, hierarchy = label_heads(model, targets, partitions_dir)
    train_idx, val_idx, train_ids, val_ids = split_rows(rows, cfg, seed, model, labels)
    index = load_or_build_index(shards_dir, shard_index, write=env.main)
    check_shards(index, train_ids, model, shards_dir)
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
    train_loader: Iterable[Batch]
    val_loader: Iterable[Batch]
    train_loader, train_sampler = make_loader(
        train_ds, cfg.batch_size, num_workers, env, True, seed, drop_last=drop_last
    )
    val_loader, val_sampler = make_loader(val_ds, cfg.batch_size, num_workers, env, False, seed)
    cache = load_image_cache(image_cache) if image_cache is not None else None
    if cache is not None:
        train_loader, val_loader = cached_loaders(
            cache, train_ds, val_ds, train_sampler, val_sampler, cfg, seed, drop_last
        )
    log.info(
        "model %s: %d train / %d val images, heads %s, backbone %s @ %d px, device %s, world %d, %s",
        model, len(train_ds), len(val_ds), heads, cfg.backbone, cfg.image_size, env.device, env.world,
        "decoded-image cache" if cache is not None else f"JPEG shards, {num_workers} loader workers",
    )  # fmt: skip
    return TrainData(
        targets, heads, hierarchy, train_idx, val_idx, train_ids, val_ids, train_ds, val_ds,
        train_loader, val_loader, train_sampler, tuple(mean), tuple(std),
    )  # fmt: skip
