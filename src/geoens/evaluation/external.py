"""External geolocators (DESIGN 11): points made into cell predictions, vMF densities, exact cap areas.

- **points / samples -> cells**: each point's weight goes to the cell of the pixel that contains it, i.e.
  where the partition's rasterisation sends that area (an absorbed cell owns no pixel, so its points land in
  the cell that owns their pixel; a point in a pixel of no cell is dropped, counted and logged). Optional
  vMF smoothing spreads each point's weight over every cell ``c`` as ``area_c * exp(kappa (x_c . y - 1))``
  normalised over the cells, ``x_c`` the area-weighted mean direction of the cell's pixels: the kernel
  ``exp(kappa cos(d / R))`` evaluated at cell centres and weighted by cell area, a midpoint rule whose error
  is small while the kernel's width ``R / sqrt(kappa)`` exceeds the cells.
- **point, distance ranking**: the truth's upper set is the cap of radius ``d`` (see
  :mod:`geoens.evaluation.pointmetrics`); on the grid, :func:`grid_cap_areas` is the area of the pixels whose
  centres lie within that angle.
- **point, density**: the vMF density around the point (:func:`vmf_cell_probs`), ``kappa`` fitted on val by
  maximum likelihood (:func:`fit_vmf_kappa`).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import numpy.typing as npt
import pandas as pd

from geoens.core.constants import GCD_RADIUS_KM
from geoens.core.grid import Grid, haversine_km, latlon_to_xyz
from geoens.core.types import F32Array, FloatArray
from geoens.data.predspec import PointPredictions, TruthMatch, WeightedPoints, align_to_truth
from geoens.evaluation.pointmetrics import point_cap_areas
from geoens.evaluation.testset import PER_IMAGE_COLUMNS

log = logging.getLogger(__name__)

#: Images per chunk of the dense ``images x cells`` conversions.
CHUNK_IMAGES = 1024


# --------------------------------------------------------------------------------------------------
# Single points scored by distance ranking
# --------------------------------------------------------------------------------------------------
def point_per_image(
    pred: PointPredictions,
    truth: pd.DataFrame,
    name: str,
    radius_km: float = GCD_RADIUS_KM,
    source: str = "predictions",
) -> tuple[pd.DataFrame, TruthMatch]:
    """Per-image table of a ``point`` model scored exactly by distance ranking (no grid, no masks).

    ``area_km2`` is the cap of radius ``d`` on a sphere of ``radius_km``; a truth image without a prediction
    gets the whole sphere and ``zero_prob`` (a miss at every budget), NaN top-1 and distance.

    Args:
        pred: The predictions (degrees).
        truth: ``image_id, lat, lon`` of the test images.
        name: The model's name (``base`` and ``method`` of its rows).
        radius_km: Sphere of distances and cap areas (GeoEstimation: 6371 km).
        source: Names the predictions in logs and errors.

    Returns:
        ``(per_image, match)``: rows in truth order, columns :data:`PER_IMAGE_COLUMNS`.
    """
    match = align_to_truth(pred.ids, truth["image_id"].astype(str).tolist(), source)
    n = len(truth)
    plat, plon = np.full(n, np.nan), np.full(n, np.nan)
    plat[match.truth_rows] = pred.lat[match.pred_rows]
    plon[match.truth_rows] = pred.lon[match.pred_rows]
    tlat, tlon = truth["lat"].to_numpy(np.float64), truth["lon"].to_numpy(np.float64)
    gcd = haversine_km(tlat, tlon, plat, plon, radius_km)
    frame = pd.DataFrame(
        {
            "image_id": truth["image_id"].astype(str).to_numpy(),
            "base": name,
            "method": name,
            "area_km2": point_cap_areas(gcd, radius_km),
            "zero_prob": np.isnan(gcd),
            "top1_lat": plat,
            "top1_lon": plon,
            "gcd_km": gcd,
            "ls_bucket": np.full(n, -1, np.int8),
        }
    )
    return frame[list(PER_IMAGE_COLUMNS)], match


def _angle(lat1: FloatArray, lon1: FloatArray, lat2: FloatArray, lon2: FloatArray) -> FloatArray:
    return haversine_km(lat1, lon1, lat2, lon2, 1.0)


def grid_cap_areas(
    pred_lat: npt.ArrayLike,
    pred_lon: npt.ArrayLike,
    truth_lat: npt.ArrayLike,
    truth_lon: npt.ArrayLike,
    grid: Grid,
) -> FloatArray:
    """Area of the pixels whose centres are within the prediction-truth angle of the prediction (km^2).

    Per row, the centres within angle ``t`` of the point ``(p0, l0)`` are the columns with
    ``cos(dl) >= (cos t - sin p sin p0) / (cos p cos p0)``: an interval of longitudes counted in closed form,
    so one image costs ``O(H)``.
    """
    plat, plon = np.asarray(pred_lat, np.float64), np.asarray(pred_lon, np.float64)
    t = _angle(plat, plon, np.asarray(truth_lat, np.float64), np.asarray(truth_lon, np.float64))
    rows = np.deg2rad(grid.lat_centers())
    row_area = grid.row_areas()
    step = 360.0 / grid.width
    out = np.empty(plat.size, np.float64)
    for a in range(0, plat.size, CHUNK_IMAGES):
        p0 = np.deg2rad(plat[a : a + CHUNK_IMAGES])[:, None]
        num = np.cos(t[a : a + CHUNK_IMAGES])[:, None] - np.sin(rows)[None, :] * np.sin(p0)
        den = np.cos(rows)[None, :] * np.cos(p0)
        with np.errstate(divide="ignore", invalid="ignore"):
            c = num / den
        c = np.where(den > 0, c, np.where(num <= 0, -1.0, 2.0))  # a pole: all or nothing
        dmax = np.rad2deg(np.arccos(np.clip(c, -1.0, 1.0)))
        # column centres sit at -180 + (j + 0.5) step: count j with |wrap(lon_j - l0)| <= dmax
        pos = (plon[a : a + CHUNK_IMAGES, None] + 180.0) / step - 0.5
        lo = np.ceil(pos - dmax / step)
        hi = np.floor(pos + dmax / step)
        count = np.where(c > 1.0, 0.0, np.minimum(hi - lo + 1.0, grid.width))
        out[a : a + CHUNK_IMAGES] = count @ row_area
    return out


# --------------------------------------------------------------------------------------------------
# The von Mises-Fisher kernel
# --------------------------------------------------------------------------------------------------
def vmf_mean_resultant(kappa: float) -> float:
    """``A(kappa) = coth(kappa) - 1 / kappa``: the expected cosine between a vMF draw and its mean (3-d)."""
    if kappa < 1e-4:
        return kappa / 3.0
    return 1.0 / math.tanh(kappa) - 1.0 / kappa


def fit_vmf_kappa(
    pred_lat: npt.ArrayLike, pred_lon: npt.ArrayLike, truth_lat: npt.ArrayLike, truth_lon: npt.ArrayLike
) -> float:
    """Maximum-likelihood ``kappa`` of a vMF around each prediction, from (val) truths.

    The log-likelihood ``n log(kappa / (4 pi sinh kappa)) + kappa sum cos(t_i)`` is maximal where
    ``A(kappa)`` equals the mean cosine; solved by bisection on ``log kappa`` (pairs with a NaN are left out).

    Raises:
        ValueError: With no usable pair, or a mean cosine <= 0 (no concentration to fit).
    """
    t = _angle(*(np.asarray(x, np.float64) for x in (pred_lat, pred_lon, truth_lat, truth_lon)))
    t = t[np.isfinite(t)]
    if t.size == 0:
        raise ValueError("fit_vmf_kappa: no prediction with a truth to fit on")
    rbar = float(np.mean(np.cos(t)))
    if rbar <= 0:
        raise ValueError(
            f"fit_vmf_kappa: mean cosine {rbar:.3g} <= 0: the predictions carry no concentration"
        )
    if rbar >= 1.0 - 1e-15:
        return 1e15
    lo, hi = math.log(1e-8), math.log(1e15)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if vmf_mean_resultant(math.exp(mid)) < rbar:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def sample_vmf(
    mean_lat: npt.ArrayLike, mean_lon: npt.ArrayLike, kappa: float, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    """One vMF draw around each mean direction (Wood's exact method for the sphere), degrees."""
    mu = latlon_to_xyz(mean_lat, mean_lon).reshape(-1, 3)
    n = mu.shape[0]
    u = rng.random(n)
    w = 1.0 + np.log(u + (1.0 - u) * np.exp(-2.0 * kappa)) / kappa  # cosine to the mean
    phi = rng.random(n) * 2.0 * np.pi
    helper = np.where(np.abs(mu[:, [0]]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    e1 = np.cross(mu, helper)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(mu, e1)
    s = np.sqrt(np.clip(1.0 - w**2, 0.0, None))[:, None]
    x = w[:, None] * mu + s * (np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2)
    lat = np.rad2deg(np.arcsin(np.clip(x[:, 2], -1.0, 1.0)))
    lon = np.rad2deg(np.arctan2(x[:, 1], x[:, 0]))
    return lat, lon


def vmf_cell_probs(
    lat: npt.ArrayLike, lon: npt.ArrayLike, kappa: float, cell_xyz: FloatArray, cell_area: FloatArray
) -> F32Array:
    """The vMF density around each point as cell probabilities: ``area_c exp(kappa (x_c . y - 1))``, summed 1.

    Args:
        lat: Point latitudes (degrees), one per image.
        lon: Point longitudes.
        kappa: Concentration (> 0).
        cell_xyz: ``cells x 3`` unit mean directions of the cells.
        cell_area: Area of each cell (0 for cells without pixels: they get nothing).

    Returns:
        ``images x cells`` float32 rows summing to 1 (a point far from every cell falls back to its
        nearest cell rather than underflowing to 0).
    """
    y = latlon_to_xyz(lat, lon).reshape(-1, 3)
    out = np.empty((y.shape[0], cell_xyz.shape[0]), np.float32)
    log_area = np.log(np.where(cell_area > 0, cell_area, np.nan))
    for a in range(0, y.shape[0], CHUNK_IMAGES):
        z = kappa * (y[a : a + CHUNK_IMAGES] @ cell_xyz.T) + log_area[None, :]
        z = np.where(np.isnan(z), -np.inf, z)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        out[a : a + CHUNK_IMAGES] = e / e.sum(axis=1, keepdims=True)
    return out


# --------------------------------------------------------------------------------------------------
# Points and samples -> cells
# --------------------------------------------------------------------------------------------------
def points_to_cells(
    points: WeightedPoints,
    point_cell: npt.ArrayLike,
    n_cells: int,
    smooth_kappa: float | None = None,
    cell_xyz: FloatArray | None = None,
    cell_area: FloatArray | None = None,
) -> F32Array:
    """Cell probabilities of weighted points: each point's weight to its cell, or vMF-smoothed.

    Args:
        points: The weighted points (CSR).
        point_cell: Cell of each point (the label of the pixel holding it; -1: no cell, weight dropped).
        n_cells: Cells of the partition.
        smooth_kappa: vMF smoothing (``None``: none); needs ``cell_xyz`` and ``cell_area``.
        cell_xyz: ``cells x 3`` mean directions (smoothing).
        cell_area: Cell areas (smoothing).

    Returns:
        ``images x cells`` float32; a row whose every point fell outside the cells is all zero (logged).
    """
    cell = np.asarray(point_cell, np.int64)
    img = points.image_of_point
    n = len(points.ids)
    out = np.zeros((n, n_cells), np.float32)
    if smooth_kappa is not None:
        if cell_xyz is None or cell_area is None:
            raise ValueError("points_to_cells: smoothing needs the cells' directions and areas")
        for a in range(0, points.lat.size, CHUNK_IMAGES):
            sl = slice(a, a + CHUNK_IMAGES)
            k = vmf_cell_probs(points.lat[sl], points.lon[sl], smooth_kappa, cell_xyz, cell_area)
            np.add.at(out, img[sl], k * points.weight[sl, None].astype(np.float32))
        return out
    ok = cell >= 0
    if not ok.all():
        log.warning("%d of %d point(s) fall in no cell of the partition: their weight is dropped",
                    int((~ok).sum()), cell.size)  # fmt: skip
    flat = np.bincount(img[ok] * n_cells + cell[ok], weights=points.weight[ok], minlength=n * n_cells)
    out[:] = flat.reshape(n, n_cells)
    empty = ~(out.sum(axis=1) > 0)
    if empty.any():
        log.warning("%d image(s) have no point in any cell: scored as P = 0 everywhere", int(empty.sum()))
    return out


def gallery_to_cells(weights: npt.ArrayLike, gallery_cell: npt.ArrayLike, n_cells: int) -> F32Array:
    """Cell probabilities of a fixed gallery's weights (GeoCLIP: a softmax over 100K GPS points).

    Args:
        weights: ``images x gallery`` weights (rows are normalised to sum 1 over the points in cells).
        gallery_cell: Cell of each gallery point (-1: none).
        n_cells: Cells of the partition.

    Returns:
        ``images x cells`` float32: the weights times the sparse ``gallery x cells`` one-hot matrix, by chunks
        of images (bench/bench_external.py: ~20x faster than a ``bincount`` per image).
    """
    import scipy.sparse  # deferred: scipy is needed only for gallery binning (it comes with reverse_geocoder)

    w = np.asarray(weights, np.float32)
    cell = np.asarray(gallery_cell, np.int64)
    keep = np.flatnonzero(cell >= 0)
    onehot = scipy.sparse.csr_matrix(
        (np.ones(keep.size, np.float32), (cell[keep], keep)), shape=(n_cells, cell.size)
    )
    out = np.empty((w.shape[0], n_cells), np.float32)
    for a in range(0, w.shape[0], CHUNK_IMAGES):
        out[a : a + CHUNK_IMAGES] = (onehot @ w[a : a + CHUNK_IMAGES].T).T
    tot = out.sum(axis=1, keepdims=True)
    np.divide(out, tot, out=out, where=tot > 0)
    return out
