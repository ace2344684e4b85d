"""External geolocators on the run's grid: user partitions rasterised into atoms, and their evaluation.

A ``cells`` model's partition (GeoEstimation S2 CSV, or polygons with an integer label column in a
GeoPackage/GeoJSON) is rasterised like the fine S2 partition (a pixel belongs to the cell containing its
centre; a cell owning no pixel centre is absorbed by the cell owning the pixel that contains its centre,
:func:`geoens.geo.s2mask.absorption_targets`). :func:`external_atoms` builds the atom table of the tuples
``(partition label, ls, lc)`` with :func:`geoens.geo.atoms.build_atoms`; the partition takes the ``s2``
family's place, so Algorithms 1-3 and every method run on it exactly (:func:`evaluate_external`, which
reuses the test-set machinery of :mod:`geoens.evaluation.testset`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from rasterio import features

from geoens.core.constants import N_CLASSES
from geoens.core.grid import Grid
from geoens.core.types import F32Array, FloatArray, I32Array, IntArray
from geoens.data.predictions import (
    PredictionSpec,
    read_cell_predictions,
    read_point_predictions,
    read_weighted_points,
)
from geoens.data.predspec import TruthMatch, align_to_truth
from geoens.evaluation.evaluator import Evaluator
from geoens.evaluation.external import points_to_cells, vmf_cell_probs
from geoens.evaluation.methods import Method, all_methods, method_order, own_top1_name
from geoens.evaluation.testset import (
    PER_IMAGE_COLUMNS,
    AttributeProbs,
    ScoreBatch,
    evaluate_batch,
    read_absorption,
    read_attribute_probs,
)
from geoens.geo.atoms import AtomTable, build_atoms, read_atoms
from geoens.geo.lookup import Lookup, PixelLookup, open_pixel_lookup
from geoens.geo.partitions import PartitionError, read_partition_csv
from geoens.geo.rasters import read_label_raster
from geoens.geo.s2mask import absorption_table, absorption_targets, rasterize_partition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExternalPartition:
    """A user partition on the grid.

    Attributes:
        labels: ``H x W`` class of each pixel (-1: none); ``None`` for the run's own fine partition, whose
            labels are already in the run's atoms.
        absorption: ``(cells, targets)`` of the cells that own no pixel centre.
        n_cells: Classes of the partition (the length of a ``cells`` prediction).
        centre_lat: A point of each class (S2: its images' mean location; polygons: a point inside), the
            base model's own top-1.
        centre_lon: Its longitude.
    """

    labels: I32Array | None
    absorption: tuple[IntArray, IntArray]
    n_cells: int
    centre_lat: FloatArray
    centre_lon: FloatArray


def _polygon_partition(path: Path, grid: Grid, label_column: str) -> ExternalPartition:
    import geopandas as gpd  # deferred: geopandas is slow to import and only polygon partitions need it

    gdf = gpd.read_file(path)
    if label_column not in gdf.columns:
        raise PartitionError(f"{path}: no label column {label_column!r} (has {list(gdf.columns)})")
    if gdf.crs is not None and gdf.crs.to_epsg() != 4326:
        gdf = gdf.to_crs(4326)
    lab = pd.to_numeric(gdf[label_column], errors="coerce")
    n = len(gdf)
    if lab.isna().any() or not np.array_equal(np.sort(lab.to_numpy()), np.arange(n)):
        raise PartitionError(
            f"{path}: column {label_column!r} must hold the class labels 0..{n - 1}, each once (a feature's "
            f"position in the file is its line)"
        )
    lab_i = lab.to_numpy(np.int64)
    empty = np.flatnonzero(gdf.geometry.is_empty.to_numpy() | gdf.geometry.isna().to_numpy())
    if empty.size:
        raise PartitionError(f"{path}: feature {int(empty[0])} (label {lab_i[empty[0]]}) has no geometry")
    shapes = ((geom, int(v)) for geom, v in zip(gdf.geometry, lab_i, strict=True))
    labels = features.rasterize(
        shapes, out_shape=grid.shape, transform=grid.transform, fill=-1, dtype="int32", all_touched=False
    )
    pts = gdf.geometry.representative_point()
    clat, clon = np.empty(n), np.empty(n)
    clat[lab_i], clon[lab_i] = pts.y.to_numpy(), pts.x.to_numpy()
    owned = np.bincount(labels[labels >= 0].ravel(), minlength=n)[:n] > 0
    cells = np.flatnonzero(~owned)
    targets = absorption_targets(labels, grid, clat[cells], clon[cells]).astype(np.int64)
    return ExternalPartition(labels, (cells.astype(np.int64), targets), n, clat, clon)


def rasterize_external_partition(
    path: str | Path, grid: Grid, label_column: str = "label"
) -> ExternalPartition:
    """Rasterise a user partition (``.csv``: GeoEstimation S2 layout; else polygons) onto the grid.

    Raises:
        PartitionError: Naming the file on bad tokens, overlapping S2 cells, a missing or bad label column.
    """
    p = Path(path)
    if p.suffix.lower() == ".csv":
        part = read_partition_csv(p)
        labels = rasterize_partition(part, grid)
        table = absorption_table(part, labels, grid)
        absorption = (table["cell"].to_numpy(np.int64), table["target"].to_numpy(np.int64))
        return ExternalPartition(labels, absorption, len(part), part.lat_mean, part.lon_mean)
    return _polygon_partition(p, grid, label_column)


def external_atoms(
    part: ExternalPartition, ls: npt.ArrayLike, lc: npt.ArrayLike, grid: Grid
) -> tuple[AtomTable, I32Array]:
    """Atom table and index of the tuples ``(partition label, ls, lc)`` (the partition in the ``s2`` slot).

    Raises:
        ValueError: If the partition has no label raster.
    """
    if part.labels is None:
        raise ValueError("external_atoms: the partition has no label raster (the run's own atoms apply)")
    table, index = build_atoms(part.labels, np.asarray(ls, np.int8), np.asarray(lc, np.int8), grid)
    return AtomTable.from_frame(table, "external atoms"), index


def cell_directions(atoms: AtomTable, n_cells: int) -> tuple[FloatArray, FloatArray]:
    """``(unit mean direction, area)`` of each cell of the ``s2`` slot (cells without pixels: area 0)."""
    lab = atoms.labels["s2"]
    ok = lab >= 0
    s = np.zeros((n_cells, 3))
    np.add.at(s, lab[ok], atoms.sxyz[ok])
    norm = np.linalg.norm(s, axis=1, keepdims=True)
    xyz = np.divide(s, norm, out=np.zeros_like(s), where=norm > 0)
    return xyz, atoms.class_areas("s2", n_cells)


def point_cells(lat: npt.ArrayLike, lon: npt.ArrayLike, atoms: AtomTable, lookup: Lookup) -> IntArray:
    """Cell of each point: the ``s2``-slot label of the pixel that contains it (-1: none)."""
    atom = lookup.atom_at(np.asarray(lat, np.float64), np.asarray(lon, np.float64))
    out: IntArray = atoms.labels["s2"][atom]
    return out


def evaluate_external(
    name: str,
    atoms: AtomTable,
    lookup: Lookup,
    part: ExternalPartition,
    truth: pd.DataFrame,
    ids: Sequence[str],
    probs: F32Array,
    attributes: AttributeProbs | None = None,
    batch_size: int = 2048,
    threads: int = 1,
    source: str = "predictions",
) -> tuple[pd.DataFrame, TruthMatch]:
    """Every method of an external base model on a test set (``b`` alone without ``attributes``).

    Args:
        name: The model's name: ``base`` of its rows and the display name of its methods.
        atoms: The atoms of the model's partition (:func:`external_atoms`, or the run's for its fine cells).
        lookup: The pixel lookup of those atoms.
        part: The partition (absorption, centres for the own top-1).
        truth: ``image_id, lat, lon`` of the test images.
        ids: Predicted image ids.
        probs: ``images x cells`` probabilities (:func:`geoens.data.predictions.read_cell_predictions`, or
            from points by :func:`geoens.evaluation.external.points_to_cells`).
        attributes: The run's ``ls``/``lc`` predictions (``testset.read_attribute_probs``).
        batch_size: Images per batch.
        threads: Methods evaluated at a time.
        source: Names the predictions in logs.

    Returns:
        ``(per_image, match)``: ``PER_IMAGE_COLUMNS`` rows. A truth image with no prediction, no attribute
        prediction, or probabilities that are all zero is a miss in every method
        (the whole sphere, ``zero_prob``), counted in the log, never dropped.
    """
    match = align_to_truth(ids, truth["image_id"].astype(str).tolist(), source)
    ev = Evaluator(
        atoms, {"s2": part.n_cells, **N_CLASSES}, lookup, lookup.grid.total_area(), part.absorption
    )
    methods = all_methods([name]) if attributes is not None else all_methods([name])[:1]
    p = np.asarray(probs, np.float32)[match.pred_rows]
    rows = match.truth_rows
    usable = p.sum(axis=1) > 0
    if attributes is not None:
        for f in ("ls", "lc"):
            usable &= truth["image_id"].iloc[rows].isin(attributes[f][0].index).to_numpy()
    if not usable.all():
        log.warning("%s: %d image(s) without usable probabilities or attribute predictions: misses",
                    source, int((~usable).sum()))  # fmt: skip
    frames: list[pd.DataFrame] = []
    for a in range(0, int(usable.sum()), batch_size):
        sel = np.flatnonzero(usable)[a : a + batch_size]
        frames += _batch(ev, name, truth, rows[sel], p[sel], attributes, methods, part, threads)
    miss = np.setdiff1d(np.arange(len(truth)), rows[usable])
    if miss.size:
        frames += _misses(truth.iloc[miss], name, methods, ev.total_area)
    out = pd.concat(frames, ignore_index=True)
    order = {n: k for k, n in enumerate(method_order([name]))}
    out["_o"] = out["method"].map(order)
    return out.sort_values(["_o"], kind="stable").drop(columns="_o").reset_index(drop=True), match


def _batch(
    ev: Evaluator,
    name: str,
    truth: pd.DataFrame,
    rows: IntArray,
    p: F32Array,
    attributes: AttributeProbs | None,
    methods: list[Method],
    part: ExternalPartition,
    threads: int,
) -> list[pd.DataFrame]:
    sub = truth.iloc[rows]
    ids = sub["image_id"].astype(str).tolist()
    lat, lon = sub["lat"].to_numpy(np.float64), sub["lon"].to_numpy(np.float64)
    given: dict[str, npt.ArrayLike] = {"s2": p}
    if attributes is not None:
        for f in ("ls", "lc"):
            given[f] = attributes[f][1][attributes[f][0].loc[ids].to_numpy()]
    ls = np.asarray(given.get("ls", np.zeros((len(ids), 0))), np.float32)
    b = ScoreBatch(name, ids, ev.scores(given, ids), ev.lookup.atom_at(lat, lon), lat, lon, p, ls)
    return evaluate_batch(ev, b, (part.centre_lat, part.centre_lon), threads, methods=methods)


def _misses(sub: pd.DataFrame, name: str, methods: list[Method], total: float) -> list[pd.DataFrame]:
    """Rows of images that cannot be scored: the whole sphere in every method, NaN own top-1."""
    n = len(sub)
    frames = []
    for method, area in [*((m.name, total) for m in methods), (own_top1_name(name), np.nan)]:
        frame = pd.DataFrame(
            {"image_id": sub["image_id"].astype(str).to_numpy(), "base": name, "method": method,
             "area_km2": np.full(n, area), "zero_prob": np.full(n, np.isfinite(area)),
             "top1_lat": np.nan, "top1_lon": np.nan, "gcd_km": np.nan, "ls_bucket": np.full(n, -1, np.int8)}
        )  # fmt: skip
        frames.append(frame[list(PER_IMAGE_COLUMNS)])
    return frames


# --------------------------------------------------------------------------------------------------
# With a workflow results folder: every kind on the run's grid, ensembled with its LS/LC predictions
# --------------------------------------------------------------------------------------------------
@dataclass
class RunContext:
    """What a results folder gives an external model: atoms, lookup, fine partition, LS/LC predictions.

    ``results`` is ``None`` for a partition scored alone (:func:`open_partition`): no masks, no LS/LC.
    """

    results: Path | None
    atoms: AtomTable
    lookup: Lookup
    fine: ExternalPartition
    attributes: AttributeProbs | None


def open_run(results: str | Path, testset: str | None) -> RunContext:
    """Read a results folder's atoms, absorption, fine partition and (with ``testset``) LS/LC predictions.

    Raises:
        FileNotFoundError: Naming the first missing file.
    """
    r = Path(results)
    need = [
        "atoms/atoms.parquet",
        "atoms/atom_index.tif",
        "masks/s2_absorption.parquet",
        "partitions/fine.csv",
    ]
    if testset:
        need += [f"predictions/{testset}/ls.parquet", f"predictions/{testset}/lc.parquet"]
    for n in need:
        if not (r / n).is_file():
            raise FileNotFoundError(f"{r / n} is missing: run the workflow first (snakemake ... results/{n})")
    atoms = read_atoms(r / "atoms/atoms.parquet")
    lookup = open_pixel_lookup(r / "atoms/atom_index.tif", r / "atoms/atoms.parquet", atoms.n)
    fine_csv = read_partition_csv(r / "partitions/fine.csv")
    fine = ExternalPartition(None, read_absorption(r / "masks/s2_absorption.parquet"), len(fine_csv),
                             fine_csv.lat_mean, fine_csv.lon_mean)  # fmt: skip
    attrs = None
    if testset:
        attrs = read_attribute_probs({f: r / f"predictions/{testset}/{f}.parquet" for f in ("ls", "lc")})
    return RunContext(r, atoms, lookup, fine, attrs)


def open_partition(path: str | Path, grid: Grid, label_column: str = "label") -> RunContext:
    """A user partition alone on a grid, without a results folder: its base model can be scored by itself.

    The partition is rasterised as in a run (:func:`rasterize_external_partition`) and is the only family of
    atoms (no LS/LC masks: every pixel gets the same attribute labels), so Algorithms 1-3 give the base
    model's RvA on this grid; the ensembles with LS/LC need a results folder.

    Raises:
        PartitionError: Naming the file on bad tokens, overlapping cells or a bad label column.
    """
    part = rasterize_external_partition(path, grid, label_column)
    same = np.zeros(grid.shape, np.int8)
    atoms, index = external_atoms(part, same, same, grid)
    log.info("%s: %d cells on a %d x %d grid, %d atoms", path, part.n_cells, grid.height, grid.width, atoms.n)
    return RunContext(None, atoms, PixelLookup(index, grid), part, None)


def cells_on_run(
    run: RunContext, path: str | Path, spec: PredictionSpec
) -> tuple[AtomTable, Lookup, ExternalPartition, list[str], F32Array]:
    """Any kind of predictions as cell probabilities on the run's grid, with the atoms to evaluate them on.

    The cells are ``spec.partition`` (rasterised; atoms with the run's LS/LC masks) or, by default, the run's
    fine cells: ``cells`` are read over them, ``points``/``samples`` binned into them (vMF-smoothed with
    ``smooth_kappa``), a ``point`` made a vMF density of ``spec.kappa``.

    Raises:
        PredictionsError: On a bad file; ValueError: a ``point`` model without ``kappa``.
    """
    if spec.partition is not None:
        if run.results is None:
            raise ValueError(f"{path}: the partition is already the one scored (no results folder)")
        grid = run.lookup.grid
        part = rasterize_external_partition(spec.partition, grid, spec.partition_label)
        ls, _ = read_label_raster(run.results / "masks/ls.tif", grid)
        lc, _ = read_label_raster(run.results / "masks/lc.tif", grid)
        atoms, index = external_atoms(part, ls, lc, grid)
        lookup: Lookup = PixelLookup(index, grid)
    else:
        part, atoms, lookup = run.fine, run.atoms, run.lookup
    if spec.kind == "cells":
        ids, probs = read_cell_predictions(path, spec, part.n_cells)
        return atoms, lookup, part, ids, probs
    xyz, area = cell_directions(atoms, part.n_cells)
    if spec.kind == "point":
        if spec.kappa is None:
            raise ValueError(f"{path}: a 'point' model on the grid needs kappa (--kappa; fit it on val)")
        pts = read_point_predictions(path, spec)
        return atoms, lookup, part, pts.ids, vmf_cell_probs(pts.lat, pts.lon, spec.kappa, xyz, area)
    wp = read_weighted_points(path, spec)
    cells = point_cells(wp.lat, wp.lon, atoms, lookup)
    return atoms, lookup, part, wp.ids, points_to_cells(wp, cells, part.n_cells, spec.smooth_kappa, xyz, area)
