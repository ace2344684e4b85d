"""External models in the workflow (rules/external.smk): their specs, cells files, and the own-model export.

:func:`external_spec` turns a config node ``models.external.<name>`` into the reader's
:class:`~geoens.data.predspec.PredictionSpec`; :func:`external_cells` writes a model's predictions of one
dataset as ``cells`` over its partition (rule ``external_cells``); :func:`evaluate_external_cells` scores
them with every method (rule ``evaluate_external``); :func:`fit_point_kappa` fits a ``point`` model's vMF
concentration on val (rule ``external_kappa``). The workflow evaluates external models on its own fine
partition; a model with a partition of its own is refused with an error naming the key.

The export (rule ``export_predictions``): GeoEst. and GeoCLIP predict probabilities over the run's fine
partition: written as ``cells`` they are the same numbers an external model would hand in. GeoCLIP's gallery
form is its top-k locations with their softmax weights (:func:`top_k_points`): here its gallery is the fine
cells' mean locations (the locations it scores, DESIGN section 4), so ``points`` binned back into the fine
cells give the cells form truncated to the k most probable cells. Fed back as ``models.external.<name>``
they check that the external path reproduces the built-in evaluation (tests/test_byo_workflow.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoens.core.constants import EARTH_RADIUS_KM, GCD_RADIUS_KM
from geoens.core.grid import Grid, latlon_to_xyz
from geoens.core.types import F32Array, FloatArray, IntArray
from geoens.data.labeltable import read_label_points
from geoens.data.predictions import (
    read_cell_predictions,
    read_point_predictions,
    read_weighted_points,
    write_cell_predictions,
    write_weighted_points,
)
from geoens.data.predspec import PredictionSpec, WeightedPoints, align_to_truth, prediction_spec_from_config
from geoens.evaluation.external import fit_vmf_kappa, point_per_image, points_to_cells, vmf_cell_probs
from geoens.evaluation.methods import distance_name
from geoens.evaluation.testset import evaluate_testset, read_probs
from geoens.geo.partitions import read_partition_csv
from geoens.geo.rasters import read_label_raster


def external_spec(name: str, node: Mapping[str, Any]) -> PredictionSpec:
    """The reader's spec of a config node ``models.external.<name>`` (``kappa: fit`` -> fitted, ``None``).

    Raises:
        geoens.data.predspec.PredictionsError: Naming the model and the key on a bad value.

    """
    spec_node = {k: v for k, v in node.items() if v is not None}
    if spec_node.get("kappa") == "fit":
        del spec_node["kappa"]
    return prediction_spec_from_config(name, spec_node)


def cell_geometry(labels: IntArray, grid: Grid, n_cells: int) -> tuple[FloatArray, FloatArray]:
    """Area and area-weighted mean direction of each cell's pixels on the grid (the vMF kernel's cells).

    Args:
        labels: ``H x W`` cell label of each pixel (the S2 mask; -1 none).
        grid: The grid.
        n_cells: Cells of the partition (a cell without a pixel gets area 0 and the direction of the pole).

    Returns:
        ``(cells x 3 unit directions, cell areas in km^2)``.

    """
    area = np.zeros(n_cells, np.float64)
    xyz = np.zeros((n_cells, 3), np.float64)
    lon = grid.lon_centers()
    for r, (lat, a) in enumerate(zip(grid.lat_centers(), grid.row_areas(), strict=True)):
        row = np.asarray(labels[r], np.int64)
        ok = row >= 0
        if not ok.any():
            continue
        pix = latlon_to_xyz(np.full(int(ok.sum()), lat), lon[ok])
        area += np.bincount(row[ok], minlength=n_cells)[:n_cells] * a
        for d in range(3):
            xyz[:, d] += np.bincount(row[ok], weights=pix[:, d] * a, minlength=n_cells)[:n_cells]
    norm = np.linalg.norm(xyz, axis=1, keepdims=True)
    xyz = np.where(norm > 0, xyz / np.where(norm > 0, norm, 1.0), np.array([0.0, 0.0, 1.0]))
    return xyz, area


def external_cells(
    spec: PredictionSpec,
    source: str | Path,
    out: str | Path,
    fine_csv: str | Path,
    s2_mask: str | Path | None = None,
    kappa: float | None = None,
    earth_radius_km: float = EARTH_RADIUS_KM,
) -> int:
    """Write one dataset's predictions of an external model as ``cells`` over the run's fine partition.

    ``cells``: read and checked against the partition, written in the contract's canonical columns.
    ``points``/``samples``: each point's weight goes to the cell of the S2 mask pixel holding it (so an
    absorbed cell's points land where its area went), optionally vMF-smoothed (``smooth_kappa``).
    ``point``: the vMF density around the point with concentration ``kappa`` (the spec's or the one fitted on
    val, :func:`fit_point_kappa`).

    Args:
        spec: The model's spec (:func:`external_spec`).
        source: Its predictions file of the dataset.
        out: The cells Parquet to write (``results/external/<name>/<dataset>.parquet``).
        fine_csv: The run's fine partition CSV.
        s2_mask: The S2 mask GeoTIFF (``results/masks/s2_fine.tif``; points kinds).
        kappa: The fitted concentration (``point`` kind when the spec has none).
        earth_radius_km: Sphere radius of the grid.

    Returns:
        The rows written.

    Raises:
        ValueError: Naming the model on a partition of its own (not supported by the workflow yet) or a
            missing mask or ``kappa``.

    """
    if spec.partition is not None:
        raise ValueError(
            f"models.external.{spec.name}.partition: the workflow evaluates external models on the run's "
            f"fine partition only; {spec.partition} is not supported yet (use `geoens rva`)"
        )
    n_cells = read_partition_csv(fine_csv).lat_mean.size
    if spec.kind == "cells":
        ids, probs = read_cell_predictions(source, spec, n_cells)
        write_cell_predictions(out, ids, probs)
        return len(ids)
    if s2_mask is None:
        raise ValueError(f"models.external.{spec.name}: kind {spec.kind} needs the S2 mask")
    labels, _ = read_label_raster(s2_mask)
    grid = Grid(int(labels.shape[0]), int(labels.shape[1]), earth_radius_km)
    xyz, area = cell_geometry(labels, grid, n_cells)
    if spec.kind == "point":
        k = spec.kappa if spec.kappa is not None else kappa
        if k is None:
            raise ValueError(f"models.external.{spec.name}: kind point needs kappa (given or fitted on val)")
        pts = read_point_predictions(source, spec)
        write_cell_predictions(out, pts.ids, vmf_cell_probs(pts.lat, pts.lon, k, xyz, area))
        return len(pts.ids)
    wp = read_weighted_points(source, spec)
    rows, cols = grid.pixel_of(wp.lat, wp.lon)
    cell = np.asarray(labels[rows, cols], np.int64)
    write_cell_predictions(out, wp.ids, points_to_cells(wp, cell, n_cells, spec.smooth_kappa, xyz, area))
    return len(wp.ids)


def fit_point_kappa(spec: PredictionSpec, val: str | Path, labels: str | Path) -> dict[str, Any]:
    """Fit a ``point`` model's vMF ``kappa`` on its val predictions by maximum likelihood.

    Args:
        spec: The model's spec.
        val: Its val predictions file.
        labels: The training label table (its ``split == val`` rows are the truth).

    Returns:
        ``{"kappa", "n_fit", "n_val", "n_predicted"}`` (images of val with a prediction and a truth).

    """
    pts = read_point_predictions(val, spec)
    truth = read_label_points(labels, split="val")[["image_id", "lat", "lon"]]
    match = align_to_truth(pts.ids, truth["image_id"].astype(str).tolist(), val)
    t = truth.iloc[match.truth_rows]
    kappa = fit_vmf_kappa(
        pts.lat[match.pred_rows], pts.lon[match.pred_rows], t["lat"].to_numpy(), t["lon"].to_numpy()
    )
    return {"kappa": kappa, "n_fit": len(match.truth_rows), "n_val": len(truth), "n_predicted": len(pts.ids)}


def evaluate_external_cells(
    spec: PredictionSpec,
    cells: str | Path,
    run: Mapping[str, str | Path],
    earth_radius_km: float,
    batch_size: int,
    chunk_elements: int,
    threads: int = 1,
    points: str | Path | None = None,
) -> pd.DataFrame:
    """Every method of an external model with cells over the run's fine partition (``evaluate_external``).

    The same evaluation as the built-in base models' (:func:`geoens.evaluation.testset.evaluate_testset`),
    with the run's LS/LC predictions of the same images; the rows' ``base`` is the model's name. A ``point``
    model also gets its exact distance-ranking rows (:func:`geoens.evaluation.methods.distance_name`: area
    the spherical cap of radius its error, GCD its own error).

    Args:
        spec: The model's spec.
        cells: Its cells Parquet (:func:`external_cells`).
        run: The run's files: ``atoms``, ``atom_index``, ``absorption``, ``labels``, ``fine``, ``ls``, ``lc``.
        earth_radius_km: Sphere radius of the grid.
        batch_size: Images per streamed batch.
        chunk_elements: Bound on one ``images x groups`` matrix.
        threads: Methods evaluated at a time.
        points: The ``point`` model's predictions file of the test set (its distance rows).

    """
    df = evaluate_testset(
        run["atoms"], run["atom_index"], run["absorption"], run["labels"], run["fine"],
        {"ls": run["ls"], "lc": run["lc"], spec.name: cells},
        earth_radius_km=earth_radius_km, batch_size=batch_size, chunk_elements=chunk_elements,
        threads=threads, bases=[spec.name],
    )  # fmt: skip
    if spec.kind != "point" or points is None:
        return df
    images = df.drop_duplicates("image_id").set_index("image_id")["ls_bucket"]
    truth = read_label_points(run["labels"])
    truth = truth[truth["image_id"].isin(images.index)][["image_id", "lat", "lon"]]
    dist, _ = point_per_image(
        read_point_predictions(points, spec), truth, spec.name, GCD_RADIUS_KM, str(points)
    )
    dist["method"] = distance_name(spec.name)
    dist["ls_bucket"] = images.loc[dist["image_id"]].to_numpy(np.int8)
    return pd.concat([df, dist], ignore_index=True)


def top_k_points(ids: list[str], probs: F32Array, lat: FloatArray, lon: FloatArray, k: int) -> WeightedPoints:
    """Each image's ``k`` most probable classes as weighted points at the classes' locations.

    Weights are the probabilities renormalised over the ``k`` (float64); ties keep the lower class first.

    Args:
        ids: Image ids, one per row of ``probs``.
        probs: ``images x classes`` probabilities.
        lat: Latitude (degrees) of each class's location.
        lon: Longitude (degrees) of each class's location.
        k: Points per image (at most the number of classes).

    Raises:
        ValueError: If ``k`` is not positive or the class locations do not match ``probs``.

    """
    n, c = probs.shape
    if k < 1:
        raise ValueError(f"top-k points: k must be >= 1, got {k}")
    if lat.size != c or lon.size != c:
        raise ValueError(f"top-k points: {c} classes but {lat.size} class locations")
    k = min(k, c)
    top = np.argsort(-probs.astype(np.float64), axis=1, kind="stable")[:, :k]
    w = np.take_along_axis(probs.astype(np.float64), top, axis=1)
    w /= w.sum(axis=1, keepdims=True)
    return WeightedPoints(
        ids=list(ids),
        offsets=np.arange(n + 1, dtype=np.int64) * k,
        lat=lat[top].ravel().astype(np.float64),
        lon=lon[top].ravel().astype(np.float64),
        weight=w.ravel(),
    )


def export_cells(source: str | Path, out: str | Path) -> int:
    """Write a workflow predictions Parquet as a ``cells`` predictions file; return the rows written."""
    ids, probs = read_probs(source)
    write_cell_predictions(out, ids, probs)
    return len(ids)


def export_top_k_points(source: str | Path, out: str | Path, lat: FloatArray, lon: FloatArray, k: int) -> int:
    """Write a workflow predictions Parquet as a ``points`` file of its top-k classes; return the rows."""
    ids, probs = read_probs(source)
    write_weighted_points(out, top_k_points(ids, probs, lat, lon, k))
    return len(ids)
