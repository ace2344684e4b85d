"""Seeded writers of tiny fake inputs and artifacts, in their real formats, for the tests.

One home for the fixtures the test files share: global GeoTIFFs (population, land cover), ESA-CCI-like
land cover NetCDF, msgpack shards of ``{"id", "image"}`` records, JPEGs, ``IMG_ID,LAT,LON`` metadata,
GeoEstimation partition CSVs and label Parquet folders. Every writer is deterministic: what a test
writes depends only on its arguments (and seeds), so assertions can rely on exact values.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import from_bounds

GLOBAL_BOUNDS = (-180.0, -90.0, 180.0, 90.0)
#: GeoEstimation partition CSV header (the three first lines of cells_50_*.csv).
PARTITION_HEADER = "class_label,hex_id,imgs_per_cell,latitude_mean,longitude_mean"


# --------------------------------------------------------------------------------------------------
# rasters
# --------------------------------------------------------------------------------------------------
def write_geotiff(
    path: Path,
    arr: np.ndarray,
    nodata: float | None = None,
    crs: str = "EPSG:4326",
    bounds: tuple[float, float, float, float] = GLOBAL_BOUNDS,
    overviews: Sequence[int] = (),
    **profile: Any,
) -> Path:
    """One-band GeoTIFF of ``arr`` (its dtype) over ``bounds`` (global by default); ``profile`` adds
    creation options (``tiled``, ``blockxsize``, ``compress``, ...). Overview factors are built nearest.
    """
    h, w = arr.shape
    prof = {
        "driver": "GTiff",
        "height": h,
        "width": w,
        "count": 1,
        "dtype": arr.dtype.name,
        "crs": CRS.from_string(crs),
        "transform": from_bounds(*bounds, w, h),
        "nodata": nodata,
        **profile,
    }
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(arr, 1)
        if overviews:
            dst.build_overviews(list(overviews), Resampling.nearest)
    return path


def write_lc_netcdf(
    path: Path,
    codes: np.ndarray,
    south_up: bool = False,
    time_dim: bool = True,
    fill: int | None = 0,
    crs_var: bool = False,
    chunks: tuple[int, ...] | None = None,
    units: bool = False,
) -> Path:
    """ESA CCI LC layout: ``lccs_class`` int8 with ``_Unsigned = "true"`` in NetCDF-4 (HDF5).

    Args:
        path: The file to write.
        codes: ``H x W`` LCCS codes (uint8; int8 raw values are stored as they are).
        south_up: Store the rows (and latitudes) south first.
        time_dim: Dimensions ``time, lat, lon`` (ESA's) instead of ``lat, lon``.
        fill: ``_FillValue`` of ``lccs_class`` (None: the library default).
        crs_var: Add a ``crs`` grid-mapping variable with EPSG:4326's WKT.
        chunks: Chunk sizes of ``lccs_class`` (None: the library's).
        units: Give ``lat`` and ``lon`` their CF units.

    """
    import netCDF4  # deferred: netCDF4 is optional; only the NetCDF tests write it

    h, w = codes.shape
    lat = 90.0 - (np.arange(h) + 0.5) * 180.0 / h
    lon = -180.0 + (np.arange(w) + 0.5) * 360.0 / w
    data = codes
    if south_up:
        lat, data = lat[::-1], codes[::-1]
    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        dims: tuple[str, ...] = ("lat", "lon")
        if time_dim:
            nc.createDimension("time", 1)
            dims = ("time", "lat", "lon")
        nc.createDimension("lat", h)
        nc.createDimension("lon", w)
        la = nc.createVariable("lat", "f8", ("lat",))
        la[:] = lat
        lo = nc.createVariable("lon", "f8", ("lon",))
        lo[:] = lon
        if units:
            la.units, lo.units = "degrees_north", "degrees_east"
        if crs_var:
            crs = nc.createVariable("crs", "i4")
            crs.wkt = CRS.from_epsg(4326).to_wkt()
        kw: dict[str, Any] = {} if fill is None else {"fill_value": np.int8(fill)}
        if chunks is not None:
            kw["chunksizes"] = chunks
        var = nc.createVariable("lccs_class", "i1", dims, zlib=True, **kw)
        var.set_auto_maskandscale(False)
        var.setncattr("_Unsigned", "true")
        if crs_var:
            var.grid_mapping = "crs"
        raw = np.ascontiguousarray(data)
        raw = raw if raw.dtype == np.int8 else raw.astype(np.uint8).view(np.int8)
        var[:] = raw[None] if time_dim else raw
    return path


# --------------------------------------------------------------------------------------------------
# images and msgpack shards
# --------------------------------------------------------------------------------------------------
def jpeg_bytes(img: np.ndarray | Image.Image, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB image (a ``rows x cols x 3`` uint8 array or a PIL image)."""
    buf = io.BytesIO()
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def noise_jpeg(seed: int, size: tuple[int, int] = (40, 48), quality: int = 90) -> bytes:
    """JPEG bytes of uniform RGB noise (``size`` = rows, cols) from ``seed``."""
    rng = np.random.default_rng(seed)
    return jpeg_bytes(rng.integers(0, 256, (*size, 3), dtype=np.uint8), quality)


def colour_jpeg(
    colour: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    size: tuple[int, int] = (32, 32),
    sd: float = 20.0,
    quality: int = 90,
) -> bytes:
    """JPEG bytes of one colour plus Gaussian noise of ``sd`` (drawn from ``rng``), clipped to uint8."""
    arr = np.clip(np.asarray(colour) + rng.normal(0, sd, (*size, 3)), 0, 255).astype(np.uint8)
    return jpeg_bytes(arr, quality)


def write_msgpack_shards(root: Path, shards: Iterable[Iterable[Mapping[str, Any]]]) -> list[Path]:
    """Write ``root/shard-NNN.msgpack``, one per item of ``shards``: its records (msgpack maps, keys in the
    given order, ``bytes`` as bin) one after another. Creates ``root``; returns the shard paths.
    """
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, records in enumerate(shards):
        path = root / f"shard-{s:03d}.msgpack"
        with open(path, "wb") as fh:
            for rec in records:
                fh.write(msgpack.packb(rec, use_bin_type=True))
        paths.append(path)
    return paths


def round_robin(items: Sequence[Any], n: int) -> list[Sequence[Any]]:
    """``items`` dealt over ``n`` shards: item ``i`` goes to shard ``i mod n``."""
    return [items[s::n] for s in range(n)]


def image_records(records: Mapping[str, bytes]) -> list[dict[str, Any]]:
    """``{"id", "image"}`` maps of ``id -> bytes``, in order."""
    return [{"id": image_id, "image": data} for image_id, data in records.items()]


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------
def write_metadata_csv(path: Path, rows: Iterable[str], header: str = "IMG_ID,LAT,LON") -> Path:
    """A metadata CSV: ``header`` then the given lines (written as they are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def write_partition_csv(path: Path, rows: Iterable[str], num_images: int = 24, header: bool = True) -> Path:
    """A GeoEstimation partition CSV: its two comment lines, the header (unless ``header`` is False), then
    the given data lines.
    """
    lines = [f"num_images: {num_images}", "min_concept_probability: ---"]
    if header:
        lines.append(PARTITION_HEADER)
    path.write_text("\n".join([*lines, *rows]) + "\n")
    return path


def write_label_parts(folder: Path, frame: pd.DataFrame, n_parts: int = 1) -> Path:
    """A label Parquet folder: rows dealt over ``part-NNNNN.parquet`` files (row i to part i mod n)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n_parts):
        frame.iloc[k::n_parts].to_parquet(folder / f"part-{k:05d}.parquet", index=False)
    return folder


def write_prediction_parquet(path: Path, ids: Sequence[str], probs: np.ndarray) -> Path:
    """A prediction artifact: ``image_id``, ``probs`` (fixed-size float32 lists) and ``top_class`` (int32)."""
    c = probs.shape[1]
    arr = pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel(), pa.float32()), c)
    tab = pa.table({"image_id": ids, "probs": arr, "top_class": pa.array(probs.argmax(1).astype(np.int32))})
    pq.write_table(tab, path)
    return path
