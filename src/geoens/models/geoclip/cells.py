"""Fine S2 cell embeddings, cached once per partition, and the cell probabilities of image embeddings."""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F  # noqa: N812 (torch convention)
from torch import Tensor

from geoens.core.io import atomic_path
from geoens.core.types import F32Array
from geoens.geo.partitions import PartitionError, read_partition_csv
from geoens.models.geoclip.location import (
    GeoClipError,
    LocationEncoder,
    embed_locations,
    file_sha256,
    load_location_encoder,
    weights_dir,
)

log = logging.getLogger("geoens.geoclip")

#: Format version of the cell-embedding cache (bump when its layout or meaning changes).
CACHE_VERSION = "1"

# --------------------------------------------------------------------------------------------------
# Fine-cell embeddings, cached once per partition
# --------------------------------------------------------------------------------------------------


def read_cell_partition(path: str | Path) -> pd.DataFrame:
    """The cells of a partition CSV as a frame in ``class_label`` order, mean locations checked.

    The file is read by :func:`geoens.geo.partitions.read_partition_csv` (the one reader of the GeoEstimation
    layout); the frame has its columns ``class_label, hex_id, imgs_per_cell, latitude_mean, longitude_mean``.

    Raises:
        GeoClipError: Naming the file and the problem (malformed CSV, no cells, mean location out of range).

    """
    path = Path(path)
    try:
        part = read_partition_csv(path)
    except (OSError, PartitionError) as exc:
        raise GeoClipError(f"{path}: cannot read partition CSV: {exc}") from exc
    if len(part) == 0:
        raise GeoClipError(f"{path}: partition CSV has no cells")
    checks = (("latitude_mean", part.lat_mean, 90.0), ("longitude_mean", part.lon_mean, 180.0))
    for col, values, lim in checks:
        bad = ~np.isfinite(values) | (np.abs(values) > lim)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise GeoClipError(f"{path}: bad {col} {values[k]} of class_label {k}")
    return part.to_frame()


def _cache_key(partition: pd.DataFrame, weights_path: Path) -> str:
    h = hashlib.sha256()
    h.update(CACHE_VERSION.encode())
    h.update(file_sha256(weights_path).encode())
    cells = partition[["class_label", "latitude_mean", "longitude_mean"]]
    h.update(np.ascontiguousarray(cells.to_numpy(np.float64)).tobytes())
    return h.hexdigest()


def write_cell_embeddings(path: str | Path, partition: pd.DataFrame, emb: F32Array, key: str) -> None:
    """Write fine-cell embeddings as Parquet (one row per cell, ``embedding`` fixed-size list<float32>)."""
    flat = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1), type=pa.float32())
    table = pa.table(
        {
            "class_label": pa.array(partition["class_label"].to_numpy(np.int32)),
            "hex_id": pa.array(partition["hex_id"].astype(str).to_list(), type=pa.string()),
            "latitude_mean": pa.array(partition["latitude_mean"].to_numpy(np.float64)),
            "longitude_mean": pa.array(partition["longitude_mean"].to_numpy(np.float64)),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, emb.shape[1]),
        }
    ).replace_schema_metadata({"geoens.cache_key": key, "geoens.cache_version": CACHE_VERSION})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_cell_embeddings(path: str | Path) -> tuple[F32Array, str]:
    """Read a cell-embedding Parquet file: ``((n_cells, 512) float32 in class_label order, cache key)``.

    Raises:
        GeoClipError: If the file lacks the expected columns or the classes are not ``0..n-1``.

    """
    path = Path(path)
    table = pq.read_table(path)
    if not {"class_label", "embedding"} <= set(table.column_names):
        raise GeoClipError(f"{path}: not a cell-embedding file (columns {table.column_names})")
    labels = table["class_label"].to_numpy()
    if not np.array_equal(labels, np.arange(len(labels))):
        raise GeoClipError(f"{path}: class_label must be 0..{len(labels) - 1} in order")
    emb = fixed_size_list_to_numpy(table["embedding"])
    meta = table.schema.metadata or {}
    key = meta.get(b"geoens.cache_key", b"").decode()
    return emb, key


def fixed_size_list_to_numpy(column: pa.ChunkedArray | pa.Array) -> F32Array:
    """Convert a fixed-size-list<float32> column to a 2-D float32 array."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = arr.type.list_size
    values = arr.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(-1, width)


def cell_embeddings(
    partition_csv: str | Path,
    cache_path: str | Path | None = "results/geoclip/cell_embeddings.parquet",
    encoder: LocationEncoder | None = None,
    weights_path: str | Path | None = None,
    batch_size: int = 4096,
) -> F32Array:
    """L2-normalised GeoCLIP embeddings of each fine cell's mean location, cached once per partition.

    The cache file stores a key (hash of the cells' labels and mean locations, of the encoder weights file
    and of the cache version); a cache whose key matches is loaded instead of re-embedding, any other is
    rebuilt. So one partition is embedded once and every image reuses the result.

    Args:
        partition_csv: GeoEstimation partition CSV (fine level).
        cache_path: Parquet cache (``None``: no cache).
        encoder: A loaded encoder; default: the shipped weights (loaded only when the cache misses).
        weights_path: Location-encoder weights file (default: the shipped one).
        batch_size: Points per forward pass.

    Returns:
        ``(n_cells, 512)`` float32, row ``i`` = class label ``i``.

    """
    partition = read_cell_partition(partition_csv)
    wpath = Path(weights_path) if weights_path is not None else weights_dir() / "location_encoder_weights.pth"
    key = _cache_key(partition, wpath)
    if cache_path is not None and Path(cache_path).exists():
        try:
            emb, cached_key = read_cell_embeddings(cache_path)
        except (GeoClipError, pa.ArrowException, OSError) as exc:
            log.warning("ignoring unreadable cell-embedding cache %s: %s", cache_path, exc)
        else:
            if cached_key == key and emb.shape[0] == len(partition):
                log.info("cell embeddings: loaded %d cells from cache %s", emb.shape[0], cache_path)
                return emb
            log.info("cell-embedding cache %s is stale (other partition or weights); rebuilding", cache_path)
    enc = encoder if encoder is not None else load_location_encoder(wpath)
    emb = embed_locations(
        partition["latitude_mean"].to_numpy(), partition["longitude_mean"].to_numpy(), enc, batch_size
    )
    log.info("cell embeddings: embedded %d cells of %s", emb.shape[0], partition_csv)
    if cache_path is not None:
        write_cell_embeddings(cache_path, partition, emb, key)
    return emb


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def score_cells(
    image_embeddings: npt.ArrayLike | Tensor,
    cell_embeddings: npt.ArrayLike | Tensor,
    logit_scale: float,
) -> F32Array:
    """Cell probabilities ``softmax(logit_scale * cos(image embedding, cell embedding))``.

    Args:
        image_embeddings: ``(N, D)`` image embeddings (any norm).
        cell_embeddings: ``(n_cells, D)`` location embeddings (any norm).
        logit_scale: The multiplicative scale (GeoCLIP's ``exp(stored logit scale)``, about 39.7).

    Returns:
        ``(N, n_cells)`` float32 probabilities; softmax in float64, so each row sums to 1.

    """
    img, cells = (
        x.detach().to("cpu", torch.float64)
        if isinstance(x, Tensor)
        else torch.from_numpy(np.array(x, np.float64))
        for x in (image_embeddings, cell_embeddings)
    )
    if img.ndim != 2 or cells.ndim != 2 or img.shape[1] != cells.shape[1]:
        raise GeoClipError(
            f"embedding shapes do not match: images {tuple(img.shape)}, cells {tuple(cells.shape)}"
        )
    if not math.isfinite(logit_scale) or logit_scale <= 0:
        raise GeoClipError(f"logit_scale must be a positive number, got {logit_scale}")
    logits = logit_scale * (F.normalize(img, dim=1) @ F.normalize(cells, dim=1).T)
    probs: F32Array = torch.softmax(logits, dim=1).numpy().astype(np.float32)
    return probs
