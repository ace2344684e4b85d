"""Writers of the demo world's files: population and land cover rasters, metadata, images, contact sheets.

* the LandScan-like population raster (int32 GeoTIFF, water = nodata -2147483647);
* the ESA-CCI-like land cover raster of real LCCS codes: NetCDF laid out like ESA's files (``lccs_class``
  int8 with ``_Unsigned="true"``, or NC_UBYTE) or a uint8 GeoTIFF;
* ``IMG_ID,LAT,LON`` metadata CSVs, image folders of JPEGs and PNG contact sheets of the rendered images
  grouped by land-cover class and population bucket.

The msgpack shards of the training set are written by :mod:`geoens.data.shards`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import rasterio
from PIL import Image, ImageDraw, ImageFont

from geoens.core.constants import LANDSCAN_NODATA, LC_CLASSES, LC_NODATA, LS_BUCKETS
from geoens.core.grid import Grid
from geoens.core.io import atomic_path
from geoens.demo.spec import DEMO_LABEL, F64, U8, pixel_centres

#: Names of the LCCS codes the demo uses (ESA CCI LC product user guide), for ``flag_meanings``.
LCCS_NAMES: Final[dict[int, str]] = {
    0: "no_data",
    10: "cropland_rainfed",
    11: "cropland_rainfed_herbaceous_cover",
    12: "cropland_rainfed_tree_or_shrub_cover",
    20: "cropland_irrigated",
    30: "mosaic_cropland",
    40: "mosaic_natural_vegetation",
    50: "tree_broadleaved_evergreen_closed_to_open",
    60: "tree_broadleaved_deciduous_closed_to_open",
    61: "tree_broadleaved_deciduous_closed",
    62: "tree_broadleaved_deciduous_open",
    70: "tree_needleleaved_evergreen_closed_to_open",
    71: "tree_needleleaved_evergreen_closed",
    72: "tree_needleleaved_evergreen_open",
    80: "tree_needleleaved_deciduous_closed_to_open",
    81: "tree_needleleaved_deciduous_closed",
    82: "tree_needleleaved_deciduous_open",
    90: "tree_mixed",
    100: "mosaic_tree_and_shrub",
    110: "mosaic_herbaceous",
    120: "shrubland",
    121: "shrubland_evergreen",
    122: "shrubland_deciduous",
    130: "grassland",
    140: "lichens_and_mosses",
    150: "sparse_vegetation",
    151: "sparse_tree",
    152: "sparse_shrub",
    153: "sparse_herbaceous",
    160: "tree_cover_flooded_fresh_or_brakish_water",
    170: "tree_cover_flooded_saline_water",
    180: "shrub_or_herbaceous_cover_flooded",
    190: "urban",
    200: "bare_areas",
    201: "bare_areas_consolidated",
    202: "bare_areas_unconsolidated",
    210: "water",
    220: "snow_and_ice",
}


def _write_global_geotiff(
    path: str | Path, arr: npt.NDArray[np.int32] | npt.NDArray[np.uint8], dtype: str, nodata: int, **tags: str
) -> None:
    """Write one band of ``dtype`` as a global GeoTIFF (EPSG:4326, deflate, 256 px tiles, no overviews)."""
    h, w = arr.shape
    profile = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": 1,
        "dtype": dtype,
        "crs": "EPSG:4326",
        "transform": Grid(h, w).transform,
        "nodata": nodata,
        "compress": "deflate",
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(arr, 1)
        dst.update_tags(**tags)


def write_landscan(path: str | Path, ls: npt.NDArray[np.int32]) -> None:
    """Write the population raster as a LandScan-like int32 GeoTIFF (EPSG:4326, global, no overviews)."""
    tags = {"source": f"geoens {DEMO_LABEL}", "units": "people per cell"}
    _write_global_geotiff(path, ls, "int32", LANDSCAN_NODATA, **tags)


def _lccs_flags() -> tuple[npt.NDArray[np.uint8], str]:
    codes = np.asarray(sorted(LCCS_NAMES), np.uint8)
    return codes, " ".join(LCCS_NAMES[int(c)] for c in codes)


#: The two encodings real ESA CCI LC NetCDF copies come in: ``byte`` = ``lccs_class`` NC_BYTE with
#: ``_Unsigned="true"`` in the NetCDF-4 classic model (ESA's own files); ``ubyte`` = NC_UBYTE (NetCDF-4).
LC_NETCDF_ENCODINGS: Final[tuple[str, ...]] = ("byte", "ubyte")


def write_landcover_netcdf(path: str | Path, lc: npt.NDArray[np.uint8], encoding: str = "byte") -> None:
    """Write land cover like ESA CCI LC's NetCDF (see :func:`write_lccs_netcdf`) from an array in memory."""
    write_lccs_netcdf(path, lc.shape, lambda r0, n: lc[r0 : r0 + n], encoding=encoding)


def write_lccs_netcdf(
    path: str | Path,
    shape: tuple[int, int],
    rows: Callable[[int, int], npt.NDArray[np.uint8]],
    encoding: str = "byte",
    strip: int = 2025,
    complevel: int = 4,
    title: str = f"ESA CCI Land Cover Map ({DEMO_LABEL})",
) -> None:
    """Write LCCS codes in ESA CCI LC's NetCDF layout, strip by strip: ``lccs_class(time, lat, lon)``.

    Latitudes descend (north first, as ESA's), a ``crs`` grid-mapping variable carries EPSG:4326, chunks are
    2025 x 2025 like ESA's. ``encoding="byte"``: NC_BYTE with ``_Unsigned="true"`` in the NetCDF-4 classic
    model, as ESA distributes it (codes above 127 are stored as negative int8; GDAL's netCDF driver reads
    ``_Unsigned`` bytes from the classic model as uint8, from the enhanced model it fails with "Numeric
    conversion not representable"). ``encoding="ubyte"``: NC_UBYTE (NetCDF-4), as re-encoded copies have it.

    Args:
        path: The file to write (atomically).
        shape: ``(rows, cols)`` of the global raster.
        rows: ``rows(r0, n)`` returns the ``n x cols`` uint8 codes of rows ``r0 .. r0 + n - 1``.
        encoding: ``byte`` or ``ubyte`` (:data:`LC_NETCDF_ENCODINGS`).
        strip: Rows written per call of ``rows``.
        complevel: zlib level.
        title: The file's ``title`` attribute.
    """
    import netCDF4  # deferred: netCDF4 is optional and heavy; only the NetCDF writer needs it

    if encoding not in LC_NETCDF_ENCODINGS:
        raise ValueError(f"NetCDF encoding {encoding!r}: expected one of {LC_NETCDF_ENCODINGS}")
    h, w = shape
    codes, meanings = _lccs_flags()
    fmt: Literal["NETCDF4_CLASSIC", "NETCDF4"] = "NETCDF4_CLASSIC" if encoding == "byte" else "NETCDF4"
    with atomic_path(path) as tmp, netCDF4.Dataset(tmp, "w", format=fmt) as ds:
        ds.title = title
        ds.Conventions = "CF-1.6"
        ds.source = "geoens"
        ds.geospatial_lat_min, ds.geospatial_lat_max = -90.0, 90.0
        ds.geospatial_lon_min, ds.geospatial_lon_max = -180.0, 180.0
        ds.createDimension("time", 1)
        ds.createDimension("lat", h)
        ds.createDimension("lon", w)
        t = ds.createVariable("time", "i4", ("time",))
        t.standard_name, t.units = "time", "days since 1970-01-01"
        t[:] = [16801]
        la = ds.createVariable("lat", "f8", ("lat",))
        la.standard_name, la.units, la.long_name = "latitude", "degrees_north", "latitude"
        la[:] = pixel_centres(h, -90.0, 90.0, descending=True)
        lo = ds.createVariable("lon", "f8", ("lon",))
        lo.standard_name, lo.units, lo.long_name = "longitude", "degrees_east", "longitude"
        lo[:] = pixel_centres(w, -180.0, 180.0)
        crs = ds.createVariable("crs", "i4")
        crs.grid_mapping_name = "latitude_longitude"
        crs.wkt = crs.crs_wkt = rasterio.crs.CRS.from_epsg(4326).to_wkt()
        crs.semi_major_axis, crs.inverse_flattening = 6378137.0, 298.257223563
        dtype = "i1" if encoding == "byte" else "u1"
        v = ds.createVariable(  # type: ignore[call-overload]  # complevel: int, not Literal[0..9]
            "lccs_class",
            dtype,
            ("time", "lat", "lon"),
            zlib=True,
            complevel=complevel,
            chunksizes=(1, min(h, 2025), min(w, 2025)),
            fill_value=np.int8(0) if encoding == "byte" else np.uint8(0),
        )
        v.set_auto_maskandscale(False)
        if encoding == "byte":
            v.setncattr("_Unsigned", "true")
        v.long_name = "Land cover class defined in LCCS"
        v.standard_name = "land_cover_lccs"
        v.grid_mapping = "crs"
        v.flag_values = codes.view(np.int8) if encoding == "byte" else codes
        v.flag_meanings = meanings
        for r0 in range(0, h, strip):
            n = min(strip, h - r0)
            block = np.ascontiguousarray(rows(r0, n), dtype=np.uint8)
            v[0, r0 : r0 + n, :] = block.view(np.int8) if encoding == "byte" else block


def write_landcover_geotiff(path: str | Path, lc: npt.NDArray[np.uint8]) -> None:
    """Write land cover as a uint8 GeoTIFF (EPSG:4326, global, nodata 0)."""
    _write_global_geotiff(path, lc, "uint8", LC_NODATA, source=f"geoens {DEMO_LABEL}")


def encode_jpeg(img: U8, quality: int = 90) -> bytes:
    """JPEG bytes of one ``S x S x 3`` uint8 image (baseline, no metadata: deterministic bytes)."""
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_metadata(path: str | Path, ids: list[str], lat: F64, lon: F64) -> None:
    """Write an ``IMG_ID,LAT,LON`` CSV (6 decimals, ~0.1 m)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(["IMG_ID", "LAT", "LON"])
        for i, a, b in zip(ids, lat, lon, strict=True):
            wr.writerow([i, f"{a:.6f}", f"{b:.6f}"])


def write_image_folder(folder: str | Path, ids: list[str], images: U8, quality: int = 90) -> None:
    """Write each image as ``folder/<id>`` (ids are file names ending in ``.jpg``)."""
    with atomic_path(folder, is_dir=True) as tmp:
        for img_id, img in zip(ids, images, strict=True):
            (tmp / img_id).write_bytes(encode_jpeg(img, quality))


def write_contact_sheet(
    path: str | Path,
    images: U8,
    lc_class: npt.NDArray[np.int64],
    ls_bucket: npt.NDArray[np.int64],
    title: str,
    per_row: int = 12,
) -> None:
    """Write a PNG of sample images: one row per LC class, then one per population bucket, labelled."""
    s = images.shape[1]
    scale = max(1, 64 // s)
    cell = s * scale + 2
    label_w, head = 190, 24
    rows: list[tuple[str, npt.NDArray[np.int64]]] = []
    for k, name in enumerate(LC_CLASSES):
        idx = np.flatnonzero(lc_class == k)
        rows.append((f"LC {k} {name} (n={idx.size})", idx[:per_row]))
    for k, name in enumerate(LS_BUCKETS):
        idx = np.flatnonzero(ls_bucket == k)
        rows.append((f"LS {k} {name} (n={idx.size})", idx[:per_row]))
    sheet = Image.new("RGB", (label_w + per_row * cell, head + len(rows) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text((4, 4), f"{title} - {DEMO_LABEL}", fill="black", font=font)
    for r, (label, idx) in enumerate(rows):
        y = head + r * cell
        draw.text((4, y + cell // 2 - 6), label, fill="black", font=font)
        for c, i in enumerate(idx):
            tile = Image.fromarray(images[i], "RGB")
            if scale > 1:
                tile = tile.resize((s * scale, s * scale), Image.Resampling.NEAREST)
            sheet.paste(tile, (label_w + c * cell + 1, y + 1))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
