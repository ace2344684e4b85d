"""The mask stage: native LandScan and land-cover rasters -> LS and LC label rasters on the grid (DESIGN 3).

Downsampling is streamed in row strips (never the whole native raster in memory), each strip read ahead in a
thread:

* LandScan: block mean over valid native pixels (block with none valid -> NaN), then
  :func:`geoens.geo.buckets.bucketize` with the log10 edges (DESIGN 3: values <= 0 -> bucket 0; log10 values
  outside the edges clip into the end buckets; a value equal to an inner edge goes to the upper bucket;
  NaN -> -1).
* Land cover: block mode of the 7 merged classes (:func:`geoens.geo.landcover.block_counts`), with the legend
  checks of :mod:`geoens.geo.landcover`.

:func:`make_ls_mask` and :func:`make_lc_mask` write ``results/masks/{ls,lc}.tif`` and their previews
(:func:`geoens.geo.rasters.write_label_raster`, :func:`geoens.geo.rasters.preview_png`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from geoens.core.constants import LC_CLASSES, LC_NODATA, LS_BUCKETS, NO_CLASS
from geoens.core.grid import Grid
from geoens.core.io import atomic_path
from geoens.core.logs import TqdmToLogger
from geoens.core.types import FloatArray
from geoens.geo.buckets import bucketize, check_ls_edges, load_ls_edges
from geoens.geo.landcover import (
    FILL_HINT,
    LandCoverError,
    LcStats,
    UnknownCodes,
    block_counts,
    describe_codes,
    handle_unknown_lc_codes,
    lc_class_lut,
    mode_of_counts,
    unknown_lc_codes,
)
from geoens.geo.rasters import (
    NativeRaster,
    NegativePopulationError,
    check_population,
    open_checked,
    preview_png,
    write_label_raster,
)

log = logging.getLogger(__name__)


#: Native bytes per strip that the downsamplers aim for (keeps peak memory well under 1 GB).
STRIP_BYTES = 96 * 2**20


# ---------------------------------------------------------------------------------------------------
# strips
# ---------------------------------------------------------------------------------------------------


def _strip_blocks(native: NativeRaster, factor: int, grid_width: int, bytes_per_px: float) -> int:
    """Grid rows per strip so that a strip's working set stays near :data:`STRIP_BYTES`."""
    per_row = factor * native.width * bytes_per_px
    return max(1, int(STRIP_BYTES // max(per_row, 1)))


def _read_ahead(
    native: NativeRaster, strips: Sequence[tuple[int, int, int]]
) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """Yield ``(grid_row0, n_grid_rows, factor, native rows)`` while the next strip is read in a thread.

    Reading (file I/O and decompression in GDAL / netCDF) releases the GIL, so it overlaps the numpy work on
    the current strip; one reader thread keeps the dataset handle single-threaded.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as pool:
        pending = None
        for i, (r0, k, f) in enumerate(strips):
            if pending is None:
                pending = pool.submit(native.read_rows, r0 * f, k * f)
            data = pending.result()
            if i + 1 < len(strips):
                n0, nk, nf = strips[i + 1]
                pending = pool.submit(native.read_rows, n0 * nf, nk * nf)
            yield r0, k, f, data


def _strip_rows(
    native: NativeRaster, grid: Grid, bytes_per_px: float, progress: bool
) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """Strips of ``native`` covering the grid, read ahead in a thread, with a tqdm bar into the log."""
    strips = list(_strips(native, grid, bytes_per_px))
    yield from tqdm(
        _read_ahead(native, strips),
        total=len(strips),
        desc=Path(native.path).name,
        disable=not progress,
        mininterval=5,
        file=TqdmToLogger(log),
    )


def _strips(native: NativeRaster, grid: Grid, bytes_per_px: float) -> Iterator[tuple[int, int, int]]:
    """Yield ``(grid_row0, n_grid_rows, factor)`` strips covering the grid."""
    factor = grid.factor_of(native.height, native.width, what=str(native.path))
    k = _strip_blocks(native, factor, grid.width, bytes_per_px)
    for r0 in range(0, grid.height, k):
        yield r0, min(k, grid.height - r0), factor


# ---------------------------------------------------------------------------------------------------
# LandScan
# ---------------------------------------------------------------------------------------------------


def block_mean(arr: np.ndarray, factor: int, nodata: int) -> FloatArray:
    """Mean over valid pixels of each ``factor x factor`` block (NaN where a block has none valid)."""
    h, w = arr.shape
    valid = arr != nodata
    vals = np.where(valid, arr, 0)
    # exact integer sums (int64), first over the block's rows, then over its columns
    s = vals.reshape(h // factor, factor, w).sum(axis=1, dtype=np.int64)
    s = s.reshape(h // factor, w // factor, factor).sum(axis=2)
    n = valid.reshape(h // factor, factor, w).sum(axis=1, dtype=np.int32)
    n = n.reshape(h // factor, w // factor, factor).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def landscan_mean(path: str | Path, grid: Grid, progress: bool = False) -> FloatArray:
    """LandScan block mean on the grid (float64, NaN where the block has no valid native pixel).

    Raises:
        ValueError: If the file fails validation or its size is not a multiple of the grid.

    """
    out = np.full(grid.shape, np.nan, dtype=np.float64)
    n_neg, neg_values = 0, set[int]()
    with open_checked(path, "landscan") as ls:
        for r0, k, f, rows in _strip_rows(ls, grid, 4 + 8 + 8 + 1, progress):
            n, vals = check_population(rows, ls.nodata, path)
            n_neg, neg_values = n_neg + n, neg_values | set(vals)
            out[r0 : r0 + k] = block_mean(rows, f, ls.nodata)
        if n_neg:
            raise NegativePopulationError(path, n_neg, sorted(neg_values)[:5], ls.nodata)
    return out


def ls_mask(
    path: str | Path, grid: Grid, edges_log10: Sequence[float], progress: bool = False
) -> tuple[npt.NDArray[np.int8], int]:
    """LS label raster (int8, -1 none) and the number of nodata blocks; block means bucketed per strip.

    Raises:
        ValueError: If the file fails validation, its size is not a multiple of the grid, or bad edges.

    """
    edges = check_ls_edges(edges_log10)  # validate the edges before reading
    out = np.full(grid.shape, NO_CLASS, dtype=np.int8)
    n_nodata = 0
    n_neg, neg_values = 0, set[int]()
    with open_checked(path, "landscan") as ls:
        for r0, k, f, rows in _strip_rows(ls, grid, 4 + 8 + 8 + 1, progress):
            n, vals = check_population(rows, ls.nodata, path)
            n_neg, neg_values = n_neg + n, neg_values | set(vals)
            mean = block_mean(rows, f, ls.nodata)
            n_nodata += int(np.isnan(mean).sum())
            out[r0 : r0 + k] = bucketize(mean, edges)
        if n_neg:
            raise NegativePopulationError(path, n_neg, sorted(neg_values)[:5], ls.nodata)
    return out, n_nodata


# ---------------------------------------------------------------------------------------------------
# land cover
# ---------------------------------------------------------------------------------------------------


def lc_mask_stats(
    path: str | Path, grid: Grid, progress: bool = False, unknown_codes: UnknownCodes = "error"
) -> tuple[npt.NDArray[np.int8], LcStats]:
    """LC label raster on the grid (block mode of the 7 merged classes, int8, -1 none) and its statistics.

    Raises:
        ValueError: If the file fails validation or its size is not a multiple of the grid.
        LandCoverError: If no native pixel holds an LCCS class (e.g. a file of fill values only), or
            (``unknown_codes="error"``) if any pixel holds a code outside the LCCS legend.

    """
    lut = lc_class_lut()
    n = len(LC_CLASSES)
    out = np.full(grid.shape, NO_CLASS, dtype=np.int8)
    stats = LcStats()
    with open_checked(path, "landcover") as lc:
        if 0 <= lc.nodata < 256:
            lut[lc.nodata] = NO_CLASS  # a declared nodata code is never a class
        for r0, k, f, rows in _strip_rows(lc, grid, 1 + 8 + 1, progress):
            counts = block_counts(rows, f, n, lut)
            out[r0 : r0 + k] = mode_of_counts(counts).reshape(k, grid.width)
            classified = int(counts.sum(dtype=np.int64))
            codes = rows.view(np.uint8)
            nodata = int(np.count_nonzero(codes == LC_NODATA))
            if lc.nodata != LC_NODATA and 0 <= lc.nodata < 256:
                nodata += int(np.count_nonzero(codes == lc.nodata))
            if classified + nodata < rows.size:  # some code is unknown: find which (rare, so cheap)
                unknown_lc_codes(codes, lc.nodata, stats.unknown)
            stats.n_pixels += rows.size
            stats.n_classified += classified
            stats.n_nodata += nodata
        nodata_code = lc.nodata
    if stats.n_classified == 0:
        unknown = (
            f", the others hold unknown codes {describe_codes(stats.unknown)}" if stats.unknown.any() else ""
        )
        raise LandCoverError(
            f"{path}: none of the {stats.n_pixels:,} pixels holds a land-cover class: {stats.n_nodata:,} are "
            f"no data (code 0 or the file's nodata {nodata_code}){unknown}. "
            f"Does lccs_class hold only its fill value ({FILL_HINT})?"
        )
    handle_unknown_lc_codes(stats.unknown, path, unknown_codes)
    return out, stats


def lc_mask(
    path: str | Path, grid: Grid, progress: bool = False, unknown_codes: UnknownCodes = "error"
) -> npt.NDArray[np.int8]:
    """LC label raster on the grid: block mode of the 7 merged classes (int8, -1 none).

    Raises:
        ValueError: If the file fails validation or its size is not a multiple of the grid.
        LandCoverError: See :func:`lc_mask_stats`.

    """
    return lc_mask_stats(path, grid, progress, unknown_codes)[0]


# ---------------------------------------------------------------------------------------------------
# stage entry points (called by the workflow scripts)
# ---------------------------------------------------------------------------------------------------


def make_ls_mask(
    landscan: str | Path,
    edges_json: str | Path | None,
    grid: Grid,
    out_tif: str | Path,
    out_png: str | Path | None = None,
    fallback: Sequence[float] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Build ``results/masks/ls.tif`` (+ preview), atomically; return a summary for the log."""
    edges = load_ls_edges(edges_json, fallback)
    labels, nodata_blocks = ls_mask(landscan, grid, edges, progress=progress)
    with atomic_path(out_tif) as tmp:
        write_label_raster(tmp, labels, grid, LS_BUCKETS, tags={"edges_log10": json.dumps(edges)})
    if out_png is not None:
        with atomic_path(out_png) as tmp:
            preview_png(tmp, labels, LS_BUCKETS, f"LandScan buckets on {grid.height} x {grid.width}")
    return _summary(labels, grid, LS_BUCKETS) | {
        "edges_log10": edges,
        "nodata_blocks": nodata_blocks,
    }


def make_lc_mask(
    landcover: str | Path,
    grid: Grid,
    out_tif: str | Path,
    out_png: str | Path | None = None,
    progress: bool = False,
    unknown_codes: UnknownCodes = "error",
) -> dict[str, Any]:
    """Build ``results/masks/lc.tif`` (+ preview), atomically; return a summary for the log.

    Raises:
        LandCoverError: See :func:`lc_mask_stats`.

    """
    labels, stats = lc_mask_stats(landcover, grid, progress=progress, unknown_codes=unknown_codes)
    with atomic_path(out_tif) as tmp:
        write_label_raster(tmp, labels, grid, LC_CLASSES)
    if out_png is not None:
        with atomic_path(out_png) as tmp:
            preview_png(tmp, labels, LC_CLASSES, f"Land cover (7 classes) on {grid.height} x {grid.width}")
    return _summary(labels, grid, LC_CLASSES) | {
        "native_pixels": stats.n_pixels,
        "native_classified": stats.n_classified,
        "native_nodata": stats.n_nodata,
        "unknown_codes": {str(c): int(stats.unknown[c]) for c in np.flatnonzero(stats.unknown)},
    }


def _summary(labels: np.ndarray, grid: Grid, classes: Sequence[str]) -> dict[str, Any]:
    areas = grid.row_areas()
    per = {}
    for j, name in enumerate(classes):
        per[name] = float((np.count_nonzero(labels == j, axis=1) * areas).sum())
    per["none"] = float((np.count_nonzero(labels < 0, axis=1) * areas).sum())
    return {"area_km2": per, "shape": list(labels.shape)}
