"""The workflow's own base models written out in the external-model contract (rule ``export_predictions``).

GeoEst. and GeoCLIP predict probabilities over the run's fine partition: written as ``cells`` they are the
same numbers an external model would hand in. GeoCLIP's gallery form is its top-k locations with their softmax
weights (:func:`top_k_points`): here its gallery is the fine cells' mean locations (the locations it scores,
DESIGN section 4), so ``points`` binned back into the fine cells give the cells form truncated to the k most
probable cells. Fed back as ``models.external.<name>`` they check that the external path reproduces the
built-in evaluation (tests/test_byo_workflow.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geoens.core.types import F32Array, FloatArray
from geoens.data.predictions import WeightedPoints, write_cell_predictions, write_weighted_points
from geoens.evaluation.testset import read_probs


def top_k_points(
    ids: list[str], probs: F32Array, lat: FloatArray, lon: FloatArray, k: int
) -> WeightedPoints:
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


def export_top_k_points(
    source: str | Path, out: str | Path, lat: FloatArray, lon: FloatArray, k: int
) -> int:
    """Write a workflow predictions Parquet as a ``points`` file of its top-k classes; return the rows."""
    ids, probs = read_probs(source)
    write_weighted_points(out, top_k_points(ids, probs, lat, lon, k))
    return len(ids)
