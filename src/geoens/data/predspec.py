"""External predictions: the declared spec, typed containers and truth matching (docs/byo.md).

The file format itself is read and written in :mod:`geoens.data.predictions` (its one home); this module
holds what the readers return and what a config declares: :class:`PredictionSpec` (kind, units, order,
column mapping, partition; never guessed), :func:`prediction_spec_from_config`, the containers
:class:`PointPredictions`, :class:`WeightedPoints`, :class:`CellPredictions`, and :func:`align_to_truth`,
which counts (and logs) ids missing on either side, never dropping them silently.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from geoens.core.types import F32Array, FloatArray, IntArray

log = logging.getLogger(__name__)

#: The kinds of external predictions.
PREDICTION_KINDS: tuple[str, ...] = ("cells", "points", "samples", "point")
#: Declared coordinate units and orders.
UNITS: tuple[str, ...] = ("degrees", "radians")
ORDERS: tuple[str, ...] = ("latlon", "lonlat")
#: Contract column names a spec's ``columns`` may map to file columns.
CONTRACT_COLUMNS: tuple[str, ...] = ("image_id", "probs", "lat", "lon", "weight", "coords")
#: How many offending rows an error names.
_N_EXAMPLES = 5


class PredictionsError(ValueError):
    """A predictions file that breaks the contract (the message names the file and the row or image)."""


@dataclass(frozen=True)
class PredictionSpec:
    """How to read one external model's predictions.

    Attributes:
        name: The model's name (the ``base`` of its per-image rows and its display name).
        kind: One of :data:`PREDICTION_KINDS`.
        units: ``degrees`` or ``radians`` (declared, never guessed).
        order: ``latlon`` or ``lonlat``: how a 2-value ``coords`` column is read.
        columns: Contract name -> file column (e.g. ``{"lat": "predicted_lat"}``); unmapped names use the
            contract name or a known alias (``geoens.data.predictions.COLUMN_ALIASES``).
        partition: The partition of a ``cells`` model (GeoEstimation S2 CSV, or polygons GPKG/GeoJSON), or of
            points to be binned; ``None`` = the run's fine partition.
        partition_label: The label column of a polygons partition.
        predictions: Test set (or ``val``) -> predictions file, as the config gives them.
        kappa: vMF concentration of a ``point`` model's density (``None``: fitted on val).
        smooth_kappa: vMF smoothing of ``points``/``samples`` (``None``: no smoothing).
    """

    name: str
    kind: str
    units: str = "degrees"
    order: str = "latlon"
    columns: Mapping[str, str] = field(default_factory=dict)
    partition: Path | None = None
    partition_label: str = "label"
    predictions: Mapping[str, str] = field(default_factory=dict)
    kappa: float | None = None
    smooth_kappa: float | None = None

    def __post_init__(self) -> None:
        where = f"model {self.name!r}"
        if self.kind not in PREDICTION_KINDS:
            raise PredictionsError(f"{where}: kind {self.kind!r} is not one of {', '.join(PREDICTION_KINDS)}")
        if self.units not in UNITS:
            raise PredictionsError(f"{where}: units {self.units!r} is not one of {', '.join(UNITS)}")
        if self.order not in ORDERS:
            raise PredictionsError(f"{where}: order {self.order!r} is not one of {', '.join(ORDERS)}")
        unknown = sorted(set(self.columns) - set(CONTRACT_COLUMNS))
        if unknown:
            raise PredictionsError(
                f"{where}: columns maps unknown name(s) {unknown}; known: {', '.join(CONTRACT_COLUMNS)}"
            )
        for k in ("kappa", "smooth_kappa"):
            v = getattr(self, k)
            if v is not None and not (np.isfinite(v) and v > 0):
                raise PredictionsError(f"{where}: {k} must be a positive number, got {v}")


def prediction_spec_from_config(name: str, node: Mapping[str, Any]) -> PredictionSpec:
    """Build a :class:`PredictionSpec` from a config node (``models.external.<name>``).

    Keys: ``kind`` (required), ``units``, ``order``, ``columns``, ``partition``, ``partition_label``,
    ``predictions``, ``kappa``, ``smooth_kappa``.

    Raises:
        PredictionsError: Naming the model and the key on an unknown key or a bad value.
    """
    known = {"kind", "units", "order", "columns", "partition", "partition_label", "predictions", "kappa"}
    known.add("smooth_kappa")
    unknown = sorted(set(node) - known)
    if unknown:
        raise PredictionsError(f"models.external.{name}: unknown key(s) {unknown}; known: {sorted(known)}")
    if "kind" not in node:
        raise PredictionsError(f"models.external.{name}: missing key 'kind'")
    part = node.get("partition")
    kappa, smooth = node.get("kappa"), node.get("smooth_kappa")
    return PredictionSpec(
        name=name,
        kind=str(node["kind"]),
        units=str(node.get("units", "degrees")),
        order=str(node.get("order", "latlon")),
        columns={str(k): str(v) for k, v in dict(node.get("columns") or {}).items()},
        partition=None if part is None else Path(str(part)),
        partition_label=str(node.get("partition_label", "label")),
        predictions={str(k): str(v) for k, v in dict(node.get("predictions") or {}).items()},
        kappa=None if kappa is None else float(kappa),
        smooth_kappa=None if smooth is None else float(smooth),
    )


# --------------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PointPredictions:
    """One point per image (degrees)."""

    ids: list[str]
    lat: FloatArray
    lon: FloatArray


@dataclass(frozen=True)
class WeightedPoints:
    """Weighted points per image in CSR form (degrees; each image's weights sum to 1).

    Image ``i`` owns entries ``offsets[i]:offsets[i + 1]`` of ``lat``, ``lon`` and ``weight``.
    """

    ids: list[str]
    offsets: IntArray
    lat: FloatArray
    lon: FloatArray
    weight: FloatArray

    @property
    def image_of_point(self) -> IntArray:
        """The image (row) of each point."""
        out: IntArray = np.repeat(np.arange(len(self.ids), dtype=np.int64), np.diff(self.offsets))
        return out


@dataclass(frozen=True)
class CellPredictions:
    """Probabilities over a partition's classes (rows sum to 1)."""

    ids: list[str]
    probs: F32Array


Predictions = PointPredictions | WeightedPoints | CellPredictions


def rows_named(ids: Sequence[str], rows: npt.ArrayLike, line_offset: int | None = None) -> str:
    """Name the first offending rows: ``row i (image 'x')``, or ``line n`` with a CSV's line offset."""
    r = np.asarray(rows, dtype=np.int64)[:_N_EXAMPLES]
    if line_offset is None:
        return ", ".join(f"row {int(i)} (image {ids[int(i)]!r})" for i in r)
    return ", ".join(f"line {int(i) + line_offset} (image {ids[int(i)]!r})" for i in r)


# --------------------------------------------------------------------------------------------------
# Matching with the truth
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TruthMatch:
    """Predictions matched with the truth by image id.

    Attributes:
        pred_rows: Row of each matched image in the predictions (truth order).
        truth_rows: Row of each matched image in the truth.
        n_missing: Truth images without a prediction; ``missing`` names the first.
        n_extra: Predictions whose image is not in the truth; ``extra`` names the first.
    """

    pred_rows: IntArray
    truth_rows: IntArray
    n_missing: int
    n_extra: int
    missing: list[str]
    extra: list[str]

    def summary(self) -> dict[str, Any]:
        """Counts and examples for a JSON summary."""
        return {
            "n_matched": int(self.pred_rows.size),
            "n_missing_predictions": self.n_missing,
            "n_not_in_truth": self.n_extra,
            "missing_examples": self.missing,
            "not_in_truth_examples": self.extra,
        }


def align_to_truth(pred_ids: Sequence[str], truth_ids: Sequence[str], source: str | Path) -> TruthMatch:
    """Match predictions to truth ids; missing and extra ids are counted and logged, never dropped silently.

    Raises:
        PredictionsError: Naming ``source`` when no prediction matches a truth image.
    """
    truth = pd.Index(list(truth_ids))
    pos = truth.get_indexer(pd.Index(list(pred_ids)))
    matched = np.flatnonzero(pos >= 0)
    truth_rows = pos[matched].astype(np.int64)
    order = np.argsort(truth_rows, kind="stable")
    has = np.zeros(len(truth), bool)
    has[truth_rows] = True
    missing = [str(truth[i]) for i in np.flatnonzero(~has)[:_N_EXAMPLES]]
    extra = [str(pred_ids[i]) for i in np.flatnonzero(pos < 0)[:_N_EXAMPLES]]
    m = TruthMatch(
        matched[order].astype(np.int64),
        truth_rows[order],
        int((~has).sum()),
        int((pos < 0).sum()),
        missing,
        extra,
    )
    if m.pred_rows.size == 0:
        raise PredictionsError(
            f"{source}: none of {len(pred_ids)} predicted images is in the truth ({len(truth)})"
        )
    if m.n_missing:
        log.warning(
            "%s: %d of %d truth images have no prediction (scored as missing), e.g. %s",
            source,
            m.n_missing,
            len(truth),
            missing,
        )
    if m.n_extra:
        log.warning(
            "%s: %d predicted images are not in the truth (not scored), e.g. %s", source, m.n_extra, extra
        )
    return m
