"""The prediction Parquet files of every model (``results/predictions/<dataset>/<model>.parquet``).

One schema (:func:`prediction_schema`), one streaming writer (:func:`write_predictions`) and one
``<model>.skipped.json`` summary (:func:`write_skipped`), used by :mod:`geoens.models.predictors` and
:mod:`geoens.models.geoclip.stage`; and the ``points`` form of a gallery model's predictions (its top-k
gallery points with their weights, :func:`write_points`), which GeoCLIP also writes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from geoens.core.io import atomic_path, write_json

T = TypeVar("T")


def prediction_schema(n_classes: int) -> pa.Schema:
    """Return the predictions schema: ``image_id``, ``probs`` fixed_size_list<float32>, ``top_class``."""
    return pa.schema(
        [("image_id", pa.string()), ("probs", pa.list_(pa.float32(), n_classes)), ("top_class", pa.int32())]
    )


def prediction_table(image_ids: Sequence[str], probs: npt.ArrayLike) -> pa.Table:
    """One batch of predictions as an Arrow table of :func:`prediction_schema` (probabilities as float32).

    Raises:
        ValueError: If the ids and the probability rows differ in number.

    """
    p32 = np.ascontiguousarray(probs, dtype=np.float32)
    if p32.ndim != 2 or p32.shape[0] != len(image_ids):
        raise ValueError(f"{len(image_ids)} image ids but probs of shape {p32.shape}")
    top = p32.argmax(axis=1).astype(np.int32) if len(p32) else np.zeros(0, np.int32)
    return pa.table(
        {
            "image_id": pa.array([str(i) for i in image_ids], type=pa.string()),
            "probs": pa.FixedSizeListArray.from_arrays(pa.array(p32.reshape(-1), pa.float32()), p32.shape[1]),
            "top_class": pa.array(top, pa.int32()),
        },
        schema=prediction_schema(p32.shape[1]),
    )


def write_predictions(
    path: str | Path, chunks: Iterable[tuple[Sequence[str], npt.ArrayLike]], n_classes: int
) -> int:
    """Stream prediction batches to a Parquet file of :func:`prediction_schema`, atomically.

    Returns:
        The number of rows written.

    """
    n = 0
    schema = prediction_schema(n_classes)
    with atomic_path(path) as tmp, pq.ParquetWriter(str(tmp), schema) as writer:
        for ids, probs in chunks:
            writer.write_table(prediction_table(ids, probs))
            n += len(ids)
    return n


def points_schema() -> pa.Schema:
    """Return the points schema: ``image_id``, equal-length ``lat``, ``lon``, ``weight`` lists (degrees)."""
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("lat", pa.list_(pa.float64())),
            ("lon", pa.list_(pa.float64())),
            ("weight", pa.list_(pa.float64())),
        ]
    )


def points_table(
    image_ids: Sequence[str], lat: npt.ArrayLike, lon: npt.ArrayLike, weight: npt.ArrayLike
) -> pa.Table:
    """One batch of ``(N, k)`` points as a table of :func:`points_schema`, each row's weights summing to 1.

    Raises:
        ValueError: If the arrays differ in shape from ``(len(image_ids), k)``, or a row's weights are
            negative, not finite or sum to zero.

    """
    arrays = [np.asarray(a, dtype=np.float64) for a in (lat, lon, weight)]
    shape = (len(image_ids), arrays[0].shape[1] if arrays[0].ndim == 2 else -1)
    if any(a.shape != shape for a in arrays):
        raise ValueError(f"{len(image_ids)} image ids but points of shapes {[a.shape for a in arrays]}")
    w = arrays[2]
    total = w.sum(axis=1)
    bad = ~np.isfinite(w).all(axis=1) | (w < 0).any(axis=1) | ~(total > 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"image {image_ids[i]!r}: weights must be finite, >= 0 and not all 0: {w[i]}")
    cols = [*arrays[:2], w / total[:, None]]
    return pa.table(
        {"image_id": pa.array([str(i) for i in image_ids], type=pa.string())}
        | {name: pa.array(list(a)) for name, a in zip(("lat", "lon", "weight"), cols, strict=True)},
        schema=points_schema(),
    )


def write_points(
    path: str | Path, chunks: Iterable[tuple[Sequence[str], npt.ArrayLike, npt.ArrayLike, npt.ArrayLike]]
) -> int:
    """Stream ``(ids, lat, lon, weight)`` batches to a Parquet file of :func:`points_schema`, atomically.

    Returns:
        The number of rows written.

    """
    n = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(str(tmp), points_schema()) as writer:
        for ids, lat, lon, weight in chunks:
            writer.write_table(points_table(ids, lat, lon, weight))
            n += len(ids)
    return n


def with_progress(chunks: Iterable[T], n_images: int, batch_size: int, desc: str) -> Iterable[T]:
    """``chunks`` with a tqdm bar counting batches (a line at most every 10 s in a log file)."""
    return tqdm(chunks, total=math.ceil(n_images / batch_size), desc=desc, mininterval=10)


def write_skipped(
    n_requested: int, n_predicted: int, skipped: Sequence[str], path: str | Path | None
) -> dict[str, Any]:
    """``{"n_requested", "n_predicted", "n_skipped", "skipped_ids"}``, also written to ``path`` (if given).

    The ``skipped_ids`` are the images that could not be read or decoded (they have no prediction row).
    """
    summary: dict[str, Any] = {
        "n_requested": n_requested,
        "n_predicted": n_predicted,
        "n_skipped": len(skipped),
        "skipped_ids": list(skipped),
    }
    if path is not None:
        write_json(path, summary)
    return summary
