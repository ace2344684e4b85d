"""Device, process placement, seeding, autocast, early stopping and metrics of every training loop.

Shared by :mod:`geoens.models.predictors` and :mod:`geoens.models.geoclip.training`; checkpoints and stop
signals are :mod:`geoens.models.checkpoint`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from geoens.core.io import atomic_path
from geoens.models.datasets import ShardIndex

log = logging.getLogger("geoens.train")


class DeviceUnavailableError(RuntimeError):
    """The config asks for a device torch cannot see (``cuda`` without a GPU)."""


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
        DeviceUnavailableError: If ``cuda`` is requested and none is available.

    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"config asks for device '{device}' but torch sees no GPU")
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


def all_reduce(values: Sequence[float], env: DistEnv) -> list[float]:
    """Sum ``values`` over the ranks (float64); the values themselves in a single process."""
    if env.world == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return t.tolist()


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch of a run (the global RNGs are reseeded with it at the epoch's start)."""
    return zlib.crc32(f"geoens-train:{seed}:{epoch}".encode())


def autocast(device: torch.device) -> tuple[Any, torch.dtype | None]:
    """``(autocast context, dtype)`` on a GPU (bf16 if supported, else fp16); ``(None, None)`` elsewhere."""
    if device.type != "cuda":
        return None, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype), dtype


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


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by ``None`` (strict JSON)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_metrics(history: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Write the per-epoch metrics table as CSV (atomically)."""
    with atomic_path(path) as tmp:
        pd.DataFrame(list(history)).to_csv(tmp, index=False, float_format="%.6g")


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
