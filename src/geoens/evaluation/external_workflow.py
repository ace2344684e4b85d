"""External models in the workflow (rules/external.smk): their specs, cells files, and the own-model export.

:func:`external_spec` turns a config node ``models.external.<name>`` into the reader's
:class:`~geoens.data.predspec.PredictionSpec`; :func:`external_cells` writes a model's predictions of one
dataset as ``cells`` over its partition (rule ``external_cells``); :func:`evaluate_external_cells` scores
them with every method (rule ``evaluate_external``, fine-partition models).

The export (rule ``export_predictions``): GeoEst. and GeoCLIP predict probabilities over the run's fine
partition: written as ``cells`` they are the same numbers an external model would hand in. GeoCLIP's gallery
form is its top-k locations with their softmax weights (:func:`top_k_points`): here its gallery is the fine
cells' mean locations (the locations it scores, DESIGN section 4), so ``points`` binned back into the fine
cells give the cells form truncated to the k most probable cells. Fed back as ``models.external.<name>`` they check that the external path reproduces the
built-in evaluation (tests/test_byo_workflow.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoens.core.types import F32Array, FloatArray
from geoens.data.predictions import read_cell_predictions, write_cell_predictions, write_weighted_points
from geoens.data.predspec import PredictionSpec, WeightedPoints, prediction_spec_from_config
from geoens.evaluation.testset import evaluate_testset, read_probs
from geoens.geo.partitions import read_partition_csv


def external_spec(name: str, node: Mapping[str, Any]) -> PredictionSpec:
    """The reader's spec of a config node ``models.external.<name>`` (``kappa: fit`` -> fitted, ``None``).

    Raises:
        geoens.data.predspec.PredictionsError: Naming the model and the key on a bad value.

    """
    spec_node = {k: v for k, v in node.items() if v is not None}
    if spec_node.get("kappa") == "fit":
        del spec_node["kappa"]
    return prediction_spec_from_config(name, spec_node)


def external_cells(spec: PredictionSpec, source: str | Path, out: str | Path, fine_csv: str | Path) -> int:
    """Write one dataset's predictions of an external model as ``cells`` over its partition.

    A ``cells`` model's file is read and checked against its partition (the run's fine partition unless it
    names its own) and written in the contract's canonical columns.

    Args:
        spec: The model's spec (:func:`external_spec`).
        source: Its predictions file of the dataset.
        out: The cells Parquet to write (``results/external/<name>/<dataset>.parquet``).
        fine_csv: The run's fine partition CSV.

    Returns:
        The rows written.

    """
    partition = spec.partition if spec.partition is not None else Path(fine_csv)
    n_cells = read_partition_csv(partition).lat_mean.size
    ids, probs = read_cell_predictions(source, spec, n_cells)
    write_cell_predictions(out, ids, probs)
    return len(ids)


def evaluate_external_cells(
    name: str,
    cells: str | Path,
    run: Mapping[str, str | Path],
    earth_radius_km: float,
    batch_size: int,
    chunk_elements: int,
    threads: int = 1,
) -> pd.DataFrame:
    """Every method of an external model with cells over the run's fine partition (``evaluate_external``).

    The same evaluation as the built-in base models' (:func:`geoens.evaluation.testset.evaluate_testset`),
    with the run's LS/LC predictions of the same images; the rows' ``base`` is ``name``.

    Args:
        name: The model's name.
        cells: Its cells Parquet (:func:`external_cells`).
        run: The run's files: ``atoms``, ``atom_index``, ``absorption``, ``labels``, ``fine``, ``ls``, ``lc``.
        earth_radius_km: Sphere radius of the grid.
        batch_size: Images per streamed batch.
        chunk_elements: Bound on one ``images x groups`` matrix.
        threads: Methods evaluated at a time.

    """
    return evaluate_testset(
        run["atoms"], run["atom_index"], run["absorption"], run["labels"], run["fine"],
        {"ls": run["ls"], "lc": run["lc"], name: cells},
        earth_radius_km=earth_radius_km, batch_size=batch_size, chunk_elements=chunk_elements,
        threads=threads, bases=[name],
    )  # fmt: skip


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
