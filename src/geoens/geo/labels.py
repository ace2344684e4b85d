"""Relabel geotagged images with satellite attributes (DESIGN sections 3 and 5; ARCHITECTURE "label columns").

The stage has four parts, each a plain function so that workflow scripts stay thin:

1. :func:`geoens.data.metadata.read_metadata` reads and cleans an ``IMG_ID, LAT, LON`` CSV;
   :func:`geoens.data.shards.available_ids` lists the images that exist (msgpack shards, or an image folder).
2. :func:`sample_landscan` / :func:`sample_landcover` sample a raster at points, *nearest native pixel* (the
   pixel containing the point, as the paper), reading each raster block that holds points once (never one
   read per point, :func:`read_pixels`).
3. :func:`geoens.geo.buckets.ls_bucket_edges` derives the four LandScan buckets from the values sampled at the
   training geotags; :func:`geoens.geo.buckets.bucketize` (the canonical LS bucket rule) applies them.
   :func:`lc_labels` folds LCCS codes into 22 top codes and 7 classes.
4. :func:`relabel_train` / :func:`relabel_testset` put everything together (S2 cells through
   :mod:`geoens.geo.partitions`), with a seeded train/val split and the paper's urban cap (``attr_keep``);
   :func:`geoens.data.labeltable.write_label_shards` writes ``part-NNNNN.parquet`` files.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import rasterio
from rasterio.io import DatasetReader
from rasterio.windows import Window

from geoens.core.constants import LC_CLASSES, LC_URBAN, LS_BUCKETS, lc_lookup_tables
from geoens.core.io import write_json
from geoens.core.types import BoolArray, FloatArray
from geoens.data.labeltable import LABEL_COLUMNS, write_label_shards, write_label_table
from geoens.data.metadata import BadRows, read_metadata
from geoens.data.shards import available_ids
from geoens.geo import s2
from geoens.geo.buckets import bucketize, load_ls_edges, ls_bucket_edges
from geoens.geo.landcover import LandCoverError, describe_codes, handle_unknown_lc_codes, unknown_lc_codes
from geoens.geo.partitions import LEVELS, Partition, cell_of, read_partitions
from geoens.geo.rasters import Kind, NegativePopulationError, check_population, open_checked, read_window

log = logging.getLogger(__name__)


#: Largest window (bytes) read from a raster at once.
MAX_WINDOW_BYTES = 64 * 1024 * 1024
#: File suffixes read block-wise through rasterio (tiles holding points only).
GEOTIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")


# ---------------------------------------------------------------------------------------------------
# raster sampling (nearest native pixel, block-wise)
# ---------------------------------------------------------------------------------------------------


def read_pixels(
    ds: DatasetReader,
    rows: npt.ArrayLike,
    cols: npt.ArrayLike,
    band: int = 1,
    max_window_bytes: int = MAX_WINDOW_BYTES,
) -> npt.NDArray[Any]:
    """Values of the pixels ``(rows, cols)`` of a rasterio dataset, reading each needed block once.

    Pixels are grouped by the raster's natural blocks (tiles, or strips of rows for a striped file): for every
    row of blocks, runs of adjacent blocks that hold pixels are read as one window (at most
    ``max_window_bytes``); blocks without a requested pixel are never read, and no read is per point.

    Args:
        ds: An open raster.
        rows: Row of each pixel (``0 <= rows < ds.height``).
        cols: Column of each pixel.
        band: Band to read.
        max_window_bytes: Largest window read at once.

    Returns:
        The values, in the band's dtype, with the shape of ``rows``.

    """
    r_all = np.asarray(rows, dtype=np.int64)
    c_all = np.asarray(cols, dtype=np.int64)
    shape = r_all.shape
    r_all, c_all = r_all.ravel(), c_all.ravel()
    h, w = ds.height, ds.width
    if r_all.size and (r_all.min() < 0 or r_all.max() >= h or c_all.min() < 0 or c_all.max() >= w):
        raise ValueError(f"{ds.name}: pixel index outside the {h} x {w} raster")
    dtype = np.dtype(ds.dtypes[band - 1])
    values = np.zeros(r_all.shape, dtype=dtype)
    if r_all.size == 0:
        return values.reshape(shape)
    bh, bw = ds.block_shapes[band - 1]
    itemsize = dtype.itemsize
    if bw >= w:  # striped: read strips of several blocks of full-width rows
        rows_per_read = max(1, max_window_bytes // (w * itemsize))
        bh = max(bh, (rows_per_read // bh) * bh)
        bw = w
    max_tiles = max(1, max_window_bytes // (bh * bw * itemsize))
    tile_row = r_all // bh
    order = np.lexsort((c_all, tile_row))
    idx, r, c, tile_row = order, r_all[order], c_all[order], tile_row[order]
    tile_col = c // bw
    starts = np.flatnonzero(np.r_[True, tile_row[1:] != tile_row[:-1]])
    ends = np.r_[starts[1:], idx.size]
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        r0 = int(tile_row[s]) * bh
        r1 = min(h, r0 + bh)
        tcs = np.unique(tile_col[s:e])
        # runs of adjacent tiles, each at most max_tiles long
        for run in np.split(tcs, np.flatnonzero(np.diff(tcs) != 1) + 1):
            for k in range(0, run.size, max_tiles):
                chunk = run[k : k + max_tiles]
                c0 = int(chunk[0]) * bw
                c1 = min(w, (int(chunk[-1]) + 1) * bw)
                lo_i = s + int(np.searchsorted(c[s:e], c0, side="left"))
                hi_i = s + int(np.searchsorted(c[s:e], c1, side="left"))
                block = read_window(ds, ds.name, Window(c0, r0, c1 - c0, r1 - r0), band)
                values[idx[lo_i:hi_i]] = block[r[lo_i:hi_i] - r0, c[lo_i:hi_i] - c0]
    return values.reshape(shape)


def sample_native(
    path: str | Path, kind: Kind, lat: npt.ArrayLike, lon: npt.ArrayLike
) -> tuple[npt.NDArray[Any], int]:
    """Raw values of the native pixel containing each point (the paper's "nearest pixel"), and the nodata.

    The raster is opened and validated by :func:`geoens.geo.rasters.open_checked`; the pixel convention is the
    grid's (DESIGN 2, :meth:`geoens.core.grid.Grid.pixel_of` on the native raster). A GeoTIFF is then read
    block-wise by :func:`read_pixels` (only the tiles that hold points); other formats (NetCDF) by
    :meth:`geoens.geo.rasters.NativeRaster.sample` (the row strips that hold points).

    Returns:
        ``(values, nodata)``: values in the raster's dtype (int32 LandScan, uint8 land cover).

    """
    p = Path(path)
    with open_checked(p, kind) as raster:
        nodata = int(raster.nodata)
        if p.suffix.lower() in GEOTIFF_SUFFIXES:
            rows, cols = raster.native_grid.pixel_of(lat, lon)
            with rasterio.open(p) as ds:
                values = read_pixels(ds, rows, cols)
        else:
            values = np.asarray(raster.sample(lat, lon))
        if values.dtype != raster.dtype:
            values = values.view(raster.dtype) if values.dtype.itemsize == raster.dtype.itemsize else values
    return values, nodata


def sample_landscan(path: str | Path, lat: npt.ArrayLike, lon: npt.ArrayLike) -> FloatArray:
    """LandScan values at points (nearest native pixel), float64 with NaN for nodata."""
    raw, nodata = sample_native(path, "landscan", lat, lon)
    n_neg, values = check_population(raw, nodata, path)
    if n_neg:
        raise NegativePopulationError(path, n_neg, values, nodata)
    out = raw.astype(np.float64)
    out[raw == nodata] = np.nan
    return out


def sample_landcover(path: str | Path, lat: npt.ArrayLike, lon: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Raw LCCS codes at points (nearest native pixel), uint8 (0 = nodata, as the file's nodata)."""
    raw, nodata = sample_native(path, "landcover", lat, lon)
    codes = np.asarray(raw).astype(np.uint8, copy=False)
    if nodata != 0:
        codes = np.where(codes == nodata, 0, codes).astype(np.uint8)
    return codes


# ---------------------------------------------------------------------------------------------------
# LC classes
# ---------------------------------------------------------------------------------------------------


def lc_labels(codes: npt.ArrayLike) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int8]]:
    """Raw LCCS codes -> ``(top code (0 = none), merged 7-class index (-1 = none))``."""
    to_top, to_class = lc_lookup_tables()
    c = np.asarray(codes, dtype=np.uint8)
    top = np.asarray(to_top, dtype=np.uint8)[c]
    cls = np.asarray(to_class, dtype=np.int8)[c]
    return top, cls


# ---------------------------------------------------------------------------------------------------
# split and urban cap
# ---------------------------------------------------------------------------------------------------


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)]))


def assign_split(n: int, val_fraction: float, seed: int) -> npt.NDArray[np.object_]:
    """``"train"``/``"val"`` per row: exactly ``round(n * val_fraction)`` random rows (seeded) are ``val``."""
    n_val = int(round(n * val_fraction))
    split = np.full(n, "train", dtype=object)
    if n_val:
        split[_rng(seed, 1).choice(n, size=n_val, replace=False)] = "val"
    return split


def urban_cap_keep(lc7: npt.ArrayLike, groups: npt.ArrayLike, cap: float, seed: int) -> BoolArray:
    """``attr_keep``: within each group (split), drop random urban rows so urban is at most ``cap`` of it.

    With ``u`` urban and ``o`` other rows, ``floor(cap * o / (1 - cap))`` urban rows are kept (all of them if
    fewer), chosen at random (seeded), so ``kept urban / kept rows <= cap``.
    """
    lc = np.asarray(lc7)
    grp = np.asarray(groups)
    keep = np.ones(lc.shape, dtype=bool)
    rng = _rng(seed, 2)
    for g in sorted(set(grp.tolist())):
        in_g = grp == g
        urban = np.flatnonzero(in_g & (lc == LC_URBAN))
        n_other = int(in_g.sum()) - urban.size
        allowed = urban.size if cap >= 1 else min(urban.size, int(math.floor(cap * n_other / (1.0 - cap))))
        if allowed < urban.size:
            kept = rng.choice(urban, size=allowed, replace=False)
            drop = np.setdiff1d(urban, kept, assume_unique=True)
            keep[drop] = False
    return keep


# ---------------------------------------------------------------------------------------------------
# relabelling
# ---------------------------------------------------------------------------------------------------


def point_labels(
    meta: pd.DataFrame,
    landscan: str | Path,
    landcover: str | Path,
    partitions: Mapping[str, Partition],
) -> pd.DataFrame:
    """Attribute and cell labels of cleaned metadata (``image_id, lat, lon``), without bucket or split.

    Args:
        meta: Output of :func:`geoens.data.metadata.read_metadata`.
        landscan: LandScan raster.
        landcover: Land-cover raster (GeoTIFF or NetCDF).
        partitions: ``{"coarse", "middle", "fine"}`` -> :class:`geoens.geo.partitions.Partition`.

    Returns:
        Columns ``image_id, lat, lon, ls_value, lc_code, lc22, lc7, cell_coarse, cell_middle, cell_fine``.

    """
    lat = meta["lat"].to_numpy(dtype=np.float64)
    lon = meta["lon"].to_numpy(dtype=np.float64)
    log.info("sampling LandScan at %d points", lat.size)
    ls_value = sample_landscan(landscan, lat, lon)
    log.info("sampling land cover at %d points", lat.size)
    lc_code = sample_landcover(landcover, lat, lon)
    lc22, lc7 = lc_labels(lc_code)
    leaf = s2.latlng_to_leaf(lat, lon)
    out = pd.DataFrame(
        {
            "image_id": meta["image_id"].reset_index(drop=True),
            "lat": lat,
            "lon": lon,
            "ls_value": ls_value,
            "lc_code": lc_code,
            "lc22": lc22,
            "lc7": lc7,
        }
    )
    for level in LEVELS:
        out[f"cell_{level}"] = cell_of(leaf, partitions[level])
    return out


def _finish(
    frame: pd.DataFrame, edges_log10: npt.ArrayLike, split: npt.ArrayLike, attr_keep: BoolArray
) -> pd.DataFrame:
    frame = frame.copy()
    frame["ls_bucket"] = bucketize(frame["ls_value"].to_numpy(), edges_log10)
    frame["split"] = np.asarray(split, dtype=object)
    frame["attr_keep"] = attr_keep
    return frame.loc[:, list(LABEL_COLUMNS)].reset_index(drop=True)


def relabel_train(
    meta: pd.DataFrame,
    landscan: str | Path,
    landcover: str | Path,
    partitions: Mapping[str, Partition],
    val_fraction: float,
    urban_cap: float,
    seed: int,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Label the training set: LS edges from all kept rows, seeded train/val split, urban cap per split.

    Returns:
        ``(labels, ls_edges)``: the table with :data:`LABEL_COLUMNS` (file order) and the edges record.

    """
    frame = point_labels(meta, landscan, landcover, partitions)
    try:
        edges = ls_bucket_edges(frame["ls_value"].to_numpy())
    except ValueError as exc:
        raise ValueError(f"{landscan} at {len(frame)} training geotags: {exc}") from exc
    split = assign_split(len(frame), val_fraction, seed)
    keep = urban_cap_keep(frame["lc7"].to_numpy(), split, urban_cap, seed)
    return _finish(frame, edges["edges_log10"], split, keep), edges


def relabel_testset(
    meta: pd.DataFrame,
    landscan: str | Path,
    landcover: str | Path,
    partitions: Mapping[str, Partition],
    edges_log10: npt.ArrayLike,
) -> pd.DataFrame:
    """Label a test set with the training set's LS edges and partitions (``split = "test"``, all kept)."""
    frame = point_labels(meta, landscan, landcover, partitions)
    n = len(frame)
    return _finish(frame, edges_log10, np.full(n, "test", dtype=object), np.ones(n, dtype=bool))


def summarize(dataset: str, labels: pd.DataFrame, bad: BadRows) -> dict[str, Any]:
    """Build the ``<dataset>_summary.json`` record: bad rows by reason, rows kept, class and split counts."""

    def counts(col: str, names: Sequence[str]) -> dict[str, int]:
        vc = labels[col].value_counts()
        out = {name: int(vc.get(i, 0)) for i, name in enumerate(names)}
        out["none"] = int(vc.get(-1, 0))
        return out

    per_split = {str(k): int(v) for k, v in labels["split"].value_counts().sort_index().items()}
    return {
        "dataset": dataset,
        **bad.to_dict(),
        "rows_kept": len(labels),
        "split": per_split,
        "attr_keep": int(labels["attr_keep"].sum()),
        "ls_bucket": counts("ls_bucket", LS_BUCKETS),
        "lc7": counts("lc7", LC_CLASSES),
        "lc7_attr_keep": {
            name: int(((labels["lc7"] == i) & labels["attr_keep"]).sum()) for i, name in enumerate(LC_CLASSES)
        },
        "ls_nodata": int(labels["ls_value"].isna().sum()),
        "cells_missing": {lv: int((labels[f"cell_{lv}"] < 0).sum()) for lv in LEVELS},
    }


def write_summary(path: str | Path, summary: Mapping[str, Any]) -> None:
    """Write the summary JSON atomically."""
    write_json(path, dict(summary))


# ---------------------------------------------------------------------------------------------------
# rule entry points (called by workflow_scripts/labels_*.py)
# ---------------------------------------------------------------------------------------------------


def _partition_paths(partitions_dir_or_paths: str | Path | Mapping[str, str | Path]) -> dict[str, Partition]:
    if isinstance(partitions_dir_or_paths, Mapping):
        paths = dict(partitions_dir_or_paths)
    else:
        root = Path(partitions_dir_or_paths)
        paths = {lv: root / f"{lv}.csv" for lv in LEVELS}
    return read_partitions(paths)


#: Defaults of the config's ``masks`` section (land-cover sanity checks).
MASKS_DEFAULTS: dict[str, Any] = {"unknown_lc_codes": "error", "min_lc_share": 0.5}


def check_lc_labels(
    labels: pd.DataFrame, landcover: str | Path, dataset: str, masks_cfg: Mapping[str, Any] | None = None
) -> dict[str, int]:
    """Land-cover sanity of a labelled set: unknown LCCS codes, and the share of images with a class.

    Args:
        labels: The label table (``lc_code``, ``lc7``, ``ls_value``).
        landcover: The land-cover raster the codes came from (for the messages).
        dataset: The set's name (for the messages).
        masks_cfg: The config's ``masks`` section (``unknown_lc_codes``: ``error`` | ``none``,
            ``min_lc_share``); defaults :data:`MASKS_DEFAULTS`.

    Returns:
        ``{code: images}`` of the unknown codes (empty unless ``unknown_lc_codes: none``).

    Raises:
        LandCoverError: On an unknown code (``error`` mode), or when fewer than ``min_lc_share`` of the
            images with LandScan data have a land-cover class (``lc7`` is "none" for the others).

    """
    cfg = {**MASKS_DEFAULTS, **(masks_cfg or {})}
    codes = labels["lc_code"].to_numpy(dtype=np.uint8)
    unknown = unknown_lc_codes(codes, 0)
    where = f"{landcover} at the {len(labels):,} geotags of {dataset}"
    with_ls = np.isfinite(labels["ls_value"].to_numpy(dtype=np.float64))
    n_ls = int(with_ls.sum())
    n_lc = int((with_ls & (labels["lc7"].to_numpy() >= 0)).sum())
    if n_ls and n_lc / n_ls < float(cfg["min_lc_share"]):
        codes_seen = f"; unknown codes {describe_codes(unknown)}" if unknown.any() else ""
        raise LandCoverError(
            f"{where}: lc7 is 'none' for {n_ls - n_lc:,} of the {n_ls:,} images with LandScan data (only "
            f"{n_lc / n_ls:.1%} have a land-cover class, expected at least masks.min_lc_share = "
            f"{float(cfg['min_lc_share']):.0%}){codes_seen}: wrong land-cover file or legend, or only fill "
            "values?"
        )
    handle_unknown_lc_codes(unknown, where, cfg["unknown_lc_codes"])
    return {str(int(c)): int(unknown[c]) for c in np.flatnonzero(unknown)}


def run_relabel_train(
    metadata: str | Path,
    shards_dir: str | Path,
    landscan: str | Path,
    landcover: str | Path,
    partitions: str | Path | Mapping[str, str | Path],
    out_dir: str | Path,
    edges_json: str | Path,
    summary_json: str | Path,
    labels_cfg: Mapping[str, Any],
    seed: int,
    dataset: str = "mp16",
    processes: int = 1,
    masks_cfg: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Rule ``relabel_train``: clean the metadata against the shards, label, write shards, edges and summary.

    Args:
        metadata: Training metadata CSV.
        shards_dir: Folder of msgpack shards (the ids present).
        landscan: LandScan raster.
        landcover: Land-cover raster.
        partitions: Folder with ``{coarse,middle,fine}.csv`` or a mapping level -> CSV.
        out_dir: Folder of the label shards (``part-NNNNN.parquet``).
        edges_json: ``ls_edges.json``.
        summary_json: ``<dataset>_summary.json``.
        labels_cfg: The config's ``labels`` section (``val_fraction``, ``urban_cap``, ``max_bad_fraction``,
            ``rows_per_shard``).
        seed: The config's seed.
        dataset: Name in the summary.
        processes: Processes that read the shards' ids in parallel (the rule's threads).
        masks_cfg: The config's ``masks`` section (land-cover checks, :func:`check_lc_labels`).

    Returns:
        The summary record.

    """
    log.info("listing image ids in %s", shards_dir)
    ids = available_ids(shards_dir, processes)
    log.info("%d images in shards", len(ids))
    meta, bad = read_metadata(metadata, ids, max_bad_fraction=float(labels_cfg["max_bad_fraction"]))
    parts = _partition_paths(partitions)
    labels, edges = relabel_train(
        meta,
        landscan,
        landcover,
        parts,
        float(labels_cfg["val_fraction"]),
        float(labels_cfg["urban_cap"]),
        int(seed),
    )
    unknown = check_lc_labels(labels, landcover, dataset, masks_cfg)
    write_label_shards(labels, out_dir, int(labels_cfg["rows_per_shard"]))
    write_json(edges_json, edges)
    summary = summarize(dataset, labels, bad)
    summary["ls_edges"] = edges
    summary["lc_unknown_codes"] = unknown
    write_summary(summary_json, summary)
    log.info(
        "relabelled %d images; LS edges %s, counts %s", len(labels), edges["edges_log10"], edges["counts"]
    )
    return summary


def run_relabel_testset(
    metadata: str | Path,
    images_dir: str | Path,
    landscan: str | Path,
    landcover: str | Path,
    partitions: str | Path | Mapping[str, str | Path],
    edges_json: str | Path,
    out_parquet: str | Path,
    summary_json: str | Path,
    labels_cfg: Mapping[str, Any],
    dataset: str,
    masks_cfg: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Rule ``relabel_testset``: like :func:`run_relabel_train` with the train's edges, ``split = "test"``."""
    ids = available_ids(images_dir)
    meta, bad = read_metadata(metadata, ids, max_bad_fraction=float(labels_cfg["max_bad_fraction"]))
    labels = relabel_testset(
        meta, landscan, landcover, _partition_paths(partitions), load_ls_edges(edges_json)
    )
    unknown = check_lc_labels(labels, landcover, dataset, masks_cfg)
    write_label_table(labels, out_parquet)
    summary = summarize(dataset, labels, bad)
    summary["lc_unknown_codes"] = unknown
    write_summary(summary_json, summary)
    log.info("relabelled %d test images of %s", len(labels), dataset)
    return summary
