"""The downstream question: for one image and an area budget, which regions to search, best first.

Atoms are ranked by the ensembled score ``P`` (Algorithms 1-2); atoms with the same ``P`` form one *rank
group* (they are equally likely per unit area and are searched together). Groups are taken in decreasing
``P`` while the cumulative area stays within the budget; atoms with ``P = 0`` are never proposed. With the
budget set to an image's Alg. 3 area, the selection contains the ground truth, so the RvA curve is exactly
the recall of these search plans.

Outputs: a table of rank groups, a GeoTIFF of the rank of each pixel (0 = not selected) and a GeoJSON
FeatureCollection with one (Multi)Polygon per rank group, polygons traced on the pixel grid.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import rasterio
from affine import Affine
from rasterio import features
from rasterio.io import MemoryFile
from rasterio.shutil import copy as rio_copy
from shapely.geometry import mapping, shape
from shapely.ops import unary_union

from geoens.core.constants import EARTH_RADIUS_KM, FAMILIES, INDEX_IN_MEMORY_MAX_PIXELS, LS_BUCKETS, N_CLASSES
from geoens.core.grid import Grid
from geoens.core.io import atomic_path, read_json
from geoens.core.types import BoolArray, FloatArray, I32Array
from geoens.evaluation.calibrate import CalMethod, method_scores, method_slug, threshold_of
from geoens.evaluation.conformal import region_counts, upper_sets
from geoens.evaluation.evaluator import Evaluator
from geoens.evaluation.methods import absorb, family_scores, normalise_probs
from geoens.evaluation.shiftcal import mix_threshold, read_val_scores
from geoens.evaluation.testset import read_absorption
from geoens.geo.atoms import AtomTable, read_atom_index, read_atoms
from geoens.geo.lookup import PixelLookup, TiledPixelLookup, open_pixel_lookup
from geoens.reports.landmap import draw_coastline, shade_land


def atom_scores(
    atoms: AtomTable,
    probs_by_family: Mapping[str, npt.ArrayLike],
    absorption: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
) -> FloatArray:
    """Ensembled score ``P`` of every atom for one image (Alg. 1-2, fixed family order).

    Args:
        atoms: The atom table.
        probs_by_family: Family (``s2``, ``ls``, ``lc``) -> the image's probability vector; the families
            given are the method (``s2`` alone is the base model).
        absorption: ``(cells, targets)`` of absorbed S2 cells.

    Raises:
        ValueError: On an unknown family or a wrong number of classes.

    """
    unknown = set(probs_by_family) - set(FAMILIES)
    if unknown or not probs_by_family:
        raise ValueError(f"probs_by_family: families must be among {FAMILIES}, got {sorted(probs_by_family)}")
    P = np.ones(atoms.n, dtype=np.float64)
    first = True
    for f in FAMILIES:
        if f not in probs_by_family:
            continue
        p = normalise_probs(np.asarray(probs_by_family[f])[None, :], what=f"{f} probabilities")
        n = p.shape[1]
        if f in N_CLASSES and n != N_CLASSES[f]:
            raise ValueError(f"{f} probabilities: {n} classes, expected {N_CLASSES[f]}")
        if f == "s2" and absorption is not None:
            p = absorb(p, *absorption)
        sc = family_scores(p, atoms.class_areas(f, n))[0]
        lab = atoms.labels[f]
        vals = sc[np.where(lab < 0, n, lab)]
        P = vals.copy() if first else P * vals
        first = False
    return P


def search_regions(
    atoms: AtomTable,
    atom_index: npt.NDArray[np.integer] | None,
    probs_by_family: Mapping[str, npt.ArrayLike],
    budget_km2: float,
    absorption: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    n_pixels: npt.ArrayLike | None = None,
) -> pd.DataFrame:
    """Ranked regions to search within ``budget_km2``.

    Args:
        atoms: The atom table.
        atom_index: ``H x W`` atom ids (to count pixels per region), or ``None``.
        probs_by_family: Family -> the image's probability vector (see :func:`atom_scores`).
        budget_km2: Area budget (km^2).
        absorption: ``(cells, targets)`` of absorbed S2 cells.
        n_pixels: Pixels per atom (the atom table's ``n_pixels``), used instead of counting ``atom_index``.

    Returns:
        One row per rank group, best first: ``rank`` (1..), ``prob`` (``P``), ``area_km2``,
        ``cum_area_km2``, ``n_atoms``, ``n_pixels`` (-1 without ``atom_index``), ``atoms`` (list of ids);
        ``attrs["first_group_km2"]`` is the area of the most likely rank group, the smallest budget that
        returns a region.

    Raises:
        ValueError: If the budget is negative or not finite.

    """
    if not np.isfinite(budget_km2) or budget_km2 < 0:
        raise ValueError(f"budget_km2 must be a finite area >= 0, got {budget_km2}")
    P = atom_scores(atoms, probs_by_family, absorption)
    pos = np.flatnonzero(P > 0)
    vals, inv = np.unique(-P[pos], return_inverse=True)  # groups in decreasing P
    area = np.bincount(inv, weights=atoms.area[pos], minlength=vals.size)
    cum = np.cumsum(area)
    k = int(np.searchsorted(cum, budget_km2, side="right"))
    order = np.argsort(inv, kind="stable")
    start = np.concatenate([[0], np.cumsum(np.bincount(inv, minlength=vals.size))])
    if n_pixels is not None:
        npx: npt.NDArray[np.int64] | None = np.asarray(n_pixels, dtype=np.int64)
    else:
        npx = np.bincount(atom_index.ravel(), minlength=atoms.n) if atom_index is not None else None
    rows = []
    for g in range(k):
        ids = pos[order[start[g] : start[g + 1]]]
        rows.append(
            {
                "rank": g + 1,
                "prob": float(-vals[g]),
                "area_km2": float(area[g]),
                "cum_area_km2": float(cum[g]),
                "n_atoms": int(ids.size),
                "n_pixels": int(npx[ids].sum()) if npx is not None else -1,
                "atoms": ids.tolist(),
            }
        )
    cols = ["rank", "prob", "area_km2", "cum_area_km2", "n_atoms", "n_pixels", "atoms"]
    out = pd.DataFrame(rows, columns=cols)
    # the smallest budget that returns a region (inf when every atom has P = 0)
    out.attrs["first_group_km2"] = float(cum[0]) if cum.size else math.inf
    return out


def rank_raster(regions: pd.DataFrame, atom_index: npt.NDArray[np.integer], n_atoms: int) -> I32Array:
    """``H x W`` int32 raster of each pixel's rank group (0 = not selected)."""
    ranks: npt.NDArray[np.int32] = _rank_of_atom(regions, n_atoms)[atom_index]
    return ranks


def _rank_of_atom(regions: pd.DataFrame, n_atoms: int) -> I32Array:
    """Rank group of each atom (0 = not selected)."""
    rank_of_atom = np.zeros(n_atoms, dtype=np.int32)
    for rank, ids in zip(regions["rank"], regions["atoms"], strict=True):
        rank_of_atom[np.asarray(ids, dtype=np.int64)] = int(rank)
    return rank_of_atom


def write_geotiff(path: str | Path, ranks: I32Array, grid: Grid) -> None:
    """Write the rank raster as a tiled, deflate-compressed int32 GeoTIFF (EPSG:4326, nodata 0)."""
    profile = {
        "driver": "GTiff", "height": grid.height, "width": grid.width, "count": 1, "dtype": "int32",
        "crs": "EPSG:4326", "transform": grid.transform, "nodata": 0, "compress": "deflate",
    }  # fmt: skip
    if grid.width >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(ranks.astype(np.int32), 1)
        dst.update_tags(meaning="rank group of the search plan, 1 = most likely; 0 = not selected")


def region_features(regions: pd.DataFrame, ranks: I32Array, grid: Grid) -> dict[str, object]:
    """GeoJSON FeatureCollection: one (Multi)Polygon per rank group, traced on the pixel grid."""
    sel = ranks > 0
    if sel.any():
        rows = np.flatnonzero(sel.any(axis=1))
        cols = np.flatnonzero(sel.any(axis=0))
        sub = ranks[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        return window_features(regions, sub, int(rows[0]), int(cols[0]), grid)
    return window_features(regions, ranks[:0, :0], 0, 0, grid)


def window_features(
    regions: pd.DataFrame, sub: I32Array, row0: int, col0: int, grid: Grid
) -> dict[str, object]:
    """:func:`region_features` from the window of the rank raster that holds every selected pixel."""
    polys: dict[int, list[object]] = {}
    if sub.size:
        t = grid.transform
        tr = Affine(t.a, 0.0, t.c + col0 * t.a, 0.0, t.e, t.f + row0 * t.e)
        for geom, value in features.shapes(sub, mask=sub > 0, transform=tr, connectivity=4):
            polys.setdefault(int(value), []).append(shape(geom))
    feats = []
    for rec in regions.to_dict("records"):
        rank = int(rec["rank"])
        parts = polys.get(rank, [])
        if not parts:
            continue
        props = {
            "rank": rank,
            "prob": float(rec["prob"]),
            "area_km2": float(rec["area_km2"]),
            "cum_area_km2": float(rec["cum_area_km2"]),
            "n_atoms": int(rec["n_atoms"]),
        }
        feats.append({"type": "Feature", "geometry": mapping(unary_union(parts)), "properties": props})
    return {"type": "FeatureCollection", "features": feats}


def write_geojson(path: str | Path, regions: pd.DataFrame, ranks: I32Array, grid: Grid) -> None:
    """Write :func:`region_features` as GeoJSON (lon/lat, EPSG:4326)."""
    _write_feature_collection(path, region_features(regions, ranks, grid))


def _write_feature_collection(path: str | Path, fc: dict[str, object]) -> None:
    """Write a GeoJSON FeatureCollection compactly, one line."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(fc, separators=(",", ":")) + "\n", encoding="utf-8")


def plan_search(
    atoms_path: str | Path,
    atom_index_path: str | Path,
    absorption_path: str | Path | None,
    probs_by_family: Mapping[str, npt.ArrayLike],
    budget_km2: float,
    out_geojson: str | Path | None = None,
    out_tif: str | Path | None = None,
    earth_radius_km: float | None = None,
    index_max_pixels: int | None = None,
) -> pd.DataFrame:
    """Search plan of one image from the workflow's artifacts, optionally written as GeoJSON / GeoTIFF.

    Args:
        atoms_path: ``results/atoms/atoms.parquet``.
        atom_index_path: ``results/atoms/atom_index.tif``.
        absorption_path: ``results/masks/s2_absorption.parquet`` (or ``None``: no absorption).
        probs_by_family: Family -> the image's probability vector (e.g. a row of a predictions Parquet).
        budget_km2: Area budget (km^2).
        out_geojson: Where to write the regions as GeoJSON.
        out_tif: Where to write the rank raster as GeoTIFF.
        earth_radius_km: Sphere radius of the grid (default: the project's).
        index_max_pixels: Largest grid whose atom index is read whole (default
            :data:`~geoens.core.constants.INDEX_IN_MEMORY_MAX_PIXELS`); larger ones are read by strips.

    Returns:
        The ranked regions (:func:`search_regions`).

    """
    atoms = read_atoms(atoms_path)
    absorption = read_absorption(absorption_path) if absorption_path is not None else None
    lookup = open_pixel_lookup(
        atom_index_path, atoms_path, atoms.n, earth_radius_km or EARTH_RADIUS_KM,
        INDEX_IN_MEMORY_MAX_PIXELS if index_max_pixels is None else index_max_pixels,
    )  # fmt: skip
    if isinstance(lookup, TiledPixelLookup):  # the 1 km grid: strips of the index, never all of it
        regions = search_regions(atoms, None, probs_by_family, budget_km2, absorption, lookup.n_pixels)
        if out_geojson is not None or out_tif is not None:
            _write_windowed(regions, lookup, atoms.n, out_geojson, out_tif)
        return regions
    index = lookup.atom_index
    grid = lookup.grid
    regions = search_regions(atoms, index, probs_by_family, budget_km2, absorption)
    if out_geojson is not None or out_tif is not None:
        ranks = rank_raster(regions, index, atoms.n)
        if out_tif is not None:
            write_geotiff(out_tif, ranks, grid)
        if out_geojson is not None:
            write_geojson(out_geojson, regions, ranks, grid)
    return regions


def _write_windowed(
    regions: pd.DataFrame,
    lookup: TiledPixelLookup,
    n_atoms: int,
    out_geojson: str | Path | None,
    out_tif: str | Path | None,
    strip_rows: int = 1024,
) -> None:
    """Rank GeoTIFF and GeoJSON from strips of a tiled atom index (bounded memory at the 1 km grid)."""
    grid = lookup.grid
    rank_of_atom = _rank_of_atom(regions, n_atoms)
    r_lo, r_hi, c_lo, c_hi = grid.height, -1, grid.width, -1
    profile = {
        "driver": "GTiff", "height": grid.height, "width": grid.width, "count": 1, "dtype": "int32",
        "crs": "EPSG:4326", "transform": grid.transform, "nodata": 0, "compress": "deflate", "tiled": True,
        "blockxsize": 256, "blockysize": 256, "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    with contextlib.ExitStack() as stack:
        dst = None
        if out_tif is not None:
            tmp = stack.enter_context(atomic_path(out_tif))
            dst = stack.enter_context(rasterio.open(tmp, "w", **profile))
        for a in range(0, grid.height, strip_rows):
            b = min(grid.height, a + strip_rows)
            ranks = rank_of_atom[lookup.read_rows(a, b)]
            sel = ranks > 0
            if sel.any():
                rows, cols = np.flatnonzero(sel.any(axis=1)), np.flatnonzero(sel.any(axis=0))
                r_lo, r_hi = min(r_lo, a + int(rows[0])), max(r_hi, a + int(rows[-1]))
                c_lo, c_hi = min(c_lo, int(cols[0])), max(c_hi, int(cols[-1]))
            if dst is not None:
                dst.write(ranks, 1, window=rasterio.windows.Window(0, a, grid.width, b - a))
        if dst is not None:
            dst.update_tags(meaning="rank group of the search plan, 1 = most likely; 0 = not selected")
    if out_geojson is None:
        return
    if r_hi < 0:
        fc = window_features(regions, np.zeros((0, 0), np.int32), 0, 0, grid)
    else:
        win = rasterio.windows.Window(c_lo, r_lo, c_hi - c_lo + 1, r_hi - r_lo + 1)
        with rasterio.open(lookup.path) as ds:
            sub = rank_of_atom[ds.read(1, window=win)]
        fc = window_features(regions, sub, r_lo, c_lo, grid)
    _write_feature_collection(out_geojson, fc)


# --------------------------------------------------------------------------------------------------
# Calibrated regions (``geoens search --coverage``, DESIGN section 9)
# --------------------------------------------------------------------------------------------------
#: ``--region`` choices: the calibrated kind, optionally per predicted LS bucket (Mondrian).
COVERAGE_REGIONS: tuple[str, ...] = ("adaptive", "fixed", "adaptive-bucket", "fixed-bucket")


def attributes_suffix(families: list[str]) -> str:
    """Variant suffix of an ensemble of the base with attribute families (``["ls", "lc"]`` -> ``+LS+LC``)."""
    return "".join(f"+{f.upper()}" for f in ("ls", "lc") if f in families)


def coverage_region(
    atoms: AtomTable,
    atom_index: npt.NDArray[np.integer],
    probs_by_family: Mapping[str, npt.ArrayLike],
    calibration: Mapping[str, Any],
    level: float,
    region: str = "adaptive",
    ls_probs: npt.ArrayLike | None = None,
    absorption: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    earth_radius_km: float | None = None,
    threshold: float | None = None,
) -> tuple[pd.DataFrame, float]:
    """The calibrated region of one image: whole upper sets within the calibrated area or mass.

    The region is computed on the same atom groups and with the same upper-set arithmetic as the workflow's
    calibration (:mod:`geoens.evaluation.calibrate`), so it contains the truth exactly when the image's own
    score is within the threshold.

    Args:
        atoms: The atom table.
        atom_index: ``H x W`` atom ids.
        probs_by_family: Family -> the image's probabilities; the families given must be the calibrated
            method's (``s2`` plus its attributes).
        calibration: The method's record (``results/calibration/<slug>.json``).
        level: Nominal coverage, one of the calibrated levels.
        region: One of :data:`COVERAGE_REGIONS`.
        ls_probs: The image's LS probabilities (needed for the per-bucket regions).
        absorption: ``(cells, targets)`` of absorbed S2 cells.
        earth_radius_km: Sphere radius of the grid.
        threshold: Use this threshold instead of the record's (a shift-corrected one, ``--mix``).

    Returns:
        ``(rank groups as search_regions returns them, plus cum_mass; the threshold used)``.

    Raises:
        ValueError: On an unknown region kind, an uncalibrated level, or a missing LS vector.

    """
    if region not in COVERAGE_REGIONS:
        raise ValueError(f"--region must be one of {', '.join(COVERAGE_REGIONS)}, got {region!r}")
    kind, per_bucket = region.split("-")[0], region.endswith("-bucket")
    bucket = None
    if per_bucket:
        if ls_probs is None:
            raise ValueError(f"region {region!r} needs the image's LS probabilities")
        bucket = int(np.argmax(np.asarray(ls_probs, dtype=np.float64)))
    thr = threshold_of(calibration, kind, level, bucket) if threshold is None else float(threshold)
    fams = tuple(f for f in FAMILIES if f in probs_by_family)
    grid = Grid(atom_index.shape[0], atom_index.shape[1], earth_radius_km or EARTH_RADIUS_KM)
    s2 = np.asarray(probs_by_family["s2"])
    cells, targets = absorption if absorption is not None else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    ev = Evaluator(
        atoms,
        {"s2": int(s2.size), **N_CLASSES},
        PixelLookup(np.asarray(atom_index, dtype=np.int32), grid),
        grid.total_area(),
        (np.asarray(cells, np.int64), np.asarray(targets, np.int64)),
    )
    sc = ev.scores({f: np.asarray(probs_by_family[f])[None, :] for f in fams})
    method = CalMethod(str(calibration.get("base", "")), "", fams)
    g, P = method_scores(ev, method, sc)
    us = upper_sets(P, g.area)
    c = region_counts(us, kind, np.array([thr]))
    chosen = us.order[0, : int(c[0])]
    p_sorted = us.p_sorted[0, : int(c[0])]
    vals, start = np.unique(-p_sorted, return_index=True)  # rank groups: equal P, decreasing
    bounds = np.concatenate([start, [p_sorted.size]])
    npx = np.bincount(np.asarray(atom_index).ravel(), minlength=atoms.n)
    rows = []
    for r in range(vals.size):
        grp = chosen[bounds[r] : bounds[r + 1]]
        ids = np.flatnonzero(np.isin(g.of_atom, grp))
        end = bounds[r + 1] - 1
        rows.append(
            {
                "rank": r + 1,
                "prob": float(-vals[r]),
                "area_km2": float(atoms.area[ids].sum()),
                "cum_area_km2": float(us.cum_area[0, end]),
                "cum_mass": float(us.mass_at(np.zeros(1, np.int64), np.array([end]))[0]),
                "n_atoms": int(ids.size),
                "n_pixels": int(npx[ids].sum()),
                "atoms": ids.tolist(),
            }
        )
    cols = ["rank", "prob", "area_km2", "cum_area_km2", "cum_mass", "n_atoms", "n_pixels", "atoms"]
    return pd.DataFrame(rows, columns=cols), thr


def write_cog(path: str | Path, ranks: I32Array, grid: Grid) -> None:
    """Write the rank raster as a Cloud-Optimized GeoTIFF (deflate, EPSG:4326, nodata 0)."""
    profile = {
        "driver": "GTiff", "height": grid.height, "width": grid.width, "count": 1, "dtype": "int32",
        "crs": "EPSG:4326", "transform": grid.transform, "nodata": 0,
    }  # fmt: skip
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(ranks.astype(np.int32), 1)
            dst.update_tags(meaning="rank group of the calibrated region, 1 = most likely; 0 = outside")
        with mem.open() as src, atomic_path(path) as tmp:
            rio_copy(src, tmp, driver="COG", compress="DEFLATE", blocksize=256)
    with rasterio.open(path) as chk:  # the COG driver writes a tiled GeoTIFF with overviews when large
        if chk.count != 1:
            raise ValueError(f"{path}: COG written with {chk.count} bands")


def write_gpkg(path: str | Path, regions: pd.DataFrame, ranks: I32Array, grid: Grid) -> None:
    """Write the region's rank groups as a GeoPackage layer ``region`` (EPSG:4326) via geopandas."""
    import geopandas as gpd  # deferred: heavy optional dependency, only the GeoPackage needs it

    fc = region_features(regions, ranks, grid)
    feats = fc["features"]
    assert isinstance(feats, list)
    gdf = gpd.GeoDataFrame.from_features(feats, crs="EPSG:4326")
    if gdf.empty:
        gdf = gpd.GeoDataFrame({"rank": [], "geometry": []}, geometry="geometry", crs="EPSG:4326")
    with atomic_path(path) as tmp:
        tmp.unlink()
        gdf.to_file(tmp, driver="GPKG", layer="region")


def write_region_png(
    path: str | Path,
    ranks: I32Array,
    land: BoolArray,
    title: str,
    max_width: int = 1440,
) -> None:
    """PNG map: land in grey with its coastline, the region's pixels by rank group (1 = most likely)."""
    import matplotlib  # deferred: heavy plotting dependency, only the PNG map needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: as matplotlib above

    step = max(1, math.ceil(ranks.shape[1] / max_width))
    r = ranks[step // 2 :: step, step // 2 :: step]
    lm = land[step // 2 :: step, step // 2 :: step]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    shade_land(ax, lm)
    if (r > 0).any():
        im = ax.imshow(
            np.ma.masked_equal(r, 0), cmap="viridis_r", extent=(-180, 180, -90, 90), interpolation="nearest"
        )
        fig.colorbar(im, ax=ax, shrink=0.7, label="rank group (1 = most likely)")
    draw_coastline(ax, lm)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, metadata={"Software": None})
    plt.close(fig)


def plan_coverage_search(
    results: str | Path,
    probs_by_family: Mapping[str, npt.ArrayLike],
    base: str,
    level: float,
    region: str,
    out_stem: str | Path,
    ls_probs: npt.ArrayLike | None = None,
    earth_radius_km: float | None = None,
    mix: Mapping[str, float] | None = None,
    subset: tuple[float, int] = (1.0, 0),
) -> dict[str, Any]:
    """Calibrated region of one photo from the workflow's artifacts, written as GeoJSON, GeoPackage, COG, PNG.

    Args:
        results: The workflow's results folder (atoms, absorption, ``calibration/<slug>.json``).
        probs_by_family: Family -> the photo's probabilities (``s2`` and the ensembled attributes).
        base: Base model key.
        level: Nominal coverage (one of the calibrated levels).
        region: One of :data:`COVERAGE_REGIONS`.
        out_stem: Output path without suffix (``.geojson``, ``.gpkg``, ``.tif``, ``.png`` are added).
        ls_probs: The photo's LS probabilities (per-bucket regions).
        earth_radius_km: Sphere radius of the grid.
        mix: LS bucket shares of the photos searched (:func:`resolve_mix`): the threshold is weighted split
            conformal on the val scores (``calibration/scores/val.parquet``, DESIGN section 12).
        subset: ``(calibrate.fraction, seed)`` of the run (the calibration images the weights apply to).

    Returns:
        ``{"regions", "area_km2", "level", "threshold", "method", "n_calibration", "group", "paths"}``;
        ``group`` is ``all`` or the predicted LS bucket whose images calibrated the threshold.

    Raises:
        FileNotFoundError: If the calibration artifact is missing.
        ValueError: For ``mix`` with a per-bucket region, or a mix the val split cannot weight.

    """
    res = Path(results)
    fams = [f for f in ("ls", "lc") if f in probs_by_family]
    slug = method_slug(base, attributes_suffix(fams))
    cal_path = res / "calibration" / f"{slug}.json"
    if not cal_path.exists():
        raise FileNotFoundError(
            f"{cal_path} is missing: run the workflow's calibration first (snakemake ... {cal_path})"
        )
    calibration = read_json(cal_path)
    atoms = read_atoms(res / "atoms" / "atoms.parquet")
    index = read_atom_index(res / "atoms" / "atom_index.tif", atoms.n)
    absorption = read_absorption(res / "masks" / "s2_absorption.parquet")
    radius = earth_radius_km or EARTH_RADIUS_KM
    grid = Grid(index.shape[0], index.shape[1], radius)
    thr = None
    if mix is not None:
        if region.endswith("-bucket"):
            raise ValueError(
                f"--mix weights the whole val split: use --region adaptive or fixed, not {region}"
            )
        thr = mix_threshold(read_val_scores(res), mix, slug, region, level, subset[0], subset[1])
    regions, thr = coverage_region(
        atoms, index, probs_by_family, calibration, level, region, ls_probs, absorption, radius, thr
    )
    ranks = rank_raster(regions, index, atoms.n)
    area = float(regions["area_km2"].sum()) if len(regions) else 0.0
    group, n_cal = "all", int(calibration["n"])
    if region.endswith("-bucket") and ls_probs is not None:
        group = LS_BUCKETS[int(np.argmax(np.asarray(ls_probs, dtype=np.float64)))]
        n_cal = int(calibration["n_per_bucket"][group])
    stem = Path(out_stem)
    paths = {ext: stem.with_name(stem.name + f".{ext}") for ext in ("geojson", "gpkg", "tif", "png")}
    write_geojson(paths["geojson"], regions, ranks, grid)
    write_gpkg(paths["gpkg"], regions, ranks, grid)
    write_cog(paths["tif"], ranks, grid)
    land = (atoms.labels["ls"] >= 0)[index]
    write_region_png(
        paths["png"],
        ranks,
        land,
        f"{stem.name}: {calibration['method']} {region} region calibrated for {level:.0%} coverage "
        f"(n = {n_cal}), {area:.4g} km^2",
    )
    return {
        "regions": regions,
        "area_km2": area,
        "level": float(level),
        "threshold": thr,
        "method": calibration["method"],
        "n_calibration": n_cal,
        "group": group,
        "paths": paths,
        "mix": dict(mix) if mix is not None else None,
    }
