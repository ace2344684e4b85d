"""External models in the workflow (rules/external.smk): their specs, cells files, and the own-model export.

:func:`external_spec` turns a config node ``models.external.<name>`` into the reader's
:class:`~geoens.data.predspec.PredictionSpec`; :func:`external_cells` writes a model's predictions of one
dataset as ``cells`` over its partition (rule ``external_cells``); :func:`evaluate_external_cells` scores
them with every method (rule ``evaluate_external``); :func:`fit_point_kappa` fits a ``point`` model's vMF
concentration on val (rule ``external_kappa``). A model is evaluated on the run's fine partition or on a
partition of its own, rasterised with the run's LS/LC masks into atoms (:class:`RunFiles`).

The export (rule ``export_predictions``): GeoEst. and GeoCLIP predict probabilities over the run's fine
partition: written as ``cells`` they are the same numbers an external model would hand in. GeoCLIP's gallery
form is its top-k locations with their softmax weights (:func:`top_k_points`): here its gallery is the fine
cells' mean locations (the locations it scores, DESIGN section 4), so ``points`` binned back into the fine
cells give the cells form truncated to the k most probable cells. Fed back as ``models.external.<name>``
they check that the external path reproduces the built-in evaluation (tests/test_byo_workflow.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoens.core.constants import EARTH_RADIUS_KM, GCD_RADIUS_KM
from geoens.core.types import F32Array, FloatArray
from geoens.data.labeltable import read_label_points
from geoens.data.predictions import (
    read_cell_predictions,
    read_point_predictions,
    read_weighted_points,
    write_cell_predictions,
    write_point_predictions,
    write_weighted_points,
)
from geoens.data.predspec import (
    PointPredictions,
    PredictionSpec,
    WeightedPoints,
    align_to_truth,
    prediction_spec_from_config,
)
from geoens.evaluation.external import fit_vmf_kappa, point_per_image, points_to_cells, vmf_cell_probs
from geoens.evaluation.external_grid import (
    ExternalPartition,
    cell_directions,
    evaluate_external,
    external_atoms,
    point_cells,
    rasterize_external_partition,
)
from geoens.evaluation.methods import distance_name, own_top1_name
from geoens.evaluation.testset import read_absorption, read_attribute_probs, read_probs
from geoens.geo.atoms import AtomTable, read_atoms
from geoens.geo.lookup import Lookup, PixelLookup, open_pixel_lookup
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


@dataclass
class RunFiles:
    """The run's files an external model is evaluated with (rules/external.smk inputs).

    Attributes:
        atoms: ``results/atoms/atoms.parquet``.
        atom_index: ``results/atoms/atom_index.tif``.
        absorption: ``results/masks/s2_absorption.parquet``.
        fine: The fine partition CSV.
        earth_radius_km: Sphere radius of the grid.
        ls_mask: ``results/masks/ls.tif`` (a model with a partition of its own).
        lc_mask: ``results/masks/lc.tif`` (likewise).

    """

    atoms: str | Path
    atom_index: str | Path
    absorption: str | Path
    fine: str | Path
    earth_radius_km: float = EARTH_RADIUS_KM
    ls_mask: str | Path | None = None
    lc_mask: str | Path | None = None

    @classmethod
    def from_inputs(cls, named: Mapping[str, Any], grid: Mapping[str, Any]) -> RunFiles:
        """The run's files from a rule's named inputs and the ``grid`` config (rules/external.smk)."""
        return cls(
            named["atoms"], named["atom_index"], named["absorption"], named["fine"],
            float(grid.get("earth_radius_km", EARTH_RADIUS_KM)), named.get("ls_mask"), named.get("lc_mask"),
        )  # fmt: skip

    def open(self, spec: PredictionSpec) -> tuple[AtomTable, Lookup, ExternalPartition]:
        """The atoms, pixel lookup and partition a model is evaluated on.

        The run's own atoms and fine partition; for a model with a partition of its own, that partition
        rasterised on the grid and its atoms with the run's LS/LC masks
        (:func:`geoens.evaluation.external_grid.external_atoms`).

        Raises:
            ValueError: Naming the model if it has a partition but the masks are not given.

        """
        atoms = read_atoms(self.atoms)
        lookup = open_pixel_lookup(self.atom_index, self.atoms, atoms.n, self.earth_radius_km)
        if spec.partition is None:
            fine = read_partition_csv(self.fine)
            part = ExternalPartition(
                None, read_absorption(self.absorption), fine.lat_mean.size, fine.lat_mean, fine.lon_mean
            )
            return atoms, lookup, part
        if self.ls_mask is None or self.lc_mask is None:
            raise ValueError(f"models.external.{spec.name}: its partition needs the run's LS and LC masks")
        grid = lookup.grid
        part = rasterize_external_partition(spec.partition, grid, spec.partition_label)
        ls, _ = read_label_raster(self.ls_mask, grid)
        lc, _ = read_label_raster(self.lc_mask, grid)
        own, index = external_atoms(part, ls, lc, grid)
        return own, PixelLookup(index, grid), part


def external_cells(
    spec: PredictionSpec, source: str | Path, out: str | Path, run: RunFiles, kappa: float | None = None
) -> int:
    """Write one dataset's predictions of an external model as ``cells`` over its partition.

    The partition is the run's fine one, or the model's own (:meth:`RunFiles.open`). ``cells``: read and
    checked against the partition, written in the contract's canonical columns. ``points``/``samples``: each
    point's weight goes to the cell of the pixel holding it (an absorbed
    cell's points land where its area went), optionally vMF-smoothed (``smooth_kappa``). ``point``: the vMF
    density around the point with concentration ``kappa`` (the spec's or the one fitted on val,
    :func:`fit_point_kappa`). The conversions are :mod:`geoens.evaluation.external`'s.

    Args:
        spec: The model's spec (:func:`external_spec`).
        source: Its predictions file of the dataset.
        out: The cells Parquet to write (``results/external/<name>/<dataset>.parquet``).
        run: The run's atoms, fine partition and masks.
        kappa: The fitted concentration (``point`` kind when the spec has none).

    Returns:
        The rows written.

    Raises:
        ValueError: Naming the model on a point model without ``kappa``.

    """
    if spec.kind == "point" and spec.kappa is None:
        if kappa is None:
            raise ValueError(f"models.external.{spec.name}: kind point needs kappa (given or fitted on val)")
        spec = replace(spec, kappa=kappa)
    atoms, lookup, part = run.open(spec)
    if spec.kind == "cells":
        ids, probs = read_cell_predictions(source, spec, part.n_cells)
    elif spec.kind == "point":
        xyz, area = cell_directions(atoms, part.n_cells)
        pts = read_point_predictions(source, spec)
        ids, probs = pts.ids, vmf_cell_probs(pts.lat, pts.lon, float(spec.kappa or 0.0), xyz, area)
    else:
        xyz, area = cell_directions(atoms, part.n_cells)
        wp = read_weighted_points(source, spec)
        cells = point_cells(wp.lat, wp.lon, atoms, lookup)
        ids, probs = wp.ids, points_to_cells(wp, cells, part.n_cells, spec.smooth_kappa, xyz, area)
    write_cell_predictions(out, ids, probs)
    return len(ids)


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
    run: RunFiles,
    labels: str | Path,
    attributes: Mapping[str, str | Path],
    batch_size: int = 2048,
    threads: int = 1,
    points: str | Path | None = None,
) -> pd.DataFrame:
    """Every method of an external model with cells over its partition (rule ``evaluate_external``).

    :func:`geoens.evaluation.external_grid.evaluate_external` on the run's atoms (or its partition's,
    :meth:`RunFiles.open`), with the run's LS/LC
    predictions of the same images: the machinery of the built-in models' evaluation, so the exported
    built-in predictions fed back give their areas exactly. Every test image gets rows; an image without a
    prediction or whose probabilities are all zero is a miss (counted in the log). A ``point`` model also
    gets its exact distance-ranking rows (:func:`geoens.evaluation.methods.distance_name`: area the spherical
    cap of radius its error, GCD its own error) in place of the own top-1 row.

    Args:
        spec: The model's spec.
        cells: Its cells Parquet (:func:`external_cells`).
        run: The run's atoms and fine partition.
        labels: The test set's label table (the truth).
        attributes: ``ls`` and ``lc`` -> the run's predictions Parquet of the test set.
        batch_size: Images per batch.
        threads: Methods evaluated at a time.
        points: The ``point`` model's predictions file of the test set (its distance rows).

    """
    atoms, lookup, part = run.open(spec)
    truth = read_label_points(labels)[["image_id", "lat", "lon"]].reset_index(drop=True)
    ids, probs = read_probs(cells)
    df, _ = evaluate_external(
        spec.name, atoms, lookup, part, truth, ids, probs, read_attribute_probs(attributes),
        batch_size=batch_size, threads=threads, source=str(cells),
    )  # fmt: skip
    if spec.kind != "point" or points is None:
        return df
    buckets = df.drop_duplicates("image_id").set_index("image_id")["ls_bucket"]
    # the argmax cell of a vMF density is the largest nearby cell, not the model's answer: the distance rows
    # carry the point's own error instead of an own top-1 row
    df = df[df["method"] != own_top1_name(spec.name)]
    pred = read_point_predictions(points, spec)
    dist, _ = point_per_image(pred, truth, spec.name, GCD_RADIUS_KM, str(points))
    dist["method"] = distance_name(spec.name)
    dist["ls_bucket"] = buckets.loc[dist["image_id"]].to_numpy(np.int8)
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


def export_top1_point(source: str | Path, out: str | Path, lat: FloatArray, lon: FloatArray) -> int:
    """Write a workflow predictions Parquet as a ``point`` file (its most probable class's location).

    The point is the model's own top-1 (the ``(cell)`` row of the tables): what a model that answers with one
    point would give. Returns the rows written.
    """
    ids, probs = read_probs(source)
    top = top_k_points(ids, probs, lat, lon, 1)
    write_point_predictions(out, PointPredictions(top.ids, top.lat, top.lon))
    return len(ids)
