"""External predictions files (any geolocator's output): the one home of their format (docs/byo.md).

Four kinds (:data:`PREDICTION_KINDS`), one row per image, column ``image_id`` (str) plus:

- ``cells``: ``probs`` list<float> over the rows of a partition (class order = the partition's labels);
- ``points``: ``lat``, ``lon``, ``weight`` list<float> of equal length (a gallery softmax or its top-k);
- ``samples``: ``lat``, ``lon`` list<float> (each sample weighs ``1/N``);
- ``point``: ``lat``, ``lon`` float; Parquet or CSV (GeoEstimation's results layout, whose summary block
  after the first blank line is read by :func:`read_geoestimation_summary`, never as rows).

:class:`PredictionSpec` declares the kind, the units (degrees or radians) and the order of a 2-value
``coords`` column: they are never guessed. Readers return degrees; values impossible in the declared units,
NaN, bad probability vectors, duplicate ids, empty or ragged lists are errors naming the file and the row.
The spec, the containers and :func:`align_to_truth` live in :mod:`geoens.data.predspec` and are re-exported
here, so that ``from geoens.data.predictions import ...`` gives the whole contract.
"""

from __future__ import annotations

import csv as csv_module
import io
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geoens.core.constants import PROB_SUM_ERROR_TOL, PROB_SUM_WARN_TOL
from geoens.core.io import atomic_path
from geoens.core.types import F32Array, FloatArray, IntArray
from geoens.data.predspec import (
    PREDICTION_KINDS,
    CellPredictions,
    PointPredictions,
    Predictions,
    PredictionsError,
    PredictionSpec,
    TruthMatch,
    WeightedPoints,
    align_to_truth,
    prediction_spec_from_config,
    rows_named,
)

#: The contract in one import: the spec and containers of :mod:`geoens.data.predspec` are re-exported.
__all__ = [
    "COLUMN_ALIASES",
    "PREDICTION_KINDS",
    "CellPredictions",
    "PointPredictions",
    "PredictionSpec",
    "Predictions",
    "PredictionsError",
    "TruthMatch",
    "WeightedPoints",
    "align_to_truth",
    "normalise_rows",
    "read_cell_predictions",
    "read_geoestimation_summary",
    "read_point_predictions",
    "read_predictions",
    "read_weighted_points",
    "prediction_spec_from_config",
    "write_cell_predictions",
    "write_point_predictions",
    "write_weighted_points",
]

log = logging.getLogger(__name__)

#: File columns recognised without a mapping (GeoEstimation's results CSVs, ``LAT_pred`` style files).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "image_id": ("image_id", "img_id", "IMG_ID"),
    "lat": ("lat", "predicted_lat", "LAT_pred", "lat_pred"),
    "lon": ("lon", "predicted_long", "predicted_lon", "LON_pred", "lon_pred"),
}


# --------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------
def _check_ids(path: Path, ids: list[str], line_offset: int | None) -> None:
    s = pd.Series(ids)
    if s.eq("").any() or s.isna().any():
        rows = np.flatnonzero((s.eq("") | s.isna()).to_numpy())
        raise PredictionsError(f"{path}: empty image_id at {rows_named(ids, rows, line_offset)}")
    dup = s.duplicated(keep="first").to_numpy()
    if dup.any():
        rows = np.flatnonzero(dup)
        raise PredictionsError(
            f"{path}: {int(dup.sum())} duplicate image_id(s): {rows_named(ids, rows, line_offset)}"
        )


def _units_hint(units: str, what: str, could_be_longitudes: bool) -> str:
    """What most likely made coordinates impossible in the declared ``units``.

    ``could_be_longitudes``: every impossible latitude would be a possible longitude (a swap is plausible).
    """
    swap = (
        "latitude and longitude swapped? check 'order'" if what == "latitude" and could_be_longitudes else ""
    )
    if units == "radians":
        return " (degrees declared as radians? check 'units'" + (f"; or {swap})" if swap else ")")
    return f" ({swap})" if swap else ""


def _to_degrees(
    path: Path,
    spec: PredictionSpec,
    ids: list[str],
    lat: FloatArray,
    lon: FloatArray,
    row_of: IntArray,
    line_offset: int | None,
) -> tuple[FloatArray, FloatArray]:
    """Check finite and possible values in the declared units; return degrees. ``row_of``: row of each."""
    bad = ~np.isfinite(lat) | ~np.isfinite(lon)
    if bad.any():
        rows = np.unique(row_of[bad])
        raise PredictionsError(f"{path}: NaN or infinite coordinate at {rows_named(ids, rows, line_offset)}")
    lat_max, lon_max = (90.0, 180.0) if spec.units == "degrees" else (np.pi / 2, np.pi)
    for what, v, lim in (("latitude", lat, lat_max), ("longitude", lon, lon_max)):
        out = np.abs(v) > lim * (1.0 + 1e-12)
        if out.any():
            rows = np.unique(row_of[out])
            first = float(v[np.flatnonzero(out)[0]])
            hint = _units_hint(spec.units, what, bool(np.all(np.abs(v[out]) <= lon_max)))
            raise PredictionsError(
                f"{path}: {int(out.sum())} {what}(s) impossible in {spec.units} (|{what}| > {lim:.6g}), "
                f"first {first:.6g}, at {rows_named(ids, rows, line_offset)}{hint}"
            )
    if spec.units == "radians":
        lat, lon = np.rad2deg(lat), np.rad2deg(lon)
    return np.clip(lat, -90.0, 90.0), np.clip(lon, -180.0, 180.0)


def normalise_rows(
    path: Path, ids: list[str], mass: FloatArray, what: str, error_tol: float | None = PROB_SUM_ERROR_TOL
) -> FloatArray:
    """Per-row scale factors ``1 / mass`` after checking the sums.

    A row whose sum is off 1 by more than :data:`PROB_SUM_WARN_TOL` is normalised with a warning naming the
    worst row and by how much; beyond ``error_tol`` (``None``: no limit) it is an error.

    Raises:
        PredictionsError: A row summing to 0, or (with ``error_tol``) off 1 by more than ``error_tol``.
    """
    if mass.size == 0:
        return mass
    zero = ~(mass > 0)
    if zero.any():
        raise PredictionsError(f"{path}: {what} sum to 0 at {rows_named(ids, np.flatnonzero(zero), None)}")
    off = np.abs(mass - 1.0)
    worst = int(np.argmax(off))
    if error_tol is not None and off[worst] > error_tol:
        rows = np.flatnonzero(off > error_tol)
        raise PredictionsError(
            f"{path}: {rows.size} row(s) of {what} do not sum to 1 (tolerance {error_tol:g}); worst "
            f"{mass[worst]:.6g} at {rows_named(ids, [worst], None)}; first: {rows_named(ids, rows, None)}"
        )
    if off[worst] > PROB_SUM_WARN_TOL:
        log.warning(
            "%s: %d row(s) of %s do not sum to 1; normalised (worst off by %.3g: sum %.6g at %s)",
            path,
            int((off > PROB_SUM_WARN_TOL).sum()),
            what,
            off[worst],
            mass[worst],
            rows_named(ids, [worst], None),
        )
    out: FloatArray = 1.0 / mass
    return out


# --------------------------------------------------------------------------------------------------
# Column access
# --------------------------------------------------------------------------------------------------
def _column_name(
    path: Path, spec: PredictionSpec, names: Sequence[str], key: str, required: bool
) -> str | None:
    if key in spec.columns:
        col = spec.columns[key]
        if col not in names:
            raise PredictionsError(
                f"{path}: column {col!r} (mapped from {key!r}) not found; has {list(names)}"
            )
        return col
    found = [a for a in COLUMN_ALIASES.get(key, (key,)) if a in names]
    if len(found) > 1:
        raise PredictionsError(
            f"{path}: columns {found} could each be {key!r}; map one with columns {key}=..."
        )
    if not found:
        if required:
            raise PredictionsError(
                f"{path}: no column for {key!r} (map one with columns {key}=...); has {list(names)}"
            )
        return None
    return found[0]


def _ids_of(path: Path, table: pa.Table, spec: PredictionSpec, line_offset: int | None) -> list[str]:
    col = _column_name(path, spec, table.column_names, "image_id", True)
    ids = ["" if x is None else str(x) for x in table.column(col).to_pylist()]
    if not ids:
        raise PredictionsError(f"{path}: no rows")
    _check_ids(path, ids, line_offset)
    return ids


def _flat_list(path: Path, table: pa.Table, col: str, ids: list[str]) -> tuple[IntArray, FloatArray]:
    """``(offsets, values)`` of a list<float> column; nulls are errors."""
    arr = table.column(col).combine_chunks()
    if not (
        pa.types.is_list(arr.type)
        or pa.types.is_large_list(arr.type)
        or pa.types.is_fixed_size_list(arr.type)
    ):
        raise PredictionsError(f"{path}: column {col!r} must be a list of floats, got {arr.type}")
    if arr.null_count:
        rows = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))
        raise PredictionsError(f"{path}: column {col!r} is null at {rows_named(ids, rows, None)}")
    lengths = np.asarray(arr.value_lengths().to_numpy(zero_copy_only=False), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = arr.flatten().to_numpy(zero_copy_only=False)
    return offsets, np.asarray(values, dtype=np.float64)


def _scalar(path: Path, table: pa.Table, col: str) -> FloatArray:
    arr = table.column(col)
    try:
        return np.asarray(arr.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise PredictionsError(f"{path}: column {col!r} is not numeric ({arr.type}): {exc}") from exc


def _pair_column(
    path: Path, spec: PredictionSpec, table: pa.Table, col: str, ids: list[str]
) -> tuple[Any, Any]:
    """Split a ``coords`` column of 2-value pairs (per point or per list element) by ``spec.order``."""
    arr = table.column(col).combine_chunks()
    inner = (
        arr.flatten()
        if pa.types.is_list(arr.type.value_type) or pa.types.is_fixed_size_list(arr.type.value_type)
        else None
    )
    pairs = arr if inner is None else inner
    pair_len = np.asarray(pairs.value_lengths().to_numpy(zero_copy_only=False))
    if np.any(pair_len != 2):
        raise PredictionsError(
            f"{path}: column {col!r} must hold [a, b] pairs; one has {int(pair_len[pair_len != 2][0])} values"
        )
    flat = np.asarray(pairs.flatten().to_numpy(zero_copy_only=False), dtype=np.float64).reshape(-1, 2)
    a, b = flat[:, 0], flat[:, 1]
    lat, lon = (a, b) if spec.order == "latlon" else (b, a)
    if inner is None:
        return lat, lon
    lengths = np.asarray(arr.value_lengths().to_numpy(zero_copy_only=False), dtype=np.int64)
    return (lengths, lat), lon


# --------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------
def _read_point_csv(path: Path) -> tuple[pa.Table, int]:
    """A CSV's rows up to the first blank line (GeoEstimation's summary block follows it)."""
    text = path.read_text(encoding="utf-8")
    rows_text = text.replace("\r\n", "\n").split("\n\n", 1)[0]
    frame = pd.read_csv(io.StringIO(rows_text), dtype=str, keep_default_na=False)
    table = pa.table({c: pa.array(frame[c].tolist(), pa.string()) for c in frame.columns})
    return table, 2


def read_geoestimation_summary(path: str | Path) -> dict[str, float]:
    """The summary block of a GeoEstimation results CSV (after the first blank line): header -> value.

    Raises:
        PredictionsError: Naming the file when it has no summary block or the block is not one header and one
            numeric row.
    """
    p = Path(path)
    parts = p.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n\n", 1)
    lines = [ln for ln in (parts[1] if len(parts) == 2 else "").split("\n") if ln.strip()]
    if len(lines) != 2:
        raise PredictionsError(f"{p}: no summary block (a header and one row after the first blank line)")
    head, vals = next(csv_module.reader([lines[0]])), next(csv_module.reader([lines[1]]))
    if len(head) != len(vals):
        raise PredictionsError(f"{p}: summary header has {len(head)} fields, its row {len(vals)}")
    try:
        return {h: float(v) for h, v in zip(head, vals, strict=True)}
    except ValueError as exc:
        raise PredictionsError(f"{p}: summary row is not numeric: {exc}") from exc


def _open(path: str | Path, spec: PredictionSpec) -> tuple[Path, pa.Table, int | None]:
    p = Path(path)
    if not p.is_file():
        raise PredictionsError(f"{p}: predictions file not found (model {spec.name!r})")
    if p.suffix.lower() == ".csv":
        if spec.kind != "point":
            raise PredictionsError(
                f"{p}: CSV is read for kind 'point' only; kind {spec.kind!r} needs Parquet"
            )
        table, offset = _read_point_csv(p)
        return p, table, offset
    try:
        return p, pq.read_table(p), None
    except (pa.ArrowInvalid, OSError) as exc:
        raise PredictionsError(f"{p}: not a readable Parquet file: {exc}") from exc


def _use_coords(path: Path, spec: PredictionSpec, table: pa.Table) -> str | None:
    """The ``coords`` pair column, when mapped, or present with no ``lat``/``lon`` columns."""
    if "coords" in spec.columns:
        return _column_name(path, spec, table.column_names, "coords", True)
    if {"lat", "lon"} & set(spec.columns):
        return None
    names = table.column_names
    if _column_name(path, spec, names, "lat", False) and _column_name(path, spec, names, "lon", False):
        return None
    return _column_name(path, spec, names, "coords", False)


def read_point_predictions(path: str | Path, spec: PredictionSpec) -> PointPredictions:
    """Read a ``point`` file (Parquet or CSV): one point per image, in degrees.

    Raises:
        PredictionsError: Naming the file and rows on a missing column, NaN, a value impossible in the
            declared units, an empty or duplicate id.
    """
    p, table, line_offset = _open(path, spec)
    ids = _ids_of(p, table, spec, line_offset)
    coords = _use_coords(p, spec, table)
    if coords is not None:
        lat, lon = _pair_column(p, spec, table, coords, ids)
    else:
        lat_col = _column_name(p, spec, table.column_names, "lat", True)
        lon_col = _column_name(p, spec, table.column_names, "lon", True)
        assert lat_col is not None and lon_col is not None
        lat, lon = _scalar(p, table, lat_col), _scalar(p, table, lon_col)
    row_of = np.arange(len(ids), dtype=np.int64)
    lat, lon = _to_degrees(p, spec, ids, lat, lon, row_of, line_offset)
    return PointPredictions(ids, lat, lon)


def read_weighted_points(path: str | Path, spec: PredictionSpec) -> WeightedPoints:
    """Read a ``points`` or ``samples`` Parquet into CSR form, degrees, weights summing to 1 per image.

    ``samples`` weigh ``1/N``; ``points`` weights are normalised per image (a top-k holds less than 1: its
    share is spread over the k points, logged).

    Raises:
        PredictionsError: Naming the file and rows on empty or unequal lists, NaN, negative weights, values
            impossible in the declared units, duplicate ids.
    """
    p, table, _ = _open(path, spec)
    ids = _ids_of(p, table, spec, None)
    coords = _use_coords(p, spec, table)
    if coords is not None:
        (lengths, lat), lon = _pair_column(p, spec, table, coords, ids)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    else:
        lat_col = _column_name(p, spec, table.column_names, "lat", True)
        lon_col = _column_name(p, spec, table.column_names, "lon", True)
        assert lat_col is not None and lon_col is not None
        offsets, lat = _flat_list(p, table, lat_col, ids)
        off_lon, lon = _flat_list(p, table, lon_col, ids)
        _same_lengths(p, ids, offsets, off_lon, "lat", "lon")
    n = np.diff(offsets)
    if np.any(n == 0):
        raise PredictionsError(f"{p}: empty point list at {rows_named(ids, np.flatnonzero(n == 0), None)}")
    row_of = np.repeat(np.arange(len(ids), dtype=np.int64), n)
    lat, lon = _to_degrees(p, spec, ids, lat, lon, row_of, None)
    weight = _weights(p, spec, table, ids, offsets, row_of)
    return WeightedPoints(ids, offsets, lat, lon, weight)


def _same_lengths(path: Path, ids: list[str], a: IntArray, b: IntArray, na: str, nb: str) -> None:
    bad = np.diff(a) != np.diff(b)
    if bad.any():
        raise PredictionsError(
            f"{path}: lists {na!r} and {nb!r} differ in length at "
            f"{rows_named(ids, np.flatnonzero(bad), None)}"
        )


def _weights(
    path: Path, spec: PredictionSpec, table: pa.Table, ids: list[str], offsets: IntArray, row_of: IntArray
) -> FloatArray:
    n = np.diff(offsets)
    if spec.kind == "samples":
        w: FloatArray = 1.0 / n[row_of].astype(np.float64)
        return w
    col = _column_name(path, spec, table.column_names, "weight", True)
    assert col is not None
    off_w, w = _flat_list(path, table, col, ids)
    _same_lengths(path, ids, offsets, off_w, "lat", col)
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        raise PredictionsError(
            f"{path}: negative or NaN weight at {rows_named(ids, np.unique(row_of[bad]), None)}"
        )
    mass = np.bincount(row_of, weights=w, minlength=len(ids)).astype(np.float64)
    scale = normalise_rows(path, ids, mass, "weights", error_tol=None)
    out: FloatArray = w * scale[row_of]
    return out


def read_cell_predictions(path: str | Path, spec: PredictionSpec, n_cells: int) -> tuple[list[str], F32Array]:
    """Read a ``cells`` Parquet: ``(ids, probs)``, ``probs`` images x ``n_cells`` float32, rows summing to 1.

    Rows off 1 by more than :data:`PROB_SUM_WARN_TOL` are normalised with a warning saying by how much the
    worst was off; beyond :data:`PROB_SUM_ERROR_TOL` they are an error.

    Raises:
        PredictionsError: Naming the file and rows on a vector of the wrong length, negative or NaN values,
            sums off 1 beyond the tolerance, duplicate ids.
    """
    p, table, _ = _open(path, spec)
    ids = _ids_of(p, table, spec, None)
    col = _column_name(p, spec, table.column_names, "probs", True)
    assert col is not None
    offsets, flat = _flat_list(p, table, col, ids)
    n = np.diff(offsets)
    if np.any(n != n_cells):
        rows = np.flatnonzero(n != n_cells)
        raise PredictionsError(
            f"{p}: probability vector of length {int(n[rows[0]])}, the partition has {n_cells} cells, at "
            f"{rows_named(ids, rows, None)}"
        )
    probs = flat.reshape(len(ids), n_cells)
    bad = ~np.isfinite(probs) | (probs < 0)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise PredictionsError(f"{p}: negative or NaN probability at {rows_named(ids, rows, None)}")
    scale = normalise_rows(p, ids, probs.sum(axis=1), "probs")
    return ids, (probs * scale[:, None]).astype(np.float32)


def read_predictions(path: str | Path, spec: PredictionSpec, n_cells: int | None = None) -> Predictions:
    """Read any kind (dispatch on ``spec.kind``); ``cells`` needs ``n_cells``.

    Raises:
        PredictionsError: As the reader of that kind, or ``cells`` without ``n_cells``.
    """
    if spec.kind == "point":
        return read_point_predictions(path, spec)
    if spec.kind in ("points", "samples"):
        return read_weighted_points(path, spec)
    if n_cells is None:
        raise PredictionsError(f"{path}: reading kind 'cells' needs the partition's number of cells")
    ids, probs = read_cell_predictions(path, spec, n_cells)
    return CellPredictions(ids, probs)


# --------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------
def _write(path: str | Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_point_predictions(path: str | Path, pred: PointPredictions) -> None:
    """Write a ``point`` Parquet (degrees)."""
    _write(path, pa.table({"image_id": pa.array(pred.ids, pa.string()), "lat": pred.lat, "lon": pred.lon}))


def write_weighted_points(path: str | Path, pred: WeightedPoints, samples: bool = False) -> None:
    """Write a ``points`` Parquet (or ``samples``: no ``weight`` column), degrees."""
    off = pa.array(pred.offsets.astype(np.int32))
    cols: dict[str, Any] = {
        "image_id": pa.array(pred.ids, pa.string()),
        "lat": pa.ListArray.from_arrays(off, pa.array(pred.lat, pa.float64())),
        "lon": pa.ListArray.from_arrays(off, pa.array(pred.lon, pa.float64())),
    }
    if not samples:
        cols["weight"] = pa.ListArray.from_arrays(off, pa.array(pred.weight, pa.float64()))
    _write(path, pa.table(cols))


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


def write_cell_predictions(path: str | Path, ids: Sequence[str], probs: npt.ArrayLike) -> None:
    """Write a ``cells`` Parquet: ``image_id`` and ``probs`` (list<float32>)."""
    p = np.ascontiguousarray(probs, dtype=np.float32)
    n, c = p.shape
    off = pa.array(np.arange(n + 1, dtype=np.int32) * c)
    _write(
        path,
        pa.table(
            {
                "image_id": pa.array(list(ids), pa.string()),
                "probs": pa.ListArray.from_arrays(off, pa.array(p.ravel())),
            }
        ),
    )
