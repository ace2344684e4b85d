"""S2 cell partitions of the training geotags (GeoEstimation's adaptive rule), their CSVs and hierarchy.

**Rule** (GeoEstimation ``create_cell_partitioning.py``): every image starts in its S2 cell at
``min_level``; while a cell holds more than ``tau_max`` images and is coarser than ``max_level``, it is
replaced by its children (the images go one level deeper); finally cells with ``tau_min`` images or fewer
are dropped (GeoEstimation deletes ``count <= t_min``: the published 50/x files have at least 51 images per
cell). Cells at ``max_level`` may keep more than ``tau_max`` images (the 3 level-30 cells of the published
fine partition). Vectorised: leaf ids once, then one ``np.unique`` of the still-splitting images per level.

**Class labels** are ``0..n-1`` in increasing cell id. **Mean location**: the arithmetic mean of the
images' latitudes and longitudes, as GeoEstimation. This is safe at the antimeridian: lon 180 is an S2 cell
edge from level 1 on (the ``y = 0, x < 0`` half-plane bounds level-1 cells on faces 2, 3 and 5), so no cell
of level >= 1 holds points from both sides.

**Hierarchy** (:func:`build_hierarchy`): a fine cell's middle (coarse) class is the middle (coarse) cell
that contains it, ancestor or equal. When none does (the parent was dropped, or the child is coarser than
the parent partition there), the fallback is the parent cell that contains the child's mean location, and
failing that the parent cell whose mean location is nearest (great circle) to the child's mean location.
Fallbacks are counted and logged; the map is always complete.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geoens.core.io import atomic_path
from geoens.core.types import FloatArray, I32Array, U64Array
from geoens.data.metadata import read_metadata
from geoens.geo import s2

log = logging.getLogger(__name__)


LEVELS: tuple[str, str, str] = ("coarse", "middle", "fine")
#: Columns of a GeoEstimation partition CSV (after its two comment lines).
CSV_COLUMNS: tuple[str, ...] = ("class_label", "hex_id", "imgs_per_cell", "latitude_mean", "longitude_mean")
HIERARCHY_SCHEMA = pa.schema([("fine", pa.int32()), ("middle", pa.int32()), ("coarse", pa.int32())])


class PartitionError(ValueError):
    """A partition CSV that is malformed, or cells that overlap."""


@dataclass(frozen=True)
class Partition:
    """A set of disjoint S2 cells; class label ``i`` is the ``i``-th cell.

    Attributes:
        cells: S2 cell ids (uint64), indexed by class label.
        imgs_per_cell: Training images per cell.
        lat_mean: Mean latitude of each cell's images.
        lon_mean: Mean longitude of each cell's images.
        num_images: Images the partition was built from (GeoEstimation's ``num_images`` comment line).
        name: Level name or file, for messages.
        source: The CSV file it was read from ("" if built in memory), for messages.
        lines: For a partition read from a CSV, the file line (1-based, comment and header lines counted)
            of each cell, indexed by class label; ``None`` otherwise.

    """

    cells: U64Array
    imgs_per_cell: npt.NDArray[np.int64]
    lat_mean: FloatArray
    lon_mean: FloatArray
    num_images: int
    name: str = ""
    source: str = ""
    lines: npt.NDArray[np.int64] | None = None

    def __len__(self) -> int:
        return int(self.cells.size)

    def tokens(self) -> list[str]:
        """S2 tokens (``hex_id``) of the cells."""
        return s2.id_to_token(self.cells)

    def to_frame(self) -> pd.DataFrame:
        """Return the CSV columns as a frame."""
        return pd.DataFrame(
            {
                "class_label": np.arange(len(self), dtype=np.int64),
                "hex_id": self.tokens(),
                "imgs_per_cell": self.imgs_per_cell,
                "latitude_mean": self.lat_mean,
                "longitude_mean": self.lon_mean,
            }
        )

    def sorted_ranges(self) -> tuple[U64Array, U64Array, npt.NDArray[np.int64]]:
        """``(range_min, range_max, class label)`` sorted by ``range_min``, for interval look-ups.

        Raises:
            PartitionError: If two cells overlap (one contains the other) or a cell appears twice, naming
                the file and both lines for a partition read from a CSV.

        """
        lo = s2.range_min(self.cells)
        hi = s2.range_max(self.cells)
        order = np.argsort(lo, kind="stable")
        lo, hi = lo[order], hi[order]
        bad = np.flatnonzero(lo[1:] <= hi[:-1])
        if bad.size:
            raise self._overlap_error(int(order[bad[0]]), int(order[bad[0] + 1]))
        return lo, hi, order.astype(np.int64)

    def _overlap_error(self, i: int, j: int) -> PartitionError:
        """The error for cells ``i`` and ``j`` (class labels) that overlap: one contains the other, or equal.

        S2 cells are nested or disjoint, so the coarser cell of an overlapping pair contains the finer one.
        """
        levels = s2.level(self.cells[[i, j]])
        if levels[1] < levels[0] or (levels[0] == levels[1] and i > j):
            i, j = j, i  # i: the container (or the first of two equal cells)
        tok_i, tok_j = s2.id_to_token(self.cells[[i, j]])
        if self.lines is not None:
            where, at_i, at_j = self.source or self.name, f"line {self.lines[i]}", f"line {self.lines[j]}"
        else:
            where, at_i, at_j = f"partition {self.name}", f"class_label {i}", f"class_label {j}"
        if self.cells[i] == self.cells[j]:
            first, second = sorted((at_i, at_j), key=lambda at: int(at.rsplit(" ", 1)[1]))
            return PartitionError(
                f"{where}: {second} duplicates {first}: token {tok_i} (each S2 cell may appear once)"
            )
        return PartitionError(
            f"{where}: {at_i} (token {tok_i}, level {levels.min()}) contains {at_j} (token {tok_j}, level "
            f"{levels.max()}): the cells of a partition must not overlap"
        )


def cell_of(leaf_ids: npt.ArrayLike, partition: Partition) -> I32Array:
    """Class label of the cell containing each leaf id (a cell id: its first leaf); -1 if none.

    A sorted-range look-up (``searchsorted`` on the cells' first leaves), ``O(n log m)``.
    """
    leaf = np.asarray(leaf_ids, dtype=np.uint64)
    out = np.full(leaf.shape, -1, dtype=np.int32)
    if len(partition) == 0 or leaf.size == 0:
        return out
    lo, hi, label = partition.sorted_ranges()
    pos = np.searchsorted(lo, leaf, side="right").astype(np.int64) - 1
    ok = pos >= 0
    pos_c = np.where(ok, pos, 0)
    ok &= leaf <= hi[pos_c]
    out[ok] = label[pos_c[ok]]
    return out


def _parent_of_leaves(leaf: U64Array, level: int) -> U64Array:
    """Ancestors at ``level`` of leaf ids (same as :func:`geoens.geo.s2.parent`, without its validation)."""
    low = np.uint64(1) << np.uint64(2 * (s2.MAX_LEVEL - level))
    return (leaf & (~low + np.uint64(1))) | low


def build_partition(
    leaf_ids: npt.ArrayLike,
    lat: npt.ArrayLike,
    lon: npt.ArrayLike,
    tau_min: int,
    tau_max: int,
    min_level: int = 2,
    max_level: int = 30,
    name: str = "",
) -> Partition:
    """GeoEstimation's adaptive partition of points (see the module docstring).

    Args:
        leaf_ids: Leaf S2 ids of the points (:func:`geoens.geo.s2.latlng_to_leaf`).
        lat: Latitudes of the points (for the mean locations).
        lon: Longitudes of the points.
        tau_min: Cells with ``tau_min`` images or fewer are dropped.
        tau_max: Cells with more images are split (above ``max_level`` they are not).
        min_level: Level the split starts from.
        max_level: Finest level.
        name: For messages.

    Raises:
        ValueError: On inconsistent levels or thresholds.

    """
    if not 0 <= min_level <= max_level <= s2.MAX_LEVEL:
        raise ValueError(
            f"partition {name}: need 0 <= min_level <= max_level <= 30, got {min_level}, {max_level}"
        )
    if tau_max <= tau_min:
        raise ValueError(f"partition {name}: tau_max ({tau_max}) must exceed tau_min ({tau_min})")
    leaf = np.asarray(leaf_ids, dtype=np.uint64).ravel()
    la = np.asarray(lat, dtype=np.float64).ravel()
    lo = np.asarray(lon, dtype=np.float64).ravel()
    n = leaf.size
    if n == 0:
        empty = np.empty(0)
        return Partition(np.empty(0, np.uint64), np.empty(0, np.int64), empty, empty, 0, name)
    # Sorted leaves: a cell's leaves are contiguous, so parents stay sorted and counting needs no sort.
    order = np.argsort(leaf, kind="stable")
    sleaf = leaf[order]
    final = np.zeros(n, dtype=np.uint64)
    active = np.arange(n)
    for level in range(min_level, max_level + 1):
        if active.size == 0:
            break
        ids = _parent_of_leaves(sleaf[active], level)
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        cnt = np.diff(np.r_[starts, ids.size])
        done = np.repeat(cnt <= tau_max, cnt) if level < max_level else np.ones(ids.size, dtype=bool)
        final[active[done]] = ids[done]
        active = active[~done]
    # final is sorted (cells are disjoint and visited in leaf order); back to the points' order for means
    starts = np.flatnonzero(np.r_[True, final[1:] != final[:-1]])
    cnt = np.diff(np.r_[starts, n])
    cells = final[starts]
    inv_sorted = np.repeat(np.arange(cells.size), cnt)
    inv = np.empty(n, dtype=np.int64)
    inv[order] = inv_sorted
    keep_cell = cnt > tau_min
    # mean locations: plain means (S2 cells of level >= 1 never straddle lon 180, so this is safe)
    lat_mean = np.bincount(inv, weights=la, minlength=cells.size) / cnt
    lon_mean = np.bincount(inv, weights=lo, minlength=cells.size) / cnt
    part = Partition(
        cells=cells[keep_cell],
        imgs_per_cell=cnt[keep_cell].astype(np.int64),
        lat_mean=lat_mean[keep_cell],
        lon_mean=lon_mean[keep_cell],
        num_images=int(n),
        name=name,
    )
    log.info(
        "partition %s: %d cells (levels %s), %d of %d images kept",
        name,
        len(part),
        f"{int(s2.level(part.cells).min())}-{int(s2.level(part.cells).max())}" if len(part) else "-",
        int(part.imgs_per_cell.sum()),
        n,
    )
    return part


def build_partitions(
    lat: npt.ArrayLike,
    lon: npt.ArrayLike,
    levels: Mapping[str, Mapping[str, int]],
    min_level: int = 2,
    max_level: int = 30,
) -> dict[str, Partition]:
    """Build coarse, middle and fine partitions from the config's ``partitions.levels`` (``tau_*``)."""
    leaf = s2.latlng_to_leaf(lat, lon)
    return {
        name: build_partition(
            leaf,
            lat,
            lon,
            int(levels[name]["tau_min"]),
            int(levels[name]["tau_max"]),
            min_level,
            max_level,
            name,
        )
        for name in LEVELS
    }


def write_partition_csv(partition: Partition, path: str | Path) -> None:
    """Write GeoEstimation's layout: ``num_images: N``, ``min_concept_probability: ---``, then the columns."""
    frame = partition.to_frame()
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(f"num_images: {partition.num_images}\n")
        fh.write("min_concept_probability: ---\n")
        frame.to_csv(fh, index=False, lineterminator="\n", float_format="%.15g")


def _check_partition_rows(path: Path, df: pd.DataFrame, first_line: int) -> None:
    """Raise :class:`PartitionError` naming the file line of the first bad value of a partition CSV.

    Checks, in this order: every value present and numeric (``hex_id`` a valid S2 token), then the class
    labels ``0..n-1`` each once (naming the first duplicate or the first missing label).
    """
    line = np.arange(len(df)) + first_line  # file line of each row (1-based)
    for col in CSV_COLUMNS:
        raw = df[col]
        if col == "hex_id":
            text = raw.astype(str).str.strip()
            bad = np.array(raw.isna().to_numpy() | (text == "").to_numpy(), dtype=bool)
            what = "an S2 cell token"
            if not bad.any():
                try:
                    s2.level(s2.token_to_id(text))
                except ValueError:  # find the row (error path only)
                    for i in range(len(text)):
                        try:
                            s2.level(s2.token_to_id([text.iloc[i]]))
                        except ValueError as exc:
                            bad[i] = True
                            what = f"an S2 cell token ({exc})"
                            break
        else:
            num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            bad = ~np.isfinite(num)
            if col in ("class_label", "imgs_per_cell"):
                with np.errstate(invalid="ignore"):
                    bad |= num % 1 != 0
            what = "an integer" if col in ("class_label", "imgs_per_cell") else "a number"
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            value = raw.iloc[i]
            shown = "empty" if pd.isna(value) or str(value).strip() == "" else repr(str(value))
            raise PartitionError(f"{path}: line {line[i]}: {col} is {shown}, expected {what}")
    labels = df["class_label"].to_numpy(dtype=np.float64).astype(np.int64)
    order = np.argsort(labels, kind="stable")
    srt = labels[order]
    dup = np.flatnonzero(srt[1:] == srt[:-1])
    if dup.size:
        a, b = sorted((int(line[order[dup[0]]]), int(line[order[dup[0] + 1]])))
        raise PartitionError(f"{path}: class_label {srt[dup[0]]} appears twice, on lines {a} and {b}")
    expected = np.arange(len(df))
    off = np.flatnonzero(srt != expected)
    if off.size:
        k = int(off[0])
        after = f" (after line {line[order[k - 1]]}, class_label {k - 1})" if k > 0 else ""
        raise PartitionError(
            f"{path}: class_label {k} is missing{after}; line {line[order[k]]} has {srt[k]}: "
            f"class_label must be 0..{len(df) - 1}, each once"
        )


def read_partition_csv(path: str | Path, name: str = "") -> Partition:
    """Read a GeoEstimation partition CSV (two comment lines, then :data:`CSV_COLUMNS`).

    Rows are ordered by ``class_label``, which must be ``0..n-1``. The comment lines are optional; without
    ``num_images`` the image counts are summed.

    Raises:
        PartitionError: Naming the file (and row or token) on a missing column, bad labels, a bad token or
            overlapping cells.

    """
    p = Path(path)
    skip = 0
    num_images: int | None = None
    with open(p, encoding="utf-8") as fh:
        for _ in range(2):
            line = fh.readline()
            if line.startswith("num_images:"):
                try:
                    num_images = int(line.split(":", 1)[1].strip())
                except ValueError as exc:
                    raise PartitionError(f"{p}: bad line 'num_images: ...': {line.strip()!r}") from exc
                skip += 1
            elif line.startswith("min_concept_probability:"):
                skip += 1
            else:
                break
    try:
        df = pd.read_csv(p, skiprows=skip, dtype={"hex_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise PartitionError(f"{p}: cannot parse: {exc}") from exc
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise PartitionError(f"{p}: missing column(s) {missing} (columns: {list(df.columns)})")
    _check_partition_rows(p, df, first_line=skip + 2)
    df["line"] = np.arange(len(df), dtype=np.int64) + skip + 2  # file line of each row (1-based)
    df = df.sort_values("class_label", kind="stable").reset_index(drop=True)
    df["class_label"] = df["class_label"].astype(np.int64)
    try:
        cells = s2.token_to_id(df["hex_id"].astype(str))
        s2.level(cells)
    except ValueError as exc:
        raise PartitionError(f"{p}: {exc}") from exc
    counts = df["imgs_per_cell"].to_numpy(dtype=np.int64)
    part = Partition(
        cells=cells,
        imgs_per_cell=counts,
        lat_mean=df["latitude_mean"].to_numpy(dtype=np.float64),
        lon_mean=df["longitude_mean"].to_numpy(dtype=np.float64),
        num_images=int(num_images if num_images is not None else counts.sum()),
        name=name or str(p),
        source=str(p),
        lines=df["line"].to_numpy(dtype=np.int64),
    )
    part.sorted_ranges()  # raises on overlapping or repeated cells, naming the file and both lines
    return part


def _haversine_nearest(
    lat: FloatArray, lon: FloatArray, cand_lat: FloatArray, cand_lon: FloatArray
) -> I32Array:
    """Index of the nearest candidate (great circle) for each point, in chunks."""
    out = np.empty(lat.size, dtype=np.int32)
    cla, clo = np.deg2rad(cand_lat), np.deg2rad(cand_lon)
    for s in range(0, lat.size, 256):
        la = np.deg2rad(lat[s : s + 256])[:, None]
        lo = np.deg2rad(lon[s : s + 256])[:, None]
        h = np.sin((cla - la) / 2) ** 2 + np.cos(la) * np.cos(cla) * np.sin((clo - lo) / 2) ** 2
        out[s : s + 256] = np.argmin(h, axis=1)
    return out


def parent_labels(child: Partition, parent: Partition) -> tuple[I32Array, dict[str, int]]:
    """Class of ``parent`` for every cell of ``child``: by S2 ancestry, else the documented fallbacks.

    Returns:
        ``(labels, counts)``: one parent label per child cell (all >= 0) and how many were found
        ``by_ancestry``, ``by_mean_location`` and ``by_nearest_mean``.

    Raises:
        PartitionError: If ``parent`` has no cell.

    """
    if len(parent) == 0:
        raise PartitionError(f"partition {parent.name} has no cell: cannot map {child.name} onto it")
    first = s2.range_min(child.cells)
    last = s2.range_max(child.cells)
    lab = cell_of(first, parent)
    ok = lab >= 0
    ok[ok] &= s2.range_max(parent.cells[lab[ok]]) >= last[ok]
    lab[~ok] = -1
    n_anc = int(ok.sum())
    miss = np.flatnonzero(~ok)
    n_mean = n_near = 0
    if miss.size:
        leaf = s2.latlng_to_leaf(child.lat_mean[miss], child.lon_mean[miss])
        lab[miss] = cell_of(leaf, parent)
        n_mean = int((lab[miss] >= 0).sum())
        still = miss[lab[miss] < 0]
        if still.size:
            lab[still] = _haversine_nearest(
                child.lat_mean[still], child.lon_mean[still], parent.lat_mean, parent.lon_mean
            )
            n_near = int(still.size)
    counts = {"by_ancestry": n_anc, "by_mean_location": n_mean, "by_nearest_mean": n_near}
    if n_mean or n_near:
        log.warning("%s -> %s: %s", child.name, parent.name, counts)
    assert np.all(lab >= 0) and np.all(lab < len(parent)), "incomplete parent map"
    return lab, counts


def build_hierarchy(partitions: Mapping[str, Partition]) -> tuple[pd.DataFrame, dict[str, dict[str, int]]]:
    """Build the parent map: one row per fine cell (by fine label), with its ``middle`` and ``coarse``.

    Returns:
        ``(frame, stats)``: int32 columns ``fine, middle, coarse`` and the per-level fallback counts.

    """
    fine = partitions["fine"]
    middle, m_stats = parent_labels(fine, partitions["middle"])
    coarse, c_stats = parent_labels(fine, partitions["coarse"])
    frame = pd.DataFrame(
        {"fine": np.arange(len(fine), dtype=np.int32), "middle": middle, "coarse": coarse},
    )
    return frame, {"middle": m_stats, "coarse": c_stats}


def write_hierarchy(frame: pd.DataFrame, path: str | Path) -> None:
    """Write ``hierarchy.parquet`` atomically (int32 ``fine, middle, coarse``)."""
    table = pa.Table.from_pandas(
        frame.loc[:, ["fine", "middle", "coarse"]], schema=HIERARCHY_SCHEMA, preserve_index=False
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_hierarchy(path: str | Path) -> pd.DataFrame:
    """Read ``hierarchy.parquet``."""
    frame: pd.DataFrame = pq.read_table(path, schema=HIERARCHY_SCHEMA).to_pandas()
    return frame


def read_partitions(paths: Mapping[str, str | Path]) -> dict[str, Partition]:
    """Read the three partitions from their CSVs (``{"coarse": path, "middle": path, "fine": path}``)."""
    return {lv: read_partition_csv(paths[lv], name=lv) for lv in LEVELS}


def run_partitions(
    metadata: str | Path | None,
    cfg: Mapping[str, Any],
    outputs: Mapping[str, str | Path],
    max_bad_fraction: float | None = None,
    csv_paths: Mapping[str, str | Path] | None = None,
) -> dict[str, Any]:
    """Rule ``partitions``: build (or read) the three partitions, write their CSVs and the hierarchy.

    Args:
        metadata: Training metadata CSV (``source: build``).
        cfg: The config's ``partitions`` section.
        outputs: Paths for ``coarse``, ``middle``, ``fine`` and ``hierarchy``.
        max_bad_fraction: ``labels.max_bad_fraction`` for reading the metadata.
        csv_paths: The CSVs per level (``source: csv``); defaults to ``cfg["csv"]``.

    Returns:
        A small report (cells per level, fallback counts).

    """
    if cfg.get("source", "build") == "csv":
        parts = read_partitions(csv_paths if csv_paths is not None else cfg["csv"])
    else:
        if metadata is None:
            raise ValueError("partitions.source is 'build' but no metadata was given")
        meta, bad = read_metadata(metadata, max_bad_fraction=max_bad_fraction)
        parts = build_partitions(
            meta["lat"].to_numpy(), meta["lon"].to_numpy(), cfg["levels"], cfg["min_level"], cfg["max_level"]
        )
    for lv in LEVELS:
        if len(parts[lv]) == 0:
            raise PartitionError(
                f"partition {lv} has no cell (thresholds too high for {parts[lv].num_images} images?)"
            )
        write_partition_csv(parts[lv], outputs[lv])
    frame, stats = build_hierarchy(parts)
    write_hierarchy(frame, outputs["hierarchy"])
    return {"cells": {lv: len(parts[lv]) for lv in LEVELS}, "hierarchy": stats}
