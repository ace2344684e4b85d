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

The steps of training (data, model and optimisation, resume, epochs) and the runtime they share with the
GeoCLIP tower live in :mod:`geoens.models.training`; this module composes them, owns ``model.pt`` and the CLI.

Command line (used by ``rules/train.smk``; under ``torchrun`` for several GPUs)::

    python -m geoens.models.predictors --model ls --labels results/labels/train --shards <dir> --out
    results/models/ls \
        --trainer '{"backbone": "resnet18", ...}'
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from geoens.core.constants import CHECKPOINT_EVERY_STEPS, EXIT_RESUMABLE, PROGRESS_EVERY_S
from geoens.core.io import atomic_path, write_json
from geoens.core.logs import setup_logging
from geoens.data.labeltable import read_label_table
from geoens.models.checkpoint import (
    StopSignals,
    TrainingInterrupted,
    inputs_stamp,
    run_child_ignoring_stop_signals,
)
from geoens.models.datasets import (
    FolderSource,
    ImageDataset,
    ImageSource,
    ShardSource,
    collate_skip,
    make_transforms,
)
from geoens.models.nets import MultiHeadNet, build_model, hierarchical_combine
from geoens.models.training import runtime
from geoens.models.training.config import CLASS_NAMES, MODELS, TrainerConfig
from geoens.models.training.inputs import load_data
from geoens.models.training.loop import Run, build_optimisation, resume, run_epochs
from geoens.models.training.plots import plot_confusion, plot_curves
from geoens.models.training.predictions import with_progress, write_predictions, write_skipped
from geoens.models.training.runtime import (
    json_safe,
    load_or_build_index,
    resolve_device,
    setup_distributed,
    write_metrics,
)

log = logging.getLogger(__name__)


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
        shard_index: Cached :class:`~geoens.models.datasets.ShardIndex` Parquet (built and saved there if
            missing).
        device: ``auto``, ``cpu`` or ``cuda``.
        num_workers: DataLoader worker processes.
        seed: Seed of initialisation, data order and augmentation.
        threads: ``torch.set_num_threads`` (the Snakemake job's threads).
        stop_after_epochs: Stop (as if killed) once this many epochs are done, without writing the final
            outputs; for tests of resuming.
        checkpoint_every_steps: Optimizer steps between mid-epoch checkpoints (0: only at epoch ends).
        progress_every_s: Seconds between in-epoch progress lines (images/s, ETA) in the log.
        signals: Active :class:`~geoens.models.checkpoint.StopSignals` (the command line installs them): after
            SIGTERM/SIGUSR1 the loop checkpoints at the next step boundary and raises
            :class:`~geoens.models.checkpoint.TrainingInterrupted`.
        image_cache: Folder written by :func:`geoens.models.imagecache.build_image_cache`: when it holds the
            images, they are read from there and augmented in batches in this process (no loader workers);
            when it says they were not cached (large or mixed sizes), or with ``None``, the JPEGs are read.

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
    data = load_data(
        model, labels, shards_dir, cfg, env, partitions_dir=partitions_dir, shard_index=shard_index,
        num_workers=num_workers, seed=seed, image_cache=image_cache,
    )  # fmt: skip
    opt = build_optimisation(model, cfg, data.heads, env, data.train_loader, seed)
    stamp = inputs_stamp(labels, shards_dir, shard_index, image_cache, partitions_dir)
    res = resume(
        model, cfg, seed, env, out, data, opt, checkpoint_every_steps=checkpoint_every_steps,
        progress_every_s=progress_every_s, signals=signals, stamp=stamp,
    )  # fmt: skip
    run = Run(model, cfg, env, out, seed, data, opt, res)
    if not run_epochs(run, stop_after_epochs):
        return {"epochs": res.state["epoch"], "interrupted": True}
    return write_outputs(run)


def write_outputs(run: Run) -> dict[str, Any]:
    """The outputs step: ``model.pt`` (best weights), ``metrics.csv``, plots and ``summary.json`` (rank 0).

    Returns:
        The summary (also ``summary.json``).

    """
    model, cfg, env, out, state, data = run.model, run.cfg, run.env, run.out, run.res.state, run.data
    net, heads, head_names = run.opt.net, data.heads, run.head_names
    majority = majority_baseline(data.targets[data.train_idx], data.targets[data.val_idx], head_names)
    if env.main:
        if run.best_path.exists():
            net.load_state_dict(torch.load(run.best_path, map_location=env.device, weights_only=True))
        meta = {
            "model": model,
            "backbone": cfg.backbone,
            "image_size": cfg.image_size,
            "heads": heads,
            "classes": {h: list(CLASS_NAMES[h]) for h in heads if h in CLASS_NAMES},
            "mean": list(data.mean),
            "std": list(data.std),
            "hierarchy": data.hierarchy,
            "best_epoch": state["best_epoch"],
            "best_val_loss": state["best_val_loss"],
            "epochs_run": state["epoch"],
            "seed": run.seed,
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
        "n_train": len(data.train_ds),
        "n_val": len(data.val_ds),
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
        "best_val_loss": state["best_val_loss"],
        "heads": head_names,
        "val_acc": dict(zip(head_names, map(float, best_acc), strict=True)),
        "val_majority_acc": majority,
        "stopped_early": state["stopped"],
        "skipped_train_images": sum(int(r["skipped_train"]) for r in state["history"]),
        "interrupted": False,
    }
    if env.main:
        write_json(out / "summary.json", json_safe(summary))
    log.info("done: %s", summary)
    return summary


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
    ctx_factory, _ = runtime.autocast(dev)
    with torch.no_grad():
        for batch in loader:
            if skipped is not None:
                skipped.extend(ds.ids[i] for i in batch.skipped)
            if len(batch) == 0:
                continue
            x = batch.images.to(dev)
            if ctx_factory is not None:
                with runtime.autocast(dev)[0]:
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
        table = read_label_table(labels, ["image_id", "split"])
        ids = sorted(table.loc[table["split"] == "val", "image_id"].astype(str))
        index = load_or_build_index(images, shard_index, write=False)
        return ShardSource(images, index), ids
    table = read_label_table(labels, ["image_id"])
    return FolderSource(images), table["image_id"].astype(str).tolist()


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
    """Stream predictions to a Parquet file (:mod:`geoens.models.training.predictions`'s schema), atomically.

    Also writes ``skipped_json``: ``{"n_requested", "n_predicted", "n_skipped", "skipped_ids"}``.

    Returns:
        The same summary as the JSON.

    """
    _, meta = load_model(model_path, "cpu")
    n_classes = int(list(meta["heads"].values())[-1])
    skipped: list[str] = []
    chunks: Iterable[tuple[list[str], np.ndarray]] = iter_predictions(
        model_path, source, ids, batch_size, num_workers, device, skipped
    )
    if show_progress:
        chunks = with_progress(chunks, len(ids), batch_size, "predict")
    n_pred = write_predictions(out_path, chunks, n_classes)
    if skipped:
        log.warning(
            "%d of %d images could not be read or decoded (no prediction row)", len(skipped), len(ids)
        )
    return write_skipped(len(ids), n_pred, skipped, skipped_json)


# --------------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m geoens.models.predictors``."""
    p = argparse.ArgumentParser(
        prog="python -m geoens.models.predictors", description=__doc__.splitlines()[0]
    )
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
    p.add_argument(
        "--image-cache", default=None, help="decoded-image cache folder (geoens.models.imagecache)"
    )
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
    """The command running ``python -m geoens.models.predictors argv`` as ``gpus`` DDP processes here."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    return [*cmd, "-m", "geoens.models.predictors", *argv]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    With ``--gpus N`` (N > 1) outside torchrun, re-launches itself as ``torchrun --nproc_per_node=N``; under
    torchrun (``WORLD_SIZE`` set) every process trains its share and rank 0 writes.

    Returns:
        0 when training finished; :data:`~geoens.core.constants.EXIT_RESUMABLE` (75) when SIGTERM/SIGUSR1 made
        it save a checkpoint and stop (rerun to resume); under the launcher, torchrun's exit status.

    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
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
