"""Ranked regions of photos for the map explorer: one small image per photo and method, any budget.

A photo's search plan at budget ``B`` (:mod:`geoens.apps.search`, Alg. 2) takes the rank groups of its
atoms in decreasing ``P`` while their cumulative area stays within ``B``. So every atom has one *area
threshold*: the cumulative area of the upper set that ends with its tie run; the region at budget ``B`` is
the atoms whose threshold is ``<= B`` (atoms with ``P = 0`` are never proposed). The explorer stores that
threshold per pixel of a downsampled grid, quantised on a log scale to 8 bits (0 = never; level ``l``
stands for the upper bound of its bin, so a drawn pixel is always inside the true region). The atoms seen
on the downsampled grid are numbered once (the *region map*: an RGB PNG of each pixel's number, written
once per page); a photo's region is then the grayscale PNG of the levels of those atoms, a few hundred
bytes for the demo, and the page shows the region of any budget from the two. The calibrated region at a
coverage level is the same plan at the area of the calibrated upper set
(:func:`geoens.evaluation.conformal.region_areas`); with a test set's estimated population mix
(``calibration/<testset>/shift.json``) also the adaptive region weighted to that mix
(:data:`WEIGHTED_KIND`, as ``geoens search --coverage L --mix <testset>`` draws it).
"""

from __future__ import annotations

import base64
import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from PIL import Image

from geoens.core.constants import (
    BASE_MODELS,
    EARTH_RADIUS_KM,
    EXPLORER_LEVEL_MIN_KM2,
    EXPLORER_REGION_WIDTH,
    INDEX_IN_MEMORY_MAX_PIXELS,
    N_CLASSES,
)
from geoens.core.grid import Grid
from geoens.core.io import read_json
from geoens.core.types import FloatArray, I32Array, U8Array
from geoens.evaluation.calibrate import CalMethod, method_scores, method_slug, threshold_of
from geoens.evaluation.conformal import region_areas, upper_sets
from geoens.evaluation.evaluator import Evaluator
from geoens.evaluation.methods import Method, all_methods
from geoens.evaluation.shiftcal import mix_threshold, read_val_scores
from geoens.evaluation.testset import read_absorption
from geoens.geo.atoms import read_atoms
from geoens.geo.lookup import PixelLookup, TiledPixelLookup, open_pixel_lookup

log = logging.getLogger(__name__)

#: Number of area levels of a region image (level 0 = never selected).
N_LEVELS = 255
#: Kind of the calibrated region weighted to the test set's estimated mix (beside ``adaptive``, ``fixed``).
WEIGHTED_KIND = "adaptive weighted LS"
#: Atoms per row of a photo's region PNG (levels of the region map's atoms in order, zero-padded).
REGION_ROW = 256


@dataclass(frozen=True)
class LevelScale:
    """The log scale of the region images: level ``l >= 1`` stands for areas up to :meth:`area_of`.

    Attributes:
        lo_km2: Upper bound of level 1.
        hi_km2: Upper bound of the last level (the area of the sphere).

    """

    lo_km2: float
    hi_km2: float

    def area_of(self, level: npt.ArrayLike) -> FloatArray:
        """Upper bound (km^2) of each level ``1..N_LEVELS``."""
        t = (np.asarray(level, dtype=np.float64) - 1.0) / (N_LEVELS - 1)
        return np.asarray(self.lo_km2 * (self.hi_km2 / self.lo_km2) ** t, dtype=np.float64)

    def level_of(self, area_km2: npt.ArrayLike) -> U8Array:
        """Smallest level whose bound holds each area (0 for ``inf``: never selected)."""
        a = np.asarray(area_km2, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.log(np.maximum(a, self.lo_km2) / self.lo_km2) / math.log(self.hi_km2 / self.lo_km2)
        lev = np.clip(np.ceil(np.round(t * (N_LEVELS - 1), 9)) + 1, 1, N_LEVELS)
        return np.where(np.isfinite(a), lev, 0).astype(np.uint8)

    def to_json(self) -> dict[str, float | int]:
        """The scale as the page reads it."""
        return {"lo_km2": self.lo_km2, "hi_km2": self.hi_km2, "n_levels": N_LEVELS}


@dataclass
class RegionContext:
    """What the region images of a run need: atoms, evaluator, the downsampled atom index.

    Attributes:
        ev: The evaluator (atom groups, Alg. 1 scores).
        atoms_seen: Atoms at the pixel centres of the downsampled grid (sorted ids).
        pixel_atoms: ``h x w`` position of each downsampled pixel's atom in ``atoms_seen``.
        scale: The level scale.
        results: The run's results folder (calibration records).
        val_scores: The val score table (``calibration/scores/val.parquet``) when the run has one: the
            regions weighted to a test set's mix are calibrated on it.
        subset: ``(calibrate.fraction, seed)`` of the run: the val images the calibration used.

    """

    ev: Evaluator
    atoms_seen: I32Array
    pixel_atoms: I32Array
    scale: LevelScale
    results: Path
    val_scores: pd.DataFrame | None = None
    subset: tuple[float, int] = (1.0, 0)


def sampled_index(lookup: PixelLookup | TiledPixelLookup, max_width: int) -> I32Array:
    """Atom ids at the pixel centres of a grid at most ``max_width`` wide (strips for a tiled index)."""
    grid = lookup.grid
    step = max(1, math.ceil(grid.width / max_width))
    rows = range(step // 2, grid.height, step)
    if isinstance(lookup, PixelLookup):
        return np.ascontiguousarray(lookup.atom_index[step // 2 :: step, step // 2 :: step])
    return np.stack([lookup.read_rows(r, r + 1)[0, step // 2 :: step] for r in rows])


def region_context(
    results: str | Path,
    n_cells: int,
    max_width: int = EXPLORER_REGION_WIDTH,
    subset: tuple[float, int] = (1.0, 0),
) -> RegionContext:
    """The region context of a run's results folder (atoms, atom index, S2 absorption, val scores).

    Args:
        results: The workflow's results folder.
        n_cells: Classes of the base models (fine S2 cells).
        max_width: Width of the region images at most.
        subset: ``(calibrate.fraction, seed)`` of the run (the val images its calibration used).

    """
    res = Path(results)
    atoms_path = res / "atoms" / "atoms.parquet"
    atoms = read_atoms(atoms_path)
    lookup = open_pixel_lookup(
        res / "atoms" / "atom_index.tif", atoms_path, atoms.n, EARTH_RADIUS_KM, INDEX_IN_MEMORY_MAX_PIXELS
    )
    assert isinstance(lookup, PixelLookup | TiledPixelLookup)
    grid: Grid = lookup.grid
    ev = Evaluator(
        atoms,
        {"s2": n_cells, **N_CLASSES},
        lookup,
        grid.total_area(),
        read_absorption(res / "masks" / "s2_absorption.parquet"),
    )
    scale = LevelScale(EXPLORER_LEVEL_MIN_KM2, grid.total_area())
    sample = sampled_index(lookup, max_width)
    seen, pos = np.unique(sample, return_inverse=True)
    val_path = res / "calibration" / "scores" / "val.parquet"
    val = read_val_scores(res) if val_path.exists() else None
    pixel_atoms = pos.reshape(sample.shape).astype(np.int32)
    return RegionContext(ev, seen.astype(np.int32), pixel_atoms, scale, res, val, subset)


def region_map_uri(ctx: RegionContext) -> str:
    """The region map as a ``data:`` URI: an RGB PNG of each pixel's atom number (``65536 r + 256 g + b``)."""
    p = ctx.pixel_atoms.astype(np.uint32)
    rgb = np.stack([(p >> 16) & 255, (p >> 8) & 255, p & 255], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def method_of(name: str, bases: Sequence[str] = BASE_MODELS) -> Method | None:
    """The ensemble method of a display name (``None`` for a method without atom scores, e.g. ``(cell)``)."""
    for m in all_methods(list(bases)):
        if m.name == name:
            return m
    return None


def atom_thresholds(
    ctx: RegionContext, method: Method, scores: Mapping[str, FloatArray]
) -> tuple[FloatArray, Any]:
    """``images x atoms`` area threshold of every atom (``inf``: never proposed) and the upper sets."""
    P = method_scores(
        ctx.ev, CalMethod(method.base, method.suffix, method.families, method.urban_prior), scores
    )
    g, p = P
    us = upper_sets(p, g.area)
    n_img = us.order.shape[0]
    thr_g = np.empty((n_img, g.n), dtype=np.float64)
    rows = np.arange(n_img)[:, None]
    # each position's upper set ends at the end of its tie run (P equal): the area there
    ends = np.stack([np.searchsorted(-ps, -ps, side="right") - 1 for ps in us.p_sorted])
    cum = np.take_along_axis(us.cum_area, ends.reshape(n_img, -1), axis=1)
    thr_g[rows, us.order] = np.where(us.p_sorted > 0, cum, np.inf)
    return thr_g[:, g.of_atom], us


def calibrated_areas(
    ctx: RegionContext, method: Method, us: Any, mix: Mapping[str, float] | None = None
) -> dict[str, dict[str, list[float]]]:
    """Area of each image's calibrated region per kind and level (``{}`` without a calibration record).

    With ``mix`` (a test set's estimated LS bucket shares) and the run's val scores, also the adaptive
    region weighted to that mix (:data:`WEIGHTED_KIND`; left out, with a log line, where the val split
    cannot weight the mix).
    """
    slug = method_slug(method.base, method.suffix)
    path = ctx.results / "calibration" / f"{slug}.json"
    if not path.exists():
        return {}
    cal = read_json(path)
    out: dict[str, dict[str, list[float]]] = {}
    n = us.order.shape[0]
    for kind in ("adaptive", "fixed"):
        if kind not in cal.get("thresholds", {}):
            continue
        out[kind] = {}
        for level in cal.get("levels", []):
            thr = np.full(n, threshold_of(cal, kind, float(level)))
            out[kind][f"{float(level):g}"] = [float(a) for a in region_areas(us, kind, thr)]
    if mix is None or ctx.val_scores is None or "adaptive" not in out:
        return out
    weighted: dict[str, list[float]] = {}
    try:
        for level in cal.get("levels", []):
            t = mix_threshold(ctx.val_scores, mix, slug, "adaptive", float(level), *ctx.subset)
            weighted[f"{float(level):g}"] = [float(a) for a in region_areas(us, "adaptive", np.full(n, t))]
    except ValueError as exc:
        log.info("explorer: no region weighted to the mix for %s: %s", slug, exc)
        return out
    out[WEIGHTED_KIND] = weighted
    return out


def png_data_uri(levels: U8Array) -> str:
    """A grayscale PNG of an 8-bit image as a ``data:`` URI (the page draws it on a canvas)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(levels), mode="L").save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def region_images(
    ctx: RegionContext,
    method: Method,
    scores: Mapping[str, FloatArray],
    mix: Mapping[str, float] | None = None,
) -> tuple[list[str], dict[str, dict[str, list[float]]], list[tuple[float, float]]]:
    """Region PNG (``data:`` URI) of each image of a batch for one method, and more.

    ``mix``: the test set's estimated LS bucket shares, for the calibrated region weighted to them.

    Returns:
        ``(data URIs, calibrated areas per kind and level, (lat, lon) of a pixel of each first rank group)``.

    """
    thr, us = atom_thresholds(ctx, method, scores)
    levels = ctx.scale.level_of(thr)
    n = ctx.atoms_seen.size
    rows = -(-n // REGION_ROW)
    flat = np.zeros((levels.shape[0], rows * REGION_ROW), np.uint8)
    flat[:, :n] = levels[:, ctx.atoms_seen]
    uris = [png_data_uri(flat[i].reshape(rows, REGION_ROW)) for i in range(levels.shape[0])]
    best = np.argmin(thr, axis=1)
    atoms = ctx.ev.atoms
    first = [(float(atoms.rep_lat[a]), float(atoms.rep_lon[a])) for a in best]
    return uris, calibrated_areas(ctx, method, us, mix), first
