"""Evaluation of a test set: every method of every base model, per image (the ``evaluate`` rule).

Reads the predictions Parquets (:func:`read_probs`, streamed by :func:`iter_prob_batches`), the absorption
table and the test set's labels. Images with labels and every prediction are scored in batches
(:class:`ScoreBatch`, shared with :mod:`geoens.evaluation.calibrate`) and evaluated by the
:class:`geoens.evaluation.evaluator.Evaluator`; the result is the per-image table (:data:`PER_IMAGE_COLUMNS`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geoens.core.constants import (
    BASE_MODELS,
    EARTH_RADIUS_KM,
    GCD_RADIUS_KM,
    INDEX_IN_MEMORY_MAX_PIXELS,
    N_CLASSES,
)
from geoens.core.grid import haversine_km
from geoens.core.types import BoolArray, F32Array, FloatArray, IntArray
from geoens.data.labeltable import read_label_points
from geoens.evaluation.evaluator import Evaluator
from geoens.evaluation.methods import Method, all_methods, method_order, own_top1_name
from geoens.evaluation.rva import DEFAULT_CHUNK_ELEMENTS
from geoens.geo.atoms import read_atoms
from geoens.geo.lookup import open_pixel_lookup
from geoens.geo.partitions import read_partition_csv

log = logging.getLogger(__name__)

#: Columns of ``results/eval/<testset>/per_image.parquet``.
PER_IMAGE_COLUMNS: tuple[str, ...] = (
    "image_id",
    "base",
    "method",
    "area_km2",
    "zero_prob",
    "top1_lat",
    "top1_lon",
    "gcd_km",
    "ls_bucket",
)
#: Attribute predictor of each image, by family: ``(row of each image id, probabilities)``.
AttributeProbs = dict[str, tuple[pd.Series, F32Array]]


# --------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------
def read_probs(path: str | Path) -> tuple[list[str], F32Array]:
    """Read a predictions Parquet: ``(image_ids, probs as batch x classes float32)``.

    Raises:
        ValueError: Naming the file on missing columns, ragged or empty probability lists, or duplicate ids.

    """
    table = pq.read_table(path, columns=["image_id", "probs"])
    return _probs_from_table(table, str(path))


def _probs_from_table(table: pa.Table, source: str) -> tuple[list[str], F32Array]:
    for c in ("image_id", "probs"):
        if c not in table.column_names:
            raise ValueError(f"{source}: missing column {c!r}")
    ids = [str(x) for x in table.column("image_id").to_pylist()]
    col = table.column("probs").combine_chunks()
    if len(ids) == 0:
        return ids, np.zeros((0, 0), np.float32)
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        flat = col.flatten().to_numpy(zero_copy_only=False)
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = np.asarray(col.value_lengths().to_numpy(zero_copy_only=False))
        width = int(lengths[0])
        if np.any(lengths != width):
            i = int(np.flatnonzero(lengths != width)[0])
            raise ValueError(
                f"{source}: probs of row {i} (image {ids[i]}) has {lengths[i]} values, not {width}"
            )
        flat = col.flatten().to_numpy(zero_copy_only=False)
    else:
        raise ValueError(f"{source}: column 'probs' must be a list of floats, got {col.type}")
    probs = np.asarray(flat, dtype=np.float32).reshape(len(ids), width)
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise ValueError(f"{source}: duplicate image_id {dup!r}")
    return ids, probs


def read_prediction_ids(path: str | Path) -> list[str]:
    """The ``image_id`` column of a predictions Parquet, in row order (the probabilities are not read)."""
    return [str(i) for i in pq.read_table(path, columns=["image_id"]).column(0).to_pylist()]


def iter_prob_batches(path: str | Path, batch_size: int) -> Iterator[tuple[list[str], F32Array]]:
    """Stream a predictions Parquet in batches of ``batch_size`` rows (bounded memory for big test sets)."""
    pf = pq.ParquetFile(path)
    for rb in pf.iter_batches(batch_size=batch_size, columns=["image_id", "probs"]):
        yield _probs_from_table(pa.Table.from_batches([rb]), str(path))


def read_absorption(path: str | Path) -> tuple[IntArray, IntArray]:
    """Read ``s2_absorption.parquet`` as ``(cells, targets)``.

    Raises:
        ValueError: Naming the file if a column is missing.

    """
    df = pd.read_parquet(path)
    for c in ("cell", "target"):
        if c not in df.columns:
            raise ValueError(f"{path}: missing column {c!r}")
    return df["cell"].to_numpy(np.int64), df["target"].to_numpy(np.int64)


def prediction_bases(predictions: Mapping[str, object], what: str) -> list[str]:
    """The base models among ``predictions``, which must also hold the ``ls`` and ``lc`` predictors.

    Raises:
        ValueError: Starting with ``what`` if an attribute predictor or every base model is missing.

    """
    bases = [b for b in BASE_MODELS if b in predictions]
    missing = [m for m in ("ls", "lc") if m not in predictions]
    if missing or not bases:
        raise ValueError(
            f"{what}: predictions needed for ls, lc and a base model; missing {missing or bases}"
        )
    return bases


def read_attribute_probs(predictions: Mapping[str, str | Path]) -> AttributeProbs:
    """The ``ls`` and ``lc`` predictions: family -> ``(row of each image id, batch x classes probabilities)``.

    Raises:
        ValueError: Naming the file if a predictor has the wrong number of classes.

    """
    attr: AttributeProbs = {}
    for f in ("ls", "lc"):
        ids, p = read_probs(predictions[f])
        if p.shape[1] != N_CLASSES[f]:
            raise ValueError(f"{predictions[f]}: {p.shape[1]} classes, expected {N_CLASSES[f]}")
        attr[f] = (pd.Series(np.arange(len(ids)), index=pd.Index(ids)), p)
    return attr


# --------------------------------------------------------------------------------------------------
# Batches of images with labels and every prediction
# --------------------------------------------------------------------------------------------------
@dataclass
class ScoreBatch:
    """One batch of images of a base model: ids, class scores, truth atoms and the raw predictions."""

    base: str
    ids: list[str]
    scores: dict[str, FloatArray]
    gt_atom: IntArray
    lat: FloatArray
    lon: FloatArray
    base_probs: F32Array
    ls_probs: F32Array


def iter_score_batches(
    ev: Evaluator,
    labels: pd.DataFrame,
    attr: AttributeProbs,
    path: str | Path,
    base: str,
    batch_size: int,
    size_error: str,
    labels_source: str,
) -> Iterator[ScoreBatch]:
    """Batches of a base model's predictions restricted to the images with labels and all predictions.

    Args:
        ev: The evaluator (Alg. 1 scores, atom lookup).
        labels: ``image_id``-indexed ``lat, lon``.
        attr: The attribute predictions (:func:`read_attribute_probs`).
        path: The base model's predictions Parquet.
        base: The base model.
        batch_size: Images per streamed batch.
        size_error: End of the message when the base model's classes are not the fine cells, e.g.
            ``"the fine partition has 30"``.
        labels_source: Prefix of the message when a label point is invalid.

    Raises:
        ValueError: On a base model with the wrong number of classes or an invalid label point.

    """
    n_cells = ev.n_classes["s2"]
    for ids_all, p_base in iter_prob_batches(path, batch_size):
        if p_base.shape[1] != n_cells:
            raise ValueError(f"{path}: {p_base.shape[1]} classes but {size_error}")
        idx = pd.Index(ids_all)
        keep = np.asarray(
            idx.isin(labels.index) & idx.isin(attr["ls"][0].index) & idx.isin(attr["lc"][0].index),
            dtype=bool,
        )
        if not keep.all():
            log.warning(
                "%s: %d image(s) without labels or attribute predictions skipped", path, int((~keep).sum())
            )
        ids = [i for i, k in zip(ids_all, keep, strict=True) if k]
        if not ids:
            continue
        pb = p_base[keep]
        lat = labels.loc[ids, "lat"].to_numpy(np.float64)
        lon = labels.loc[ids, "lon"].to_numpy(np.float64)
        try:
            gt = ev.lookup.atom_at(lat, lon)
        except ValueError as exc:
            raise ValueError(f"{labels_source}: {exc}") from exc
        probs: dict[str, npt.ArrayLike] = {"s2": pb}
        for f in ("ls", "lc"):
            probs[f] = attr[f][1][attr[f][0].loc[ids].to_numpy()]
        sc = ev.scores(probs, ids)
        yield ScoreBatch(base, ids, sc, gt, lat, lon, pb, np.asarray(probs["ls"], np.float32))


# --------------------------------------------------------------------------------------------------
# The test set
# --------------------------------------------------------------------------------------------------
def evaluate_batch(
    ev: Evaluator,
    b: ScoreBatch,
    centres: tuple[FloatArray, FloatArray],
    threads: int = 1,
    methods: Sequence[Method] | None = None,
) -> list[pd.DataFrame]:
    """Per-image rows of one batch: every method of its base model, then the base model's own top-1.

    Args:
        ev: The evaluator.
        b: The batch.
        centres: ``(lat, lon)`` of each fine cell (the own top-1 is its argmax cell's mean location).
        threads: Methods evaluated at a time (:meth:`Evaluator.evaluate_many`).
        methods: The methods to run (default: every method of the base model).

    """
    ls_bucket = ev.atoms.labels["ls"][b.gt_atom].astype(np.int8)
    frames = []
    methods = all_methods([b.base]) if methods is None else list(methods)
    for m, r in zip(methods, ev.evaluate_many(methods, b.scores, b.gt_atom, threads=threads), strict=True):
        gcd = haversine_km(b.lat, b.lon, r.top1_lat, r.top1_lon, GCD_RADIUS_KM)
        frames.append(
            _frame(b.ids, b.base, m.name, r.area, r.zero_prob, r.top1_lat, r.top1_lon, gcd, ls_bucket)
        )
    arg = np.argmax(b.base_probs, axis=1)
    olat, olon = centres[0][arg], centres[1][arg]
    gcd = haversine_km(b.lat, b.lon, olat, olon, GCD_RADIUS_KM)
    n = len(b.ids)
    nan = np.full(n, np.nan)
    frames.append(
        _frame(b.ids, b.base, own_top1_name(b.base), nan, np.zeros(n, bool), olat, olon, gcd, ls_bucket)
    )
    return frames


def evaluate_testset(
    atoms_path: str | Path,
    atom_index_path: str | Path,
    absorption_path: str | Path,
    labels_path: str | Path,
    fine_csv_path: str | Path,
    predictions: Mapping[str, str | Path],
    earth_radius_km: float = EARTH_RADIUS_KM,
    batch_size: int = 2048,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    progress: Callable[[int], None] | None = None,
    index_max_pixels: int = INDEX_IN_MEMORY_MAX_PIXELS,
    threads: int = 1,
    bases: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Evaluate every method of every base model on one test set (the ``evaluate`` rule).

    Args:
        atoms_path: ``results/atoms/atoms.parquet``.
        atom_index_path: ``results/atoms/atom_index.tif``.
        absorption_path: ``results/masks/s2_absorption.parquet``.
        labels_path: ``results/labels/testsets/<testset>.parquet`` (``image_id, lat, lon``).
        fine_csv_path: The fine partition CSV (each class's mean location, for the base models' own top-1).
        predictions: Model (``ls``, ``lc`` and each base model) -> predictions Parquet.
        earth_radius_km: Sphere radius of the grid (whole-sphere area of zero-probability images).
        batch_size: Images per streamed batch of a base model's predictions.
        chunk_elements: Bound on one ``images x groups`` matrix.
        progress: Called with the number of images done after each batch.
        index_max_pixels: Largest grid whose atom index is held in memory; larger grids read the tiled
            index by windows (:func:`geoens.geo.lookup.open_pixel_lookup`).
        threads: Methods evaluated at a time (:meth:`Evaluator.evaluate_many`).
        bases: The base models to evaluate, keys of ``predictions`` (default: the built-in ones present);
            an external model with ``cells`` over the fine partition is evaluated by its name
            (rule ``evaluate_external``).

    Returns:
        The per-image table (:data:`PER_IMAGE_COLUMNS`), rows ordered by base, method, label order of images.

    Raises:
        ValueError: Naming the file on inconsistent inputs.

    """
    atoms = read_atoms(atoms_path)
    lookup = open_pixel_lookup(atom_index_path, atoms_path, atoms.n, earth_radius_km, index_max_pixels)
    absorption = read_absorption(absorption_path)
    lab = read_label_points(labels_path).set_index("image_id")
    fine = read_partition_csv(fine_csv_path)
    n_cells = fine.lat_mean.size
    if bases is None:
        bases = prediction_bases(predictions, "evaluate")
    attr = read_attribute_probs(predictions)
    ev = Evaluator(
        atoms, {"s2": n_cells, **N_CLASSES}, lookup, lookup.grid.total_area(), absorption, chunk_elements
    )
    frames = []
    for base in bases:
        batches = iter_score_batches(
            ev, lab, attr, predictions[base], base, batch_size, f"{fine_csv_path} has {n_cells} cells",
            str(labels_path),
        )  # fmt: skip
        for b in batches:
            frames += evaluate_batch(ev, b, (fine.lat_mean, fine.lon_mean), threads)
            if progress is not None:
                progress(len(b.ids))
    if not frames:
        raise ValueError(f"{labels_path}: no image has labels and all predictions")
    out = pd.concat(frames, ignore_index=True)
    order = {n: k for k, n in enumerate(method_order(bases))}
    out["_o"] = out["method"].map(order)
    return out.sort_values(["_o"], kind="stable").drop(columns="_o").reset_index(drop=True)


def _frame(
    ids: Sequence[str],
    base: str,
    method: str,
    area: FloatArray,
    zero: BoolArray,
    lat: FloatArray,
    lon: FloatArray,
    gcd: FloatArray,
    ls_bucket: npt.NDArray[np.int8],
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": list(ids),
            "base": base,
            "method": method,
            "area_km2": np.asarray(area, np.float64),
            "zero_prob": np.asarray(zero, bool),
            "top1_lat": np.asarray(lat, np.float64),
            "top1_lon": np.asarray(lon, np.float64),
            "gcd_km": np.asarray(gcd, np.float64),
            "ls_bucket": np.asarray(ls_bucket, np.int8),
        }
    )
