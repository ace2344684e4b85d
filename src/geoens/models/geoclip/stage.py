"""The GeoCLIP stages: datasets, tower training, prediction (called by ``workflow_scripts/geoclip_*.py``)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

from geoens.core.constants import CHECKPOINT_EVERY_STEPS, PROGRESS_EVERY_S
from geoens.core.io import atomic_path
from geoens.core.types import F32Array
from geoens.data.labeltable import read_label_table
from geoens.data.predictions import write_points
from geoens.models.checkpoint import Checkpointer, SkipSampler, StopSignals, inputs_stamp
from geoens.models.datasets import (
    Batch,
    ImageDataset,
    ImageSource,
    ShardSource,
    collate_skip,
    make_transforms,
)
from geoens.models.geoclip.location import GeoClipError, load_logit_scale
from geoens.models.geoclip.towers import (
    DEFAULT_CLIP_MODEL,
    ClipImageTower,
    clip_transform,
    iter_probs,
    iter_top_points,
)
from geoens.models.geoclip.training import (
    TOWER_CHECKPOINT_VERSION,
    GpsBatch,
    TowerTrainConfig,
    load_tower,
    save_tower,
    train_tower,
)
from geoens.models.imagecache import CachedLoader, ImageCache, SeededOrder, load_image_cache
from geoens.models.nets import backbone_norm
from geoens.models.predictors import prediction_dataset
from geoens.models.training.predictions import with_progress, write_predictions, write_skipped
from geoens.models.training.runtime import load_or_build_index, resolve_device

log = logging.getLogger("geoens.geoclip")

# --------------------------------------------------------------------------------------------------
# Datasets and whole-stage entry points (called by workflow_scripts/geoclip_*.py)
# --------------------------------------------------------------------------------------------------


def read_split(labels: str | Path, split: str | None) -> pd.DataFrame:
    """``image_id, lat, lon`` of the label rows of ``split`` (``None``: all rows), in file order.

    Raises:
        GeoClipError: If no row has that split.

    """
    cols = ["image_id", "lat", "lon"] + (["split"] if split is not None else [])
    df = read_label_table(labels, columns=cols)
    if split is not None:
        df = df[df["split"] == split]
    if df.empty:
        raise GeoClipError(f"{labels}: no label rows with split == {split!r}")
    return df[["image_id", "lat", "lon"]].reset_index(drop=True)


def _coords(labels: pd.DataFrame) -> Tensor:
    """``(n, 2)`` float32 ``(lat, lon)`` of the label rows."""
    return torch.from_numpy(np.array(labels[["lat", "lon"]].to_numpy(np.float32)))


def _with_gps(batches: Iterable[Batch], coords: Tensor, skipped: list[int] | None) -> Iterator[GpsBatch]:
    """``(images, gps)`` of each non-empty batch; indices of images that were skipped go to ``skipped``."""
    for batch in batches:
        if skipped is not None and batch.skipped:
            skipped.extend(batch.skipped)
        if len(batch) == 0:
            continue
        yield batch.images, coords[batch.indices]


def gps_batches(
    source: ImageSource,
    labels: pd.DataFrame,
    transform: Any,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    skipped: list[int] | None = None,
) -> Callable[..., Iterator[GpsBatch]]:
    """``(epoch, first batch = 0) -> iterator of (images, gps)`` over the labelled images of ``source``.

    Undecodable or missing images are dropped (their indices appended to ``skipped``). Shuffling and
    augmentation are seeded by ``(seed, epoch)``; starting at a later batch (a mid-epoch resume) gives the
    rest of the same epoch's batches without reading the images before it.
    """
    coords = _coords(labels)
    ds = ImageDataset(source, labels["image_id"].tolist(), np.arange(len(labels)), transform, seed=seed)

    def run(epoch: int, start: int = 0) -> Iterator[GpsBatch]:
        ds.set_epoch(epoch)
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = RandomSampler(ds, generator=gen) if shuffle else SequentialSampler(ds)
        loader = DataLoader(
            ds, batch_size=batch_size, sampler=SkipSampler(order, start * batch_size), generator=gen,
            num_workers=num_workers, collate_fn=collate_skip, drop_last=False,
        )  # fmt: skip
        yield from _with_gps(loader, coords, skipped)

    return run


def cached_gps_batches(
    cache: ImageCache,
    labels: pd.DataFrame,
    cfg: TowerTrainConfig,
    train: bool,
    skipped: list[int] | None = None,
) -> Callable[..., Iterator[GpsBatch]]:
    """:func:`gps_batches` over a decoded-image cache (:mod:`geoens.models.imagecache`), in this process.

    The order is a permutation seeded by ``(seed, epoch)`` (training) or the label order (validation); the
    augmentation of ``cfg.augment`` is drawn per ``(seed, epoch, index)`` on whole batches.
    """
    coords = _coords(labels)
    mean, std = backbone_norm(cfg.backbone)
    order = SeededOrder(len(labels), cfg.seed, shuffle=train)
    loader = CachedLoader(
        cache, labels["image_id"].astype(str).tolist(), np.arange(len(labels)), order, cfg.batch_size,
        cfg.image_size, mean, std, augment=cfg.augment if train else None, seed=cfg.seed,
    )  # fmt: skip

    def run(epoch: int, start: int = 0) -> Iterator[GpsBatch]:
        order.set_epoch(epoch)
        # start > 0: a mid-epoch resume skips the batches done
        yield from _with_gps(loader.iter_from(start), coords, skipped)

    return run


def id_batches(
    source: ImageSource, image_ids: Sequence[str], transform: Any, batch_size: int, num_workers: int = 0,
    skipped: list[str] | None = None,
) -> Iterator[tuple[Tensor, list[str]]]:  # fmt: skip
    """Batches ``(images, ids)`` for inference, in input order; undecodable images go to ``skipped``."""
    ids = [str(i) for i in image_ids]
    ds = ImageDataset(source, ids, None, transform)
    loader = DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_skip
    )
    for batch in loader:
        if skipped is not None:
            skipped.extend(ids[i] for i in batch.skipped)
        if len(batch):
            yield batch.images, [ids[int(i)] for i in batch.indices]


def tower_transforms(cfg: TowerTrainConfig, train: bool) -> Any:
    """The trained tower's image transform (training: augmented), normalised for its backbone."""
    mean, std = backbone_norm(cfg.backbone)
    return make_transforms(cfg.image_size, train=train, mean=mean, std=std, augment=cfg.augment)


def run_train_tower(
    shards_dir: str | Path,
    labels: str | Path,
    out_model: str | Path,
    cfg: TowerTrainConfig,
    metrics_csv: str | Path | None = None,
    shard_index: str | Path | None = None,
    *,
    checkpoint_every_steps: int = CHECKPOINT_EVERY_STEPS,
    progress_every_s: float = PROGRESS_EVERY_S,
    signals: StopSignals | None = None,
    image_cache: str | Path | None = None,
) -> list[dict[str, float]]:
    """Train the demo image tower on the ``train`` split, early-stop on ``val``, save ``out_model``.

    Resumable: ``checkpoint.pt`` beside ``out_model`` (every epoch, every ``checkpoint_every_steps`` steps
    and after SIGTERM/SIGUSR1 while ``signals`` is active; see :func:`train_tower`).

    Args:
        shards_dir: msgpack shards of the training images.
        labels: Label Parquet folder (``part-*.parquet`` with ``image_id, lat, lon, split``).
        out_model: Where to save the tower (:func:`save_tower`).
        cfg: Hyper-parameters.
        metrics_csv: Optional per-epoch metrics CSV.
        shard_index: Cached shard index (``results/models/shard_index.parquet``; built if missing).
        checkpoint_every_steps: Optimizer steps between mid-epoch checkpoints (0: epoch ends only).
        progress_every_s: Seconds between in-epoch progress lines in the log.
        signals: Active :class:`~geoens.models.checkpoint.StopSignals` (the workflow script installs them).
        image_cache: Decoded-image cache folder (:mod:`geoens.models.imagecache`); used when it holds the
            images.

    Returns:
        The per-epoch metrics.

    Raises:
        TrainingInterrupted: After a stop signal, once the checkpoint is saved.

    """
    source = ShardSource(shards_dir, load_or_build_index(shards_dir, shard_index, write=False))
    train = read_split(labels, "train")
    val = read_split(labels, "val")
    if cfg.max_train_images is not None and len(train) > cfg.max_train_images:
        keep = np.sort(
            np.random.default_rng(cfg.seed).choice(len(train), cfg.max_train_images, replace=False)
        )
        train = train.iloc[keep].reset_index(drop=True)
    log.info("geoclip tower: %d train / %d val images, backbone %s", len(train), len(val), cfg.backbone)
    skipped: list[int] = []
    cache = load_image_cache(image_cache) if image_cache is not None else None
    if cache is not None:
        log.info("geoclip tower: reading the decoded-image cache %s", image_cache)
        train_it = cached_gps_batches(cache, train, cfg, True, skipped)
        val_it = cached_gps_batches(cache, val, cfg, False)
    else:
        train_it = gps_batches(
            source, train, tower_transforms(cfg, True), cfg.batch_size, True, cfg.seed,
            cfg.num_workers, skipped,
        )  # fmt: skip
        val_it = gps_batches(
            source, val, tower_transforms(cfg, False), cfg.batch_size, False, cfg.seed,
            cfg.num_workers,
        )  # fmt: skip
    fingerprint = hashlib.sha256(
        json.dumps(
            [{k: v for k, v in asdict(cfg).items() if k not in ("device", "num_workers")},
             train["image_id"].tolist(), val["image_id"].tolist(),
             inputs_stamp(shards_dir, labels, shard_index, image_cache)],
            sort_keys=True,
        ).encode()
    ).hexdigest()  # fmt: skip
    checkpoint = Checkpointer(
        Path(out_model).with_name("checkpoint.pt"),
        version=TOWER_CHECKPOINT_VERSION,
        fingerprint=fingerprint,
        every_steps=checkpoint_every_steps,
        signals=signals,
        label="geoclip tower",
    )
    tower, history = train_tower(
        train_it,
        lambda: val_it(0),
        cfg,
        checkpoint=checkpoint,
        steps_per_epoch=math.ceil(len(train) / cfg.batch_size),
        progress_every_s=progress_every_s,
    )
    if skipped:
        log.warning("geoclip tower: skipped %d undecodable/missing training image reads", len(skipped))
    save_tower(out_model, tower, cfg, history)
    if metrics_csv is not None:
        with atomic_path(metrics_csv) as tmp:
            pd.DataFrame(history).to_csv(tmp, index=False)
    return history


def load_image_tower(
    image_tower: str, model_path: str | Path | None, clip_model: str = DEFAULT_CLIP_MODEL
) -> tuple[nn.Module, float, Any]:
    """``(tower, logit_scale, eval transform)`` for ``geoclip.image_tower`` ``trained`` or ``clip``.

    Raises:
        ClipNotCachedError: For ``clip`` when the CLIP model is not in the local cache.
        GeoClipError: For ``trained`` without a model file, or an unknown tower kind.

    """
    if image_tower == "clip":
        return ClipImageTower(clip_model), load_logit_scale(), clip_transform()
    if image_tower == "trained":
        if model_path is None:
            raise GeoClipError("geoclip.image_tower 'trained' needs the tower model file")
        tower, meta = load_tower(model_path)
        eval_cfg = TowerTrainConfig(backbone=meta["backbone"], image_size=int(meta["config"]["image_size"]))
        return tower, float(meta["logit_scale"]), tower_transforms(eval_cfg, False)
    raise GeoClipError(f"config key geoclip.image_tower: unknown value {image_tower!r} (trained or clip)")


def run_predict(
    source: ImageSource,
    image_ids: Sequence[str],
    cells: F32Array,
    tower: nn.Module,
    logit_scale: float,
    transform: Any,
    out: str | Path,
    skipped_json: str | Path | None = None,
    batch_size: int = 64,
    device: str = "auto",
    num_workers: int = 0,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Score every image on the fine cells and write ``results/predictions/<dataset>/geoclip.parquet``.

    Batches are streamed to the file (memory does not grow with the number of images). Images that are
    missing or do not decode are left out of the output (and counted), as in :mod:`geoens.models.predictors`.

    Args:
        source: Image source (:func:`prediction_inputs`).
        image_ids: Images to score.
        cells: ``(n_cells, 512)`` cell embeddings (:func:`geoens.models.geoclip.cells.cell_embeddings`).
        tower: Image tower (:func:`load_image_tower`).
        logit_scale: Multiplicative logit scale.
        transform: PIL -> tensor transform of the tower.
        out: Output Parquet.
        skipped_json: Optional JSON summary (same keys as the ``predict`` rule's ``.skipped.json``).
        batch_size: Images per forward pass.
        device: ``auto``, ``cpu`` or ``cuda``.
        num_workers: DataLoader workers.
        show_progress: tqdm progress bar.

    Returns:
        ``{"n_requested", "n_predicted", "n_skipped", "skipped_ids"}``.

    """
    dev = resolve_device(device)
    skipped: list[str] = []
    batches = id_batches(source, image_ids, transform, batch_size, num_workers, skipped)
    chunks: Iterable[tuple[list[str], F32Array]] = iter_probs(tower, batches, cells, logit_scale, dev)
    if show_progress:
        chunks = with_progress(chunks, len(image_ids), batch_size, "geoclip")
    n = write_predictions(out, chunks, cells.shape[0])
    if skipped:
        log.warning("geoclip predict: %d images missing or undecodable, e.g. %s", len(skipped), skipped[:3])
    return write_skipped(len(image_ids), n, skipped, skipped_json)


def run_predict_points(
    source: ImageSource,
    image_ids: Sequence[str],
    gallery: F32Array,
    gallery_embeddings: F32Array,
    tower: nn.Module,
    logit_scale: float,
    transform: Any,
    out: str | Path,
    top_k: int,
    batch_size: int = 64,
    device: str = "auto",
    num_workers: int = 0,
) -> dict[str, Any]:
    """Write GeoCLIP's gallery form: each image's ``top_k`` gallery points (``points`` Parquet).

    Same images, order and skipping as :func:`run_predict`; the rows hold ``lat``, ``lon`` and ``weight``
    lists (:func:`geoens.data.predictions.write_points`, weights summing to 1).

    Args:
        source: Image source (:func:`prediction_inputs`).
        image_ids: Images to score.
        gallery: ``(n, 2)`` ``(lat, lon)`` of the gallery (GeoCLIP's: ``location.load_gps_gallery``).
        gallery_embeddings: Their location embeddings (``location.embed_locations``).
        tower: Image tower (:func:`load_image_tower`).
        logit_scale: Multiplicative logit scale.
        transform: PIL -> tensor transform of the tower.
        out: Output Parquet.
        top_k: Points per image.
        batch_size: Images per forward pass.
        device: ``auto``, ``cpu`` or ``cuda``.
        num_workers: DataLoader workers.

    Returns:
        ``{"n_requested", "n_predicted", "n_skipped", "skipped_ids"}``.

    """
    skipped: list[str] = []
    batches = id_batches(source, image_ids, transform, batch_size, num_workers, skipped)
    chunks = iter_top_points(
        tower, batches, gallery_embeddings, gallery, logit_scale, top_k, resolve_device(device)
    )
    n = write_points(out, chunks)
    return write_skipped(len(image_ids), n, skipped, None)


def prediction_inputs(
    dataset: str, images: str | Path, labels: str | Path, shard_index: str | Path | None = None
) -> tuple[ImageSource, list[str]]:
    """Return the image source and the image ids of a prediction dataset (as the ``predict`` rule does).

    Args:
        dataset: A test-set name, or ``val`` (the training set's validation split).
        images: The test set's image folder, or for ``val`` the training shards folder.
        labels: The test set's label Parquet, or for ``val`` the training label folder (``part-*.parquet``).
        shard_index: For ``val``: the cached shard index (``results/models/shard_index.parquet``).

    Returns:
        ``(source, image ids)``: the same ids, in the same order, as
        :func:`geoens.models.predictors.prediction_dataset`.

    """
    return prediction_dataset(dataset, labels, images, shard_index)
