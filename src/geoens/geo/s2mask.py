"""The S2 mask: a partition rasterised on the grid, and the absorption of cells that own no pixel (DESIGN 3).

:func:`rasterize_partition` gives every grid pixel the class of the partition cell that contains the pixel's
*centre* (-1 if none); overlapping cells are an error. A cell that owns no pixel centre (a sub-pixel cell)
is *absorbed* (:func:`absorption_table`): its probability goes to the cell owning the pixel that contains the
absorbed cell's centre (the S2 cell centre, ``CellId::ToPoint``); if that pixel is in no cell, to the cell
owning the labelled pixel whose centre is nearest to the absorbed cell's centre (great-circle distance, ties
to the first pixel in row-major order). Targets own pixels, so absorption never chains.
:func:`apply_absorption` applies the table to probability vectors, conserving each row's sum.
:func:`make_s2_mask` writes ``results/masks/s2_fine.tif``, ``s2_absorption.parquet`` and the preview.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from geoens.core.grid import Grid
from geoens.core.io import atomic_path
from geoens.core.types import FloatArray
from geoens.geo.partitions import Partition, read_partition_csv
from geoens.geo.rasters import preview_png, write_label_raster
from geoens.geo.s2 import cell_center_latlng, grid_leaves


def rasterize_partition(part: Partition, grid: Grid, strip_rows: int = 256) -> npt.NDArray[np.int32]:
    """Class label owning each pixel centre (``int32``, -1 where no cell contains the centre).

    Pixel centres -> leaf ids (:func:`geoens.geo.s2.grid_leaves`), then a sorted-range look-up
    (:meth:`geoens.geo.partitions.Partition.sorted_ranges`): the last cell whose ``range_min`` is <= the leaf,
    kept if its ``range_max`` is >= the leaf. Processed in row strips.

    Raises:
        PartitionError: If two cells of the partition overlap (naming both).

    """
    rmin_s, rmax_s, label = part.sorted_ranges()
    lab_s = label.astype(np.int32)
    out = np.empty(grid.shape, dtype=np.int32)
    lat, lon = grid.lat_centers(), grid.lon_centers()
    for r0 in range(0, grid.height, strip_rows):
        r1 = min(grid.height, r0 + strip_rows)
        leaves = grid_leaves(lat[r0:r1], lon)
        idx = np.searchsorted(rmin_s, leaves, side="right") - 1
        np.maximum(idx, 0, out=idx)
        ok = (leaves >= rmin_s[idx]) & (leaves <= rmax_s[idx])
        out[r0:r1] = np.where(ok, lab_s[idx], np.int32(-1))
    return out


def _nearest_labelled_pixel(labels: npt.NDArray[np.int32], grid: Grid, lat: float, lon: float) -> int:
    """Label of the labelled pixel whose centre is nearest (great circle) to a point; -1 if none at all.

    Searches bands of rows around the point's row (all columns), widening until no pixel outside the band
    can be nearer than the best found (outside rows differ in latitude by more than the band's half-width).
    Ties go to the first pixel in row-major order.
    """
    row = int(grid.rows(lat))
    dlat = np.pi / grid.height
    lonc = grid.lon_centers()
    half = 1
    p = np.deg2rad(lat)
    while True:
        a, b = max(0, row - half), min(grid.height, row + half + 1)
        band = labels[a:b]
        rr, cc = np.nonzero(band >= 0)
        if rr.size:
            plat = np.deg2rad(grid.lat_centers()[a:b][rr])
            dl = np.deg2rad(lonc[cc] - lon)
            h = np.sin((plat - p) / 2) ** 2 + np.cos(p) * np.cos(plat) * np.sin(dl / 2) ** 2
            d = 2 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))
            k = int(np.argmin(d))
            if d[k] <= (half + 0.5) * dlat or (a == 0 and b == grid.height):
                return int(band[rr[k], cc[k]])
        elif a == 0 and b == grid.height:
            return -1
        half *= 2


def absorption_table(part: Partition, labels: npt.NDArray[np.int32], grid: Grid) -> pd.DataFrame:
    """Absorption of the cells that own no pixel centre: ``cell -> target`` (both int32, sorted by cell).

    The target is the cell owning the pixel that contains the absorbed cell's centre (S2 cell centre,
    :func:`geoens.geo.s2.cell_center_latlng`); if that pixel is in no cell, the cell owning the labelled pixel
    whose centre is nearest (great circle) to the absorbed cell's centre. Targets always own pixels, so there
    are no chains.

    Raises:
        ValueError: If the label raster is not on the grid, or no pixel is labelled at all.

    """
    if labels.shape != grid.shape:
        raise ValueError(f"label raster {labels.shape} is not on the grid {grid.shape}")
    n = len(part)
    counts = np.zeros(n, dtype=np.int64)
    for r0 in range(0, grid.height, 256):  # by strips: no full-size temporaries at the 1 km grid
        strip = labels[r0 : r0 + 256]
        counts += np.bincount(strip[strip >= 0].ravel(), minlength=n)[:n]
    owned = counts > 0
    cells = np.flatnonzero(~owned).astype(np.int32)
    if cells.size and not owned.any():
        raise ValueError(
            f"{part.name}: no cell owns any pixel centre of the {grid.height} x {grid.width} grid"
        )
    clat, clon = cell_center_latlng(part.cells[cells])
    return pd.DataFrame({"cell": cells, "target": absorption_targets(labels, grid, clat, clon)})


def absorption_targets(
    labels: npt.NDArray[np.int32], grid: Grid, lat: npt.ArrayLike, lon: npt.ArrayLike
) -> npt.NDArray[np.int32]:
    """Cell receiving each absorbed cell, from the absorbed cells' centres (any partition's labels).

    The label of the pixel containing the centre; if that pixel is in no cell, the label of the labelled
    pixel whose centre is nearest (great circle).
    """
    la, lo = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    r, c = grid.pixel_of(la, lo)
    target = labels[r, c].astype(np.int32)
    for k in np.flatnonzero(target < 0):
        target[k] = _nearest_labelled_pixel(labels, grid, float(la[k]), float(lo[k]))
    return target


def apply_absorption(probs: npt.ArrayLike, table: pd.DataFrame) -> FloatArray:
    """Move each absorbed cell's probability onto its target (row sums are conserved).

    Args:
        probs: ``(N, n_cells)`` (or ``(n_cells,)``) probabilities over class labels.
        table: ``cell, target`` as from :func:`absorption_table`.

    Returns:
        A new float64 array of the same shape; absorbed cells' columns are 0.

    Raises:
        ValueError: If a table entry is outside ``0..n_cells-1``.

    """
    p = np.asarray(probs, dtype=np.float64)
    one = p.ndim == 1
    p2 = np.atleast_2d(p)
    cell = np.asarray(table["cell"], dtype=np.int64)
    target = np.asarray(table["target"], dtype=np.int64)
    n = p2.shape[1]
    if cell.size and (cell.min() < 0 or target.min() < 0 or cell.max() >= n or target.max() >= n):
        raise ValueError(f"absorption table refers to cells outside 0..{n - 1}")
    out = p2.copy()
    if cell.size:
        order = np.argsort(target, kind="stable")
        t_sorted = target[order]
        uniq, starts = np.unique(t_sorted, return_index=True)
        sums = np.add.reduceat(p2[:, cell[order]], starts, axis=1)
        out[:, cell] = 0.0
        out[:, uniq] += sums
    return out[0] if one else out


def make_s2_mask(
    partition_csv: str | Path,
    grid: Grid,
    out_tif: str | Path,
    out_absorption: str | Path,
    out_png: str | Path | None = None,
) -> dict[str, int]:
    """Build ``results/masks/s2_fine.tif``, the absorption table (Parquet) and a preview, atomically.

    Returns:
        Counts for the log: cells, cells owning pixels, absorbed cells, labelled pixels.

    """
    part = read_partition_csv(partition_csv, name=str(partition_csv))
    labels = rasterize_partition(part, grid)
    table = absorption_table(part, labels, grid)
    with atomic_path(out_tif) as tmp:
        write_label_raster(tmp, labels, grid, None, tags={"n_cells": str(len(part)), "partition": part.name})
    with atomic_path(out_absorption) as tmp:
        table.to_parquet(tmp, index=False)
    if out_png is not None:
        with atomic_path(out_png) as tmp:
            preview_png(
                tmp, labels, None, f"S2 partition ({len(part)} cells) on {grid.height} x {grid.width}"
            )
    return {
        "cells": len(part),
        "cells_with_pixels": len(part) - len(table),
        "absorbed": len(table),
        "labelled_pixels": int((labels >= 0).sum()),
    }
