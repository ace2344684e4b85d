"""LandScan (LS) buckets: the one rule that turns population values into the four buckets (DESIGN 3).

:func:`ls_bucket_edges` derives the edges, equally spaced in log10, from the values sampled at the training
geotags (the ``ls_edges.json`` artifact); :func:`bucketize` applies them and is the canonical LS bucket
function of the project (the relabel stage and the mask stage both call it); :func:`load_ls_edges` reads the
artifact (or the config's fallback) and :func:`check_ls_edges` validates a set of edges.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from geoens.core.constants import LS_BUCKETS
from geoens.core.io import read_json
from geoens.core.types import FloatArray

log = logging.getLogger(__name__)


#: Number of LS buckets.
N_LS_BUCKETS = len(LS_BUCKETS)


def ls_bucket_edges(values: npt.ArrayLike, n_buckets: int = N_LS_BUCKETS) -> dict[str, Any]:
    """Bucket edges equally spaced in log10 between the smallest positive and the largest sampled value.

    Args:
        values: LS values sampled at the training geotags (NaN = nodata, ignored).
        n_buckets: Number of buckets (4).

    Returns:
        The ``ls_edges.json`` record: ``edges_log10`` (``n_buckets + 1`` floats), ``counts`` (sampled values
        per bucket, by :func:`bucketize`), ``min_positive``, ``max`` and ``n_sampled`` (non-NaN values).

    Raises:
        ValueError: If no value is positive or all positive values are equal (no range to split).

    """
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    pos = v[v > 0]
    if pos.size == 0:
        raise ValueError(f"cannot derive LS bucket edges: none of the {v.size} sampled values is positive")
    lo, hi = float(pos.min()), float(v.max())
    if not hi > lo:
        raise ValueError(f"cannot derive LS bucket edges: all positive sampled values equal {lo}")
    edges = np.linspace(math.log10(lo), math.log10(hi), n_buckets + 1)
    buckets = bucketize(v, edges)
    counts = np.bincount(buckets, minlength=n_buckets)
    return {
        "edges_log10": [float(e) for e in edges],
        "counts": [int(c) for c in counts],
        "min_positive": lo,
        "max": hi,
        "n_sampled": int(v.size),
    }


def bucketize(values: npt.ArrayLike, edges_log10: Sequence[float] | npt.ArrayLike) -> npt.NDArray[np.int8]:
    """LS bucket of each value: the canonical rule of the project.

    ``values <= 0`` -> 0 (lowest); NaN -> -1; otherwise ``log10(value)`` is placed by the inner edges, a value
    on an inner edge going to the upper bucket (buckets ``[e_k, e_{k+1})``), values below the first edge or
    above the last clipping into the end buckets.

    Raises:
        ValueError: If the edges are fewer than 2 or not increasing.

    """
    e = np.asarray(edges_log10, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or not np.all(np.diff(e) > 0):
        raise ValueError(f"LS edges must be an increasing list of at least 2 numbers, got {e.tolist()}")
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, -1, dtype=np.int8)
    valid = ~np.isnan(v)
    pos = valid & (v > 0)
    out[valid & ~pos] = 0
    out[pos] = np.searchsorted(e[1:-1], np.log10(v[pos]), side="right").astype(np.int8)
    return out


def check_ls_edges(edges_log10: Sequence[float] | npt.ArrayLike) -> FloatArray:
    """Validate the log10 LS edges of the four buckets -> the edges as a float64 array.

    Raises:
        ValueError: If the edges are not :data:`N_LS_BUCKETS` ``+ 1`` increasing finite numbers.

    """
    e = np.asarray(edges_log10, dtype=np.float64)
    if (
        e.ndim != 1
        or e.size != len(LS_BUCKETS) + 1
        or not np.all(np.diff(e) > 0)
        or not np.all(np.isfinite(e))
    ):
        raise ValueError(
            f"LS edges must be {len(LS_BUCKETS) + 1} increasing finite log10 values, got {e.tolist()}"
        )
    return e


def load_ls_edges(path: str | Path | None, fallback: Sequence[float] | None = None) -> list[float]:
    """Load the log10 LS edges from ``results/labels/ls_edges.json`` (key ``edges_log10``), else ``fallback``.

    Args:
        path: The ``ls_edges.json`` artifact (``None`` or a missing file: use ``fallback``).
        fallback: The config's ``labels.ls_edges_fallback``, or ``None``.

    Returns:
        The :data:`N_LS_BUCKETS` ``+ 1`` edges (validated by :func:`check_ls_edges`).

    Raises:
        ValueError: Naming the file if it lacks a valid ``edges_log10`` list or its edges are not
            5 increasing finite numbers; if the file is absent and no fallback is given.

    """
    if path is not None and Path(path).exists():
        obj = read_json(path)
        if not isinstance(obj, dict) or "edges_log10" not in obj:
            raise ValueError(f"{path}: no key 'edges_log10'")
        try:
            edges = [float(x) for x in obj["edges_log10"]]
            check_ls_edges(edges)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: no valid 'edges_log10' list: {exc}") from exc
        return edges
    if fallback is None:
        raise ValueError(f"{path}: LS edges file not found and labels.ls_edges_fallback not set")
    log.warning("LS edges file %s absent; using config labels.ls_edges_fallback", path)
    edges = [float(x) for x in fallback]
    check_ls_edges(edges)
    return edges
