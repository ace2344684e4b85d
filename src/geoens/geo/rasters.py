"""Native global rasters (LandScan, ESA CCI land cover) and label rasters on the grid: reading and writing.

Reading.
    :func:`open_checked` opens a GeoTIFF (through rasterio/GDAL) or a NetCDF file (through netCDF4: GDAL's
    netCDF driver honours ``_Unsigned`` by asking the netCDF library for unsigned bytes, which fails on
    NetCDF-4/HDF5 files with "Numeric conversion not representable"; so ``lccs_class`` is read raw as int8 and
    viewed as uint8 here, never as signed). It validates CRS (geographic WGS84), extent (global, half a pixel
    tolerance), orientation (north-up), dtype (int32 LandScan, uint8 land cover) and nodata, and raises
    ``ValueError`` naming the file and what was found. Reads are always at native resolution, by row window
    (``read(out_shape=...)`` would silently read an overview). :func:`check_population` finds negative
    population values that are not the nodata value.

Writing.
    :func:`write_label_raster`: tiled (256), deflate, EPSG:4326 GeoTIFF with nodata and a ``classes`` tag
    (JSON list), read back by :func:`read_label_raster`; :func:`preview_png` draws a categorical preview with
    a legend. The mask stage that computes the label rasters is :mod:`geoens.geo.masks` (LS, LC) and
    :mod:`geoens.geo.s2mask` (S2 cells).
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

from geoens.core.constants import LANDSCAN_NODATA, LC_NODATA, NO_CLASS
from geoens.core.grid import Grid

log = logging.getLogger(__name__)

Kind = Literal["landscan", "landcover"]

#: Expected native dtype per input kind.
EXPECTED_DTYPE: dict[str, str] = {"landscan": "int32", "landcover": "uint8"}
#: Default nodata per input kind when the file declares none.
DEFAULT_NODATA: dict[str, int] = {"landscan": LANDSCAN_NODATA, "landcover": LC_NODATA}
#: NetCDF variable read for the land cover.
LC_VARIABLE = "lccs_class"
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
    import netCDF4  # deferred: optional heavy dependency, needed only for NetCDF land cover

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

    The caller is responsible for atomicity (pass a temporary path from ``geoens.core.io.atomic_path``).

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
    # deferred: matplotlib is heavy and only needed for previews
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: see above
    from matplotlib.patches import Patch  # deferred: see above

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
