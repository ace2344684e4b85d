"""The field's point metrics beside RvA (DESIGN 11): accuracy at radii, errors, GeoGuessr, RvA of caps.

Conventions, stated because published tables differ:

- accuracy at 1/25/200/750/2500 km counts ``d <= r`` (GeoEstimation, GeoCLIP) by default, ``d < r`` with
  ``strict_less`` (OSV-5M, PIGEON, G3); ``d`` is the haversine distance on a sphere of ``radius_km``
  (GeoEstimation: 6371 km);
- GeoGuessr score ``5000 * exp(-d / 1492.7)`` (d in km), averaged over images;
- a single point ranks the sphere by distance, so the truth's upper set is the cap of radius ``d``: its
  area-to-hit is ``2 pi R^2 (1 - cos(d / R))`` (:func:`point_cap_areas`), and RvA at the cap area of ``r``
  equals accuracy at ``r`` (``<=``), both computed on the same sphere;
- an image of the truth without a prediction is a miss everywhere (area = the sphere, distance NaN) and is
  counted (``n_missing``); median and mean error are over the predicted images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from geoens.core.constants import GCD_RADIUS_KM, GCD_THRESHOLDS_KM, GEOGUESSR_MAX_SCORE, GEOGUESSR_SCALE_KM
from geoens.core.types import BoolArray, FloatArray
from geoens.evaluation.metrics import recall_at


def _radius_tag(r: float) -> str:
    return f"{r:g}km"


#: Columns of a point-metric summary row (:func:`point_summary`), in table order.
POINT_SUMMARY_COLUMNS: tuple[str, ...] = (
    "n",
    "n_missing",
    *(f"acc_{_radius_tag(r)}" for r in GCD_THRESHOLDS_KM),
    "median_km",
    "mean_km",
    "geoguessr",
    "country_acc",
    *(f"rva_{_radius_tag(r)}" for r in GCD_THRESHOLDS_KM),
    "median_rva_km2",
)


def _caps(r_km: FloatArray, radius_km: float) -> FloatArray:
    """Cap areas ``2 pi R^2 (1 - cos(r / R)) = 4 pi R^2 sin^2(r / 2R)``; ``r >= pi R``: the sphere.

    The sine form keeps full relative precision for small ``r`` (``1 - cos`` cannot tell 1 km from 1 km
    plus 1 mm), so the cap of ``d`` is below the cap of ``r`` exactly when ``d < r``.
    """
    whole = 4.0 * math.pi * radius_km**2
    with np.errstate(invalid="ignore"):
        out = whole * np.sin(np.minimum(r_km, math.pi * radius_km) / (2.0 * radius_km)) ** 2
    res: FloatArray = np.where(r_km < math.pi * radius_km, out, whole)
    return res


def point_cap_areas(gcd_km: npt.ArrayLike, radius_km: float = GCD_RADIUS_KM) -> FloatArray:
    """Area-to-hit of single-point predictions: the cap of radius ``d`` (NaN distance: the whole sphere)."""
    d = np.asarray(gcd_km, dtype=np.float64)
    return _caps(np.where(np.isnan(d), np.inf, d), radius_km)


def cap_budgets(
    radius_km: float = GCD_RADIUS_KM, radii_km: Sequence[float] = GCD_THRESHOLDS_KM
) -> FloatArray:
    """The RvA budgets: cap areas of the usual radii on a sphere of ``radius_km``."""
    return _caps(np.asarray(radii_km, dtype=np.float64), radius_km)


def accuracy_at(
    gcd_km: npt.ArrayLike, radii_km: Sequence[float] = GCD_THRESHOLDS_KM, strict_less: bool = False
) -> FloatArray:
    """Share of images with ``d <= r`` (or ``d < r`` with ``strict_less``) per radius; NaN is a miss."""
    d = np.asarray(gcd_km, dtype=np.float64)
    if d.size == 0:
        return np.full(len(radii_km), np.nan)
    d = np.where(np.isnan(d), np.inf, d)
    r = np.asarray(radii_km, dtype=np.float64)
    hit = d[:, None] < r[None, :] if strict_less else d[:, None] <= r[None, :]
    out: FloatArray = hit.mean(axis=0)
    return out


def geoguessr_score(gcd_km: npt.ArrayLike) -> FloatArray:
    """GeoGuessr's score per image, ``5000 * exp(-d / 1492.7)`` (NaN distance: 0)."""
    d = np.asarray(gcd_km, dtype=np.float64)
    out: FloatArray = np.where(np.isnan(d), 0.0, GEOGUESSR_MAX_SCORE * np.exp(-d / GEOGUESSR_SCALE_KM))
    return out


def point_summary(
    gcd_km: npt.ArrayLike,
    area_km2: npt.ArrayLike,
    budgets_km2: npt.ArrayLike,
    strict_less: bool = False,
    same_country: BoolArray | None = None,
) -> dict[str, float]:
    """One summary row (:data:`POINT_SUMMARY_COLUMNS`): fractions, not percent.

    Args:
        gcd_km: Distance of each truth image's prediction (NaN: no prediction, a miss).
        area_km2: Area-to-hit of each image (Alg. 3, or :func:`point_cap_areas`).
        budgets_km2: The five RvA budgets (:func:`cap_budgets` for caps on the same sphere).
        strict_less: Count ``d < r`` instead of ``d <= r``.
        same_country: Per image, whether prediction and truth fall in the same country (``None``: NaN).

    Returns:
        Column -> value; ``median_km``/``mean_km`` over predicted images, ``median_rva_km2`` over all.
    """
    d = np.asarray(gcd_km, dtype=np.float64)
    a = np.asarray(area_km2, dtype=np.float64)
    have = ~np.isnan(d)
    row: dict[str, float] = {"n": float(d.size), "n_missing": float((~have).sum())}
    for r, acc in zip(GCD_THRESHOLDS_KM, accuracy_at(d, GCD_THRESHOLDS_KM, strict_less), strict=True):
        row[f"acc_{_radius_tag(r)}"] = float(acc)
    row["median_km"] = float(np.median(d[have])) if have.any() else math.nan
    row["mean_km"] = float(np.mean(d[have])) if have.any() else math.nan
    row["geoguessr"] = float(np.mean(geoguessr_score(d))) if d.size else math.nan
    row["country_acc"] = math.nan if same_country is None else float(np.mean(same_country))
    for r, rec in zip(GCD_THRESHOLDS_KM, recall_at(a, budgets_km2), strict=True):
        row[f"rva_{_radius_tag(r)}"] = float(rec)
    row["median_rva_km2"] = float(np.median(np.where(np.isnan(a), np.inf, a))) if a.size else math.nan
    return row
