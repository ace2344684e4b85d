"""Metrics of the per-image table: recall at area budgets (RvA), GCD accuracy, balanced sets, bootstrap.

:func:`summarise` gives, per method, the recall at the five cap areas and the GCD accuracy at the five
radii with paired bootstrap 95% intervals (the same resamples for every method), and the RvA curves;
:func:`bucket_recall` the recall per ground-truth LS bucket.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from geoens.core.constants import CAP_AREAS_KM2, EARTH_RADIUS_KM, GCD_THRESHOLDS_KM, LS_BUCKETS
from geoens.core.types import F32Array, FloatArray, IntArray
from geoens.evaluation.methods import method_order
from geoens.evaluation.testset import PER_IMAGE_COLUMNS


def recall_at(areas: npt.ArrayLike, alphas: npt.ArrayLike) -> FloatArray:
    """``recall(alpha)``: share of images with ``area <= alpha``, per alpha (NaN areas are misses)."""
    a = np.asarray(areas, dtype=np.float64)
    al = np.asarray(alphas, dtype=np.float64)
    if a.size == 0:
        return np.full(al.shape, np.nan)
    s = np.sort(np.where(np.isnan(a), np.inf, a))
    return np.searchsorted(s, al, side="right") / a.size


def gcd_accuracy(gcd_km: npt.ArrayLike, thresholds: npt.ArrayLike = GCD_THRESHOLDS_KM) -> FloatArray:
    """Share of images with distance ``<= threshold`` (NaN distances count as misses)."""
    return recall_at(gcd_km, thresholds)


def curve_alphas(n: int = 200, lo: float = 1.0, hi: float | None = None) -> FloatArray:
    """Log-spaced area budgets (km^2) from ``lo`` to the area of the sphere, for RvA curves."""
    top = hi if hi is not None else 4.0 * math.pi * EARTH_RADIUS_KM**2
    return np.logspace(math.log10(lo), math.log10(top), n)


def balanced_sample(
    buckets: npt.ArrayLike, seed: int, n_buckets: int = len(LS_BUCKETS)
) -> tuple[IntArray, list[int]]:
    """Draw a balanced subset: the same number of images from every ground-truth LS bucket.

    ``min`` of the non-empty buckets' counts is drawn without replacement from each non-empty bucket
    (seeded); images with no bucket (-1) leave the set. Returned indices are sorted.

    Returns:
        ``(indices, counts per bucket before balancing)``.

    """
    b = np.asarray(buckets, dtype=np.int64)
    counts = [int((b == k).sum()) for k in range(n_buckets)]
    nonempty = [c for c in counts if c > 0]
    if not nonempty:
        return np.zeros(0, np.int64), counts
    m = min(nonempty)
    rng = np.random.default_rng(seed)
    pick = [rng.choice(np.flatnonzero(b == k), size=m, replace=False) for k in range(n_buckets) if counts[k]]
    return np.sort(np.concatenate(pick)).astype(np.int64), counts


def bootstrap_weights(n: int, n_boot: int, seed: int) -> F32Array:
    """``n_boot x n`` resampling counts (each row a bootstrap resample of ``n`` images), seeded."""
    rng = np.random.default_rng(seed)
    w = np.zeros((n_boot, n), dtype=np.float32)  # integer counts: exact in float32 below 2**24
    for k in range(n_boot):
        w[k] = np.bincount(rng.integers(0, n, size=n), minlength=n)
    return w


def bootstrap_ci(
    hits: npt.ArrayLike, weights: F32Array, level: float = 0.95
) -> tuple[FloatArray, FloatArray]:
    """Percentile bootstrap interval of the mean of each column of ``hits`` (``n x k`` values in {-1, 0, 1}).

    The weighted sums are integers, exact in float32 below ``2**24`` images.
    """
    h = np.asarray(hits, dtype=np.float32)
    if weights.shape[0] == 0 or h.shape[0] == 0:
        nan = np.full(h.shape[1:], np.nan)
        return nan, nan.copy()
    stats = (weights @ h).astype(np.float64) / h.shape[0]
    q = (1.0 - level) / 2.0
    return np.quantile(stats, q, axis=0), np.quantile(stats, 1.0 - q, axis=0)


@dataclass
class Summary:
    """Metrics of one test set and kind (original or balanced).

    Attributes:
        table: One row per method: ``base, method, n`` and, per metric, value / ``_lo`` / ``_hi`` (fractions).
        curves: Long table ``base, method, alpha, recall, lo, hi`` (RvA curves with bootstrap bands).
        bucket_counts: Images per LS bucket before balancing.
        n_images: Images in the set.

    """

    table: pd.DataFrame
    curves: pd.DataFrame
    bucket_counts: list[int]
    n_images: int


def metric_names() -> list[str]:
    """Column names of the table metrics: RvA at the five caps, then GCD accuracy at the five thresholds."""
    return [f"rva_{int(r)}km" for r in GCD_THRESHOLDS_KM] + [f"gcd_{int(r)}km" for r in GCD_THRESHOLDS_KM]


def image_positions(
    per_image: pd.DataFrame, balanced: bool, balanced_seed: int
) -> tuple[pd.Series, list[int]]:
    """The evaluated images and the images per ground-truth LS bucket before balancing.

    Returns:
        ``(position of each image id, counts)``: the images sorted by id, restricted to the balanced set
        (:func:`balanced_sample`, seeded by ``balanced_seed``) when ``balanced``.

    """
    images = (
        per_image.drop_duplicates("image_id")[["image_id", "ls_bucket"]]
        .sort_values("image_id")
        .reset_index(drop=True)
    )
    counts = [int((images["ls_bucket"] == k).sum()) for k in range(len(LS_BUCKETS))]
    if balanced:
        idx, counts = balanced_sample(images["ls_bucket"].to_numpy(), balanced_seed)
        images = images.iloc[idx].reset_index(drop=True)
    return pd.Series(np.arange(len(images)), index=images["image_id"].to_numpy()), counts


def method_rows(per_image: pd.DataFrame, method: str, pos: pd.Series) -> pd.DataFrame:
    """The rows of one method for the images of ``pos`` (:func:`image_positions`), in that order."""
    sub = per_image[(per_image["method"] == method) & per_image["image_id"].isin(pos.index)]
    return sub.iloc[np.argsort(pos[sub["image_id"]].to_numpy())]


def summarise(
    per_image: pd.DataFrame,
    balanced: bool,
    n_boot: int,
    seed: int,
    balanced_seed: int,
    alphas: FloatArray | None = None,
) -> Summary:
    """Recall at the cap areas, GCD accuracy, RvA curves, all with paired bootstrap 95% intervals.

    Args:
        per_image: The per-image table of one test set.
        balanced: Restrict to the balanced set (equal images per ground-truth LS bucket).
        n_boot: Bootstrap resamples (0: no intervals).
        seed: Bootstrap seed (the same resamples for every method, so differences are paired).
        balanced_seed: Seed of the balanced sampling.
        alphas: Area budgets of the curves (default :func:`curve_alphas`).

    """
    missing = [c for c in PER_IMAGE_COLUMNS if c not in per_image.columns]
    if missing:
        raise ValueError(f"per-image table: missing column(s) {missing}")
    al = alphas if alphas is not None else curve_alphas()
    pos, counts = image_positions(per_image, balanced, balanced_seed)
    n = len(pos)
    w = bootstrap_weights(n, n_boot, seed)
    caps = np.asarray(CAP_AREAS_KM2)
    thr = np.asarray(GCD_THRESHOLDS_KM)
    names = metric_names()
    rows, curves = [], []
    bases = list(dict.fromkeys(per_image["base"]))
    for method in [m for m in method_order(bases, distance=True) if m in set(per_image["method"])]:
        sub = method_rows(per_image, method, pos)
        if len(sub) != n:
            raise ValueError(f"per-image table: method {method!r} has {len(sub)} of {n} images")
        area = sub["area_km2"].to_numpy(np.float64)
        area = np.where(np.isnan(area), np.inf, area)
        gcd = sub["gcd_km"].to_numpy(np.float64)
        gcd = np.where(np.isnan(gcd), np.inf, gcd)
        has_area = not np.all(np.isinf(area))
        hits = np.concatenate([area[:, None] <= caps[None, :], gcd[:, None] <= thr[None, :]], axis=1)
        val = hits.mean(axis=0) if n else np.full(hits.shape[1], np.nan)
        lo, hi = bootstrap_ci(hits, w)
        row: dict[str, object] = {"base": sub["base"].iloc[0] if n else "", "method": method, "n": n}
        row["zero_prob"] = float(sub["zero_prob"].mean()) if n else np.nan
        for k, name in enumerate(names):
            is_rva = name.startswith("rva")
            row[name] = val[k] if (has_area or not is_rva) else np.nan
            row[name + "_lo"] = lo[k] if (has_area or not is_rva) else np.nan
            row[name + "_hi"] = hi[k] if (has_area or not is_rva) else np.nan
        rows.append(row)
        if has_area:
            ch = area[:, None] <= al[None, :]
            clo, chi = bootstrap_ci(ch, w)
            curves.append(
                pd.DataFrame(
                    {
                        "base": row["base"],
                        "method": method,
                        "alpha": al,
                        "recall": ch.mean(axis=0) if n else np.nan,
                        "lo": clo,
                        "hi": chi,
                    }
                )
            )
    cur = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    return Summary(pd.DataFrame(rows), cur, counts, n)


def bucket_recall(per_image: pd.DataFrame, caps: Sequence[float] = CAP_AREAS_KM2) -> pd.DataFrame:
    """Recall at the cap areas per ground-truth LS bucket and method (long table, fractions)."""
    rows = []
    df = per_image[per_image["area_km2"].notna()]
    for key, sub in df.groupby(["method", "ls_bucket"], sort=False):
        method, bucket = str(key[0]), int(str(key[1]))
        if bucket < 0:
            continue
        rec = recall_at(sub["area_km2"].to_numpy(), caps)
        for r, c, v in zip(GCD_THRESHOLDS_KM, caps, rec, strict=True):
            rows.append(
                {
                    "base": sub["base"].iloc[0],
                    "method": method,
                    "bucket": LS_BUCKETS[bucket],
                    "radius_km": r,
                    "cap_km2": c,
                    "recall": v,
                    "n": len(sub),
                }
            )
    return pd.DataFrame(rows)
