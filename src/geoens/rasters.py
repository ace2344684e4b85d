"""Native global rasters (LandScan, ESA CCI land cover) -> label masks on the common grid (DESIGN 3).

Reading.
    :func:`open_checked` opens a GeoTIFF (through rasterio/GDAL) or a NetCDF file (through netCDF4: GDAL's
    netCDF driver honours ``_Unsigned`` by asking the netCDF library for unsigned bytes, which fails on
    NetCDF-4/HDF5 files with "Numeric conversion not representable"; so ``lccs_class`` is read raw as int8 and
    viewed as uint8 here, never as signed). It validates CRS (geographic WGS84), extent (global, half a pixel
    tolerance), orientation (north-up), dtype (int32 LandScan, uint8 land cover) and nodata, and raises
    ``ValueError`` naming the file and what was found. Reads are always at native resolution, by row window
    (``read(out_shape=...)`` would silently read an overview).

Downsampling.
    Streamed in row strips (never the whole native raster in memory):

    * LandScan: block mean over valid native pixels (block with none valid -> NaN), then
      :func:`ls_bucket_of` with log10 edges (DESIGN 3: values <= 0 -> bucket 0; log10 values outside the
      edges clip into the end buckets; a value equal to an inner edge goes to the upper bucket; NaN -> -1).
    * Land cover: LCCS code -> 22 top codes -> 7 merged classes (``constants.lc_lookup_tables``; 0 and
      unknown codes -> no class), then block mode over pixels with a class, ties to the lowest class index,
      blocks with no class -> -1. Counts per class are byte-mask sums (uint8 up to factor 15), rows of the
      block first, then columns.

Writing.
    :func:`write_label_raster`: tiled (256), deflate, EPSG:4326 GeoTIFF with nodata and a ``classes`` tag
    (JSON list); :func:`preview_png` draws a categorical preview with a legend.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geoens.constants import (
    LANDSCAN_NODATA,
    LC_CLASSES,
    LC_NODATA,
    LC_TOP_CODES,
    LS_BUCKETS,
    NO_CLASS,
    lc_lookup_tables,
)
from geoens.grid import Grid
from geoens.logs import TqdmToLogger

log = logging.getLogger(__name__)

Kind = Literal["landscan", "landcover"]
FloatArray = npt.NDArray[np.float64]

#: Expected native dtype per input kind.
EXPECTED_DTYPE: dict[str, str] = {"landscan": "int32", "landcover": "uint8"}
#: Default nodata per input kind when the file declares none.
DEFAULT_NODATA: dict[str, int] = {"landscan": LANDSCAN_NODATA, "landcover": LC_NODATA}
#: NetCDF variable read for the land cover.
LC_VARIABLE = "lccs_class"
#: Native bytes per strip that the downsamplers aim for (keeps peak memory well under 1 GB).
STRIP_BYTES = 96 * 2**20
#: GDAL block cache (MB) while reading a native GeoTIFF: one strip of tiles across the whole width.
GDAL_CACHE_MB = 320


# ---------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------


@dataclass
class NativeRaster:
    """A validated, opened global raster, read by row strips at native resolution (north-up).

    Attributes:
        path: The file.
        kind: ``"landscan"`` or ``"landcover"``.
        height: Native rows.
        width: Native columns.
        dtype: Numpy dtype of what :meth:`read_rows` returns (int32 or uint8).
        nodata: Nodata value (declared by the file, or the kind's default).
        chunk_rows: Preferred strip height (file block/chunk height), for efficient strip reads.

    """

    path: Path
    kind: str
    height: int
    width: int
    dtype: np.dtype[Any]
    nodata: int
    chunk_rows: int
    _read: Callable[[int, int], np.ndarray] = field(repr=False)

    def read_rows(self, row0: int, nrows: int) -> np.ndarray:
        """Rows ``[row0, row0 + nrows)`` at native resolution, north-up, as :attr:`dtype`."""
        if row0 < 0 or nrows < 0 or row0 + nrows > self.height:
            raise ValueError(f"{self.path}: rows {row0}..{row0 + nrows} outside 0..{self.height}")
        out = self._read(row0, nrows)
        return np.asarray(out).view(self.dtype) if out.dtype != self.dtype else out

    @property
    def native_grid(self) -> Grid:
        """The native raster as a :class:`Grid` (for point -> native pixel).

        Raises:
            ValueError: Naming the file, if the raster is not a global ``H x 2H`` lat/lon grid.
        """
        try:
            return Grid(self.height, self.width)
        except ValueError as exc:
            raise ValueError(
                f"{self.path}: {self.kind} raster is {self.height} x {self.width} pixels; a global lat/lon "
                "raster has twice as many columns as rows (LandScan 21600 x 43200, ESA CCI LC 64800 x 129600)"
            ) from exc

    def sample(self, lat: npt.ArrayLike, lon: npt.ArrayLike, max_rows: int = 512) -> np.ndarray:
        """Values of the native pixels containing the points (DESIGN 2 pixel convention), nodata included.

        Only the row strips that hold points are read.

        Raises:
            ValueError: If a point is outside lat [-90, 90] or not finite.

        """
        rows, cols = self.native_grid.pixel_of(lat, lon)
        rows, cols = rows.ravel(), cols.ravel()
        out = np.empty(rows.shape, dtype=self.dtype)
        if rows.size == 0:
            return out.reshape(np.shape(lat))
        order = np.argsort(rows, kind="stable")
        srows = rows[order]
        start = 0
        while start < srows.size:
            r0 = int(srows[start])
            nrows = min(max_rows, self.height - r0)
            end = int(np.searchsorted(srows, r0 + nrows, side="left"))
            strip = self.read_rows(r0, nrows)
            sel = order[start:end]
            out[sel] = strip[rows[sel] - r0, cols[sel]]
            start = end
        return out.reshape(np.shape(np.asarray(lat)))


def _check_crs_geographic_wgs84(crs: CRS | None, path: Path) -> None:
    if crs is None:
        raise ValueError(f"{path}: no CRS (expected geographic WGS84, EPSG:4326)")
    ok = crs.is_geographic and (
        crs.to_epsg() == 4326 or "WGS 84" in crs.to_wkt() or "WGS_1984" in crs.to_wkt()
    )
    if not ok:
        raise ValueError(f"{path}: CRS is {crs.to_string()!r}, expected geographic WGS84 (EPSG:4326)")


def _check_extent(
    path: Path, left: float, right: float, top: float, bottom: float, dx: float, dy: float
) -> None:
    tol_x, tol_y = abs(dx) / 2.0, abs(dy) / 2.0
    if (
        abs(left + 180.0) > tol_x
        or abs(right - 180.0) > tol_x
        or abs(top - 90.0) > tol_y
        or abs(bottom + 90.0) > tol_y
    ):
        raise ValueError(
            f"{path}: extent lon [{left}, {right}] lat [{bottom}, {top}] is not global "
            f"(expected lon [-180, 180], lat [-90, 90] within half a pixel)"
        )


def _check_dtype(path: Path, kind: str, found: str) -> None:
    if found != EXPECTED_DTYPE[kind]:
        raise ValueError(f"{path}: {kind} dtype is {found}, expected {EXPECTED_DTYPE[kind]}")


def _is_netcdf(path: Path) -> bool:
    if path.suffix.lower() in (".nc", ".nc4", ".netcdf", ".cdf"):
        return True
    with open(path, "rb") as fh:
        head = fh.read(8)
    return head.startswith(b"CDF") or head.startswith(b"\x89HDF")


def read_window(ds: Any, path: str | Path, window: Window, band: int = 1) -> np.ndarray:
    """``ds.read(band, window=window)``; a failed read (truncated or corrupt file) names file and rows.

    Raises:
        ValueError: Naming the file, the rows and columns of the window and the file's size: GDAL's own
            "Read failed" names neither the full path nor where the data stopped.

    """
    try:
        return np.asarray(ds.read(band, window=window))
    except RasterioError as exc:
        r0, c0 = int(window.row_off), int(window.col_off)
        r1, c1 = r0 + int(window.height) - 1, c0 + int(window.width) - 1
        size = Path(path).stat().st_size if Path(path).exists() else 0
        raise ValueError(
            f"{path}: reading rows {r0}..{r1}, columns {c0}..{c1} "
            f"failed ({str(exc).strip()}); the file ({size} bytes) is truncated or corrupt: copy it again"
        ) from exc


def check_population(values: np.ndarray, nodata: int, path: str | Path) -> tuple[int, list[int]]:
    """Count population values below 0 that are not ``nodata`` -> ``(count, up to 5 distinct values)``."""
    neg = values < 0
    if not neg.any():
        return 0, []
    neg &= values != nodata
    if not neg.any():
        return 0, []
    return int(np.count_nonzero(neg)), np.unique(values[neg])[:5].tolist()


class NegativePopulationError(ValueError):
    """Negative LandScan values that are not the nodata value (an undeclared nodata sentinel)."""

    def __init__(self, path: str | Path, count: int, values: Sequence[int], nodata: int) -> None:
        shown = ", ".join(str(v) for v in values)
        super().__init__(
            f"{path}: {count} pixel(s) hold negative population value(s) {shown}, which are not the nodata "
            f"value ({nodata}): declare the file's nodata value "
            f"(e.g. gdal_edit.py -a_nodata {values[0]} {path})"
        )


@contextlib.contextmanager
def _open_geotiff(path: Path, kind: str) -> Iterator[NativeRaster]:
    # A small block cache: strips are read once, top to bottom (GDAL's default is 5% of RAM).
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(path) as ds:
        if ds.count < 1:
            raise ValueError(f"{path}: no raster band")
        _check_crs_geographic_wgs84(ds.crs, path)
        t = ds.transform
        if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
            raise ValueError(f"{path}: transform {tuple(t)[:6]} is not north-up lat/lon without rotation")
        b = ds.bounds
        _check_extent(path, b.left, b.right, b.top, b.bottom, t.a, t.e)
        _check_dtype(path, kind, ds.dtypes[0])
        nodata = int(ds.nodata) if ds.nodata is not None else DEFAULT_NODATA[kind]
        chunk = int(ds.block_shapes[0][0]) if ds.block_shapes else 256

        def read(row0: int, nrows: int) -> np.ndarray:
            # Window read at native resolution (never out_shape: that would read an overview).
            return read_window(ds, path, Window(0, row0, ds.width, nrows))

        yield NativeRaster(
            path, kind, ds.height, ds.width, np.dtype(ds.dtypes[0]), nodata, max(chunk, 1), read
        )


def _netcdf_crs_ok(nc: Any, var: Any, path: Path) -> None:
    """Check a CF grid mapping if one is given; CF lat/lon grids without one are WGS84 by convention."""
    gm_name = getattr(var, "grid_mapping", None)
    gm = None
    if gm_name and gm_name in nc.variables:
        gm = nc.variables[gm_name]
    elif "crs" in nc.variables:
        gm = nc.variables["crs"]
    if gm is None:
        log.info("%s: no grid mapping; CF lat/lon grid taken as WGS84", path)
        return
    for attr in ("crs_wkt", "spatial_ref", "wkt"):
        wkt = getattr(gm, attr, None)
        if isinstance(wkt, str) and wkt.strip():
            try:
                crs = CRS.from_wkt(wkt)
            except Exception as exc:  # noqa: BLE001 - report any parse failure with the file name
                raise ValueError(f"{path}: cannot parse CRS in {gm.name}.{attr}: {exc}") from exc
            _check_crs_geographic_wgs84(crs, path)
            return
    name = getattr(gm, "grid_mapping_name", None)
    if name is not None and name != "latitude_longitude":
        raise ValueError(f"{path}: grid mapping {name!r}, expected latitude_longitude (WGS84)")


@contextlib.contextmanager
def _open_netcdf(path: Path, kind: str) -> Iterator[NativeRaster]:
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        if kind == "landcover":
            if LC_VARIABLE not in nc.variables:
                raise ValueError(f"{path}: no variable {LC_VARIABLE!r} (found {sorted(nc.variables)})")
            var = nc.variables[LC_VARIABLE]
        else:
            cands = [v for v in nc.variables.values() if v.ndim >= 2 and v.name not in ("lat", "lon")]
            if len(cands) != 1:
                raise ValueError(f"{path}: expected one 2-D data variable, found {[v.name for v in cands]}")
            var = cands[0]
        var.set_auto_maskandscale(False)
        dims = var.dimensions
        lead = var.shape[:-2]
        if var.ndim < 2 or any(n != 1 for n in lead):
            raise ValueError(f"{path}: variable {var.name} has shape {var.shape}, expected (lat, lon)")
        lat_name, lon_name = dims[-2], dims[-1]
        if lat_name not in nc.variables or lon_name not in nc.variables:
            raise ValueError(f"{path}: variable {var.name} lacks coordinate variables {dims[-2:]}")
        lat = np.asarray(nc.variables[lat_name][:], dtype=np.float64)
        lon = np.asarray(nc.variables[lon_name][:], dtype=np.float64)
        _netcdf_crs_ok(nc, var, path)
        if lat.size < 2 or lon.size < 2:
            raise ValueError(f"{path}: coordinate variables too short")
        dy, dx = np.diff(lat), np.diff(lon)
        if not (np.allclose(dy, dy[0], rtol=1e-6, atol=0) and np.allclose(dx, dx[0], rtol=1e-6, atol=0)):
            raise ValueError(f"{path}: lat/lon coordinates are not evenly spaced")
        if dx[0] <= 0:
            raise ValueError(f"{path}: longitudes decrease")
        south_up = dy[0] > 0
        step_y, step_x = abs(float(dy[0])), float(dx[0])
        top, bottom = float(lat.max()) + step_y / 2, float(lat.min()) - step_y / 2
        left, right = float(lon[0]) - step_x / 2, float(lon[-1]) + step_x / 2
        _check_extent(path, left, right, top, bottom, step_x, step_y)
        raw = np.dtype(var.dtype)
        unsigned = str(getattr(var, "_Unsigned", "")).lower() == "true"
        if raw == np.int8 and (unsigned or kind == "landcover"):
            if not unsigned:
                log.warning("%s: %s is int8 without _Unsigned; reading as uint8 (LCCS codes)", path, var.name)
            dtype = np.dtype(np.uint8)
        else:
            dtype = raw
        _check_dtype(path, kind, dtype.name)
        fill = getattr(var, "_FillValue", None)
        nodata = int(np.asarray(fill, dtype=raw).view(dtype)) if fill is not None else DEFAULT_NODATA[kind]
        height, width = var.shape[-2], var.shape[-1]
        chunking = var.chunking()
        chunk_rows = int(chunking[-2]) if isinstance(chunking, list) else 256
        idx0 = (0,) * len(lead)
        # Enough chunk cache for one strip of chunks across the whole width (decompressed once).
        with contextlib.suppress(Exception):
            var.set_var_chunk_cache(size=max(64 * 2**20, chunk_rows * width * dtype.itemsize + 2**20))

        def read(row0: int, nrows: int) -> np.ndarray:
            if south_up:
                lo = height - row0 - nrows
                data = np.asarray(var[idx0 + (slice(lo, lo + nrows), slice(None))])[::-1]
            else:
                data = np.asarray(var[idx0 + (slice(row0, row0 + nrows), slice(None))])
            return np.ascontiguousarray(data).view(dtype)

        yield NativeRaster(path, kind, height, width, dtype, nodata, max(chunk_rows, 1), read)


@contextlib.contextmanager
def open_checked(path: str | Path, kind: Kind) -> Iterator[NativeRaster]:
    """Open and validate a global LandScan or land-cover raster (GeoTIFF or NetCDF).

    Args:
        path: The file (NetCDF: the land cover is the ``lccs_class`` variable).
        kind: ``"landscan"`` (int32) or ``"landcover"`` (uint8 LCCS codes).

    Yields:
        A :class:`NativeRaster`, read by row strips (:meth:`NativeRaster.read_rows`) or at points
        (:meth:`NativeRaster.sample`).

    Raises:
        ValueError: Naming the file: missing, unreadable, bad CRS, non-global extent, rotated or south-up
            GeoTIFF, wrong dtype.

    """
    p = Path(path)
    if kind not in EXPECTED_DTYPE:
        raise ValueError(f"unknown raster kind {kind!r}")
    if not p.exists():
        raise ValueError(f"{p}: {kind} raster not found")
    opener = _open_netcdf if _is_netcdf(p) else _open_geotiff
    with contextlib.ExitStack() as stack:
        try:
            raster = stack.enter_context(opener(p, kind))
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"{p}: cannot open as {kind} raster: {exc}") from exc
        yield raster


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
    from concurrent.futures import ThreadPoolExecutor

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
    from tqdm import tqdm

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


def ls_bucket_of(values: npt.ArrayLike, edges_log10: Sequence[float]) -> npt.NDArray[np.int8]:
    """LS bucket (0..3) of population values; -1 for NaN (nodata). Delegates to ``geoens.labels.bucketize``.

    DESIGN 3: values <= 0 -> bucket 0 ("lowest"); positive values by ``log10`` against the edges, values
    outside ``[edges[0], edges[-1]]`` clipping into the end buckets; a value exactly on an inner edge goes to
    the upper bucket (``np.searchsorted(..., side="right")``).

    Args:
        values: Population values (any shape; NaN = nodata).
        edges_log10: The ``n_buckets + 1`` increasing log10 edges (5 for the four buckets).

    Raises:
        ValueError: If the edges are not increasing or not 5 of them.

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
    # One rule for the whole project: the relabel stage's canonical function (same edges -> same buckets).
    from geoens.labels import bucketize

    return bucketize(values, e)


def load_ls_edges(path: str | Path | None, fallback: Sequence[float] | None = None) -> list[float]:
    """Load the log10 LS edges from ``results/labels/ls_edges.json`` (key ``edges_log10``), else ``fallback``.

    Raises:
        ValueError: If the file is absent and no fallback is given, or it lacks ``edges_log10``.

    """
    if path is not None and Path(path).exists():
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(obj, dict) or "edges_log10" not in obj:
            raise ValueError(f"{path}: no key 'edges_log10'")
        edges = [float(x) for x in obj["edges_log10"]]
    elif fallback is not None:
        log.warning("LS edges file %s absent; using config labels.ls_edges_fallback", path)
        edges = [float(x) for x in fallback]
    else:
        raise ValueError(f"{path}: LS edges file not found and labels.ls_edges_fallback not set")
    ls_bucket_of(np.zeros(0), edges)  # validates
    return edges


def ls_mask(
    path: str | Path, grid: Grid, edges_log10: Sequence[float], progress: bool = False
) -> tuple[npt.NDArray[np.int8], int]:
    """LS label raster (int8, -1 none) and the number of nodata blocks; block means bucketed per strip.

    Raises:
        ValueError: If the file fails validation, its size is not a multiple of the grid, or bad edges.

    """
    ls_bucket_of(np.zeros(0), edges_log10)  # validate the edges before reading
    out = np.full(grid.shape, NO_CLASS, dtype=np.int8)
    n_nodata = 0
    n_neg, neg_values = 0, set[int]()
    with open_checked(path, "landscan") as ls:
        for r0, k, f, rows in _strip_rows(ls, grid, 4 + 8 + 8 + 1, progress):
            n, vals = check_population(rows, ls.nodata, path)
            n_neg, neg_values = n_neg + n, neg_values | set(vals)
            mean = block_mean(rows, f, ls.nodata)
            n_nodata += int(np.isnan(mean).sum())
            out[r0 : r0 + k] = ls_bucket_of(mean, edges_log10)
        if n_neg:
            raise NegativePopulationError(path, n_neg, sorted(neg_values)[:5], ls.nodata)
    return out, n_nodata


# ---------------------------------------------------------------------------------------------------
# land cover
# ---------------------------------------------------------------------------------------------------


def lc_class_lut() -> npt.NDArray[np.int8]:
    """256-entry table LCCS code -> merged class 0..6 (-1 for 0 and unknown codes)."""
    return np.asarray(lc_lookup_tables()[1], dtype=np.int8)


def block_mode(
    classes: np.ndarray, factor: int, n_classes: int, lut: npt.NDArray[np.int8] | None = None
) -> npt.NDArray[np.int8]:
    """Mode of each ``factor x factor`` block of class indices (``-1`` = no class; ties -> lowest index).

    Args:
        classes: ``(h, w)`` int8 class index per native pixel, -1 for none.
        factor: Block size.
        n_classes: Number of classes (indices ``0..n_classes-1``).
        lut: Optional code -> class table (then ``classes`` holds uint8 codes), see :func:`block_counts`.

    """
    h, w = classes.shape
    return _mode_of_counts(block_counts(classes, factor, n_classes, lut)).reshape(h // factor, w // factor)


def _mode_of_counts(counts: np.ndarray) -> npt.NDArray[np.int8]:
    """Class with the most pixels per block (ties -> lowest index; -1 where no pixel has a class)."""
    best = np.argmax(counts, axis=0).astype(np.int8)  # first maximum = lowest class index
    best[counts.max(axis=0) == 0] = NO_CLASS
    return best


def block_counts(
    classes: np.ndarray, factor: int, n_classes: int, lut: npt.NDArray[np.int8] | None = None
) -> np.ndarray:
    """``(n_classes, h/f, w/f)`` counts of each class per block.

    One pass per class over byte masks, summed first over the block's rows, then over its columns, in the
    smallest unsigned type that holds ``factor^2`` (uint8 up to factor 15): this moves 8x fewer bytes than
    one-hot counting in uint64 and measured about 2x faster.

    Args:
        classes: ``(h, w)`` int8 class indices (-1 none), or uint8 codes when ``lut`` is given.
        factor: Block size.
        n_classes: Number of classes.
        lut: Optional 256-entry table code -> class (-1 none).

    """
    h, w = classes.shape
    hb, wb = h // factor, w // factor
    cls = classes if lut is None else lut[classes.view(np.uint8)]
    n = factor * factor
    dt = np.uint8 if n <= 0xFF else np.uint16 if n <= 0xFFFF else np.int64
    cnt = np.empty((n_classes, hb, wb), dtype=dt)
    for c in range(n_classes):
        m = (cls == c).view(np.uint8).reshape(hb, factor, w)
        cnt[c] = m.sum(axis=1, dtype=dt).reshape(hb, wb, factor).sum(axis=2, dtype=dt)
    return cnt


#: How netCDF's default int8 fill value shows up in an ``_Unsigned`` LCCS variable.
FILL_HINT = "netCDF's default int8 fill value -127 reads as code 129"

#: What to do with land-cover codes outside the LCCS legend (config ``masks.unknown_lc_codes``).
UnknownCodes = Literal["error", "none"]


class LandCoverError(ValueError):
    """A land-cover raster whose codes are not (or not enough) LCCS codes."""


def unknown_lc_codes(
    codes: np.ndarray, nodata: int, counts: npt.NDArray[np.int64] | None = None
) -> npt.NDArray[np.int64]:
    """Add the pixels per code of ``codes`` that are neither LCCS codes nor nodata (0 or ``nodata``).

    Args:
        codes: uint8 (or int8 viewed as uint8) land-cover codes.
        nodata: The file's nodata code (besides the LCCS nodata 0).
        counts: 256-entry count array to add to (a new one when ``None``).

    Returns:
        ``counts``: pixels per code, non-zero only for unknown codes.

    """
    out = np.zeros(256, dtype=np.int64) if counts is None else counts
    known = lc_class_lut() >= 0
    known[LC_NODATA] = True
    if 0 <= nodata < 256:
        known[nodata] = True
    c = (
        np.asarray(codes).view(np.uint8)
        if np.asarray(codes).dtype == np.int8
        else np.asarray(codes, np.uint8)
    )
    hist = np.bincount(c.ravel(), minlength=256)  # 10x faster than np.unique over the unknown pixels
    hist[known] = 0
    out += hist
    return out


def describe_codes(counts: npt.NDArray[np.int64], limit: int = 10) -> str:
    """``"99 (1,234 pixels), 129 (5 pixels)"`` for the non-zero entries of a 256-entry count array."""
    nz = np.flatnonzero(counts)
    parts = [f"{int(c)} ({int(counts[c]):,} pixels)" for c in nz[:limit]]
    more = f" and {nz.size - limit} more" if nz.size > limit else ""
    return ", ".join(parts) + more


def handle_unknown_lc_codes(counts: npt.NDArray[np.int64], path: str | Path, mode: UnknownCodes) -> int:
    """Raise (``mode="error"``) or warn (``"none"``: the pixels count as no class) about unknown codes.

    Returns:
        The number of pixels with an unknown code.

    Raises:
        LandCoverError: In ``error`` mode when any code is unknown, naming the codes, their pixel counts
            and the file.

    """
    n = int(counts.sum())
    if n == 0:
        return 0
    known = ", ".join(str(c) for c in LC_TOP_CODES)
    what = f"{path}: {n:,} pixels hold codes outside the ESA CCI LCCS legend: {describe_codes(counts)}"
    if counts[129]:
        what += f" ({FILL_HINT}: no data was written there)"
    if mode == "error":
        raise LandCoverError(
            f"{what}. Expected LCCS codes ({known} and their regional subclasses; 0 = no data). "
            "Is this a land cover from another product? To treat them as 'no class', set "
            "masks.unknown_lc_codes: none"
        )
    log.warning("%s; treated as no class (masks.unknown_lc_codes: none)", what)
    return n


@dataclass
class LcStats:
    """What the land-cover mask found in the native raster.

    Attributes:
        n_pixels: Native pixels read.
        n_classified: Pixels with one of the 7 classes.
        n_nodata: Pixels with the nodata code (0 or the file's).
        unknown: 256-entry pixel counts of unknown codes.

    """

    n_pixels: int = 0
    n_classified: int = 0
    n_nodata: int = 0
    unknown: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(256, dtype=np.int64))


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
            out[r0 : r0 + k] = _mode_of_counts(counts).reshape(k, grid.width)
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


def check_lc_coverage(ls_labels: np.ndarray, lc_labels: np.ndarray, min_share: float, what: str) -> float:
    """Share of the LandScan-valid pixels (``ls >= 0``) that have a land-cover class (``lc >= 0``).

    Land under people has land cover: a land cover that leaves most of it without a class is the wrong
    file or legend.

    Raises:
        LandCoverError: If the share is below ``min_share`` (naming it and ``what``).

    """
    valid = np.asarray(ls_labels) >= 0
    n_valid = int(np.count_nonzero(valid))
    if n_valid == 0:
        return 1.0
    share = float(np.count_nonzero(valid & (np.asarray(lc_labels) >= 0))) / n_valid
    if share < min_share:
        raise LandCoverError(
            f"{what}: only {share:.1%} of the {n_valid:,} pixels with LandScan data have a land-cover class "
            f"(expected at least masks.min_lc_share = {min_share:.0%}): wrong land-cover file, legend or "
            "grid? (unknown codes and fill values count as no class)"
        )
    return share


# ---------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------


def write_label_raster(
    path: str | Path,
    labels: np.ndarray,
    grid: Grid,
    classes: Sequence[str] | None = None,
    nodata: int = NO_CLASS,
    tags: dict[str, str] | None = None,
) -> None:
    """Write a label raster on the grid: tiled (256), deflate, EPSG:4326, nodata, ``classes`` tag (JSON).

    The caller is responsible for atomicity (pass a temporary path from ``geoens.io.atomic_path``).

    Raises:
        ValueError: If ``labels`` is not of the grid's shape.

    """
    if labels.shape != grid.shape:
        raise ValueError(f"{path}: label raster shape {labels.shape} != grid {grid.shape}")
    profile = {
        "driver": "GTiff",
        "height": grid.height,
        "width": grid.width,
        "count": 1,
        "dtype": labels.dtype.name,
        "crs": CRS.from_epsg(4326),
        "transform": grid.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 1,
        "BIGTIFF": "IF_SAFER",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(labels, 1)
        all_tags = dict(tags or {})
        if classes is not None:
            all_tags["classes"] = json.dumps(list(classes))
        if all_tags:
            dst.update_tags(**all_tags)


def read_label_raster(path: str | Path, grid: Grid | None = None) -> tuple[np.ndarray, list[str] | None]:
    """Read a label raster written by :func:`write_label_raster` -> ``(labels, classes or None)``.

    Raises:
        ValueError: If ``grid`` is given and the raster is not on it.

    """
    with rasterio.open(path) as ds:
        if grid is not None and (ds.height, ds.width) != grid.shape:
            raise ValueError(f"{path}: raster {ds.height} x {ds.width} is not on the grid {grid.shape}")
        arr = ds.read(1)
        cls = ds.tags().get("classes")
    return arr, (json.loads(cls) if cls else None)


def preview_png(
    path: str | Path,
    labels: np.ndarray,
    classes: Sequence[str] | None,
    title: str,
    max_width: int = 1440,
) -> None:
    """Categorical preview of a label raster (-1 white); a legend when there are at most 24 classes.

    Many-class rasters (S2 cells) get a deterministic hashed colour per class and no legend.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    step = max(1, int(math.ceil(labels.shape[1] / max_width)))
    small = labels[step // 2 :: step, step // 2 :: step].astype(np.int64)
    n = int(small.max()) + 1 if classes is None else len(classes)
    n = max(n, 1)
    if n <= 20:
        cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
        colors = np.array([cmap(i % cmap.N)[:3] for i in range(n)])
    else:
        rng = np.random.default_rng(12345)
        colors = rng.uniform(0.15, 0.95, size=(n, 3))
    img = np.ones(small.shape + (3,), dtype=np.float64)
    ok = (small >= 0) & (small < n)
    img[ok] = colors[small[ok]]
    fig, ax = plt.subplots(figsize=(12, 6.6), dpi=100)
    ax.imshow(img, extent=(-180, 180, -90, 90), interpolation="nearest")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(title)
    if classes is not None and len(classes) <= 24:
        handles = [Patch(color=colors[i], label=str(c)) for i, c in enumerate(classes)]
        handles.append(Patch(facecolor="white", edgecolor="grey", label="no class (-1)"))
        ax.legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


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
    from geoens.io import atomic_path

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
    from geoens.io import atomic_path

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
