"""Ensembling and Recall-vs-Area evaluation on atoms (the paper's Algorithms 1-3, DESIGN section 4).

The ensembled score ``P`` of a method is constant on every *atom* (a set of pixels sharing one tuple of
family labels), so Algorithms 1-3 run on the atom table instead of ``H x W`` rasters:

* Alg. 1: ``P_f(atom) = p_f[label_f] / area_f(label_f)`` (0 where the label is -1), ``area_f(j)`` = the sum of
  the areas of the atoms labelled ``j``.
* Alg. 2: ``P = P_s2 * P_ls * P_lc`` in float64, multiplied in the fixed family order
  :data:`geoens.constants.FAMILIES`, so that a raster implementation that multiplies in the same order gives
  bitwise-identical values.
* Alg. 3: ``area = sum of the areas of the atoms with P >= P(g)``, ``g`` the atom of the ground-truth pixel.
  ``P(g) = 0`` gives the whole sphere and the ``zero_prob`` flag.

For speed each method works on the distinct label tuples of *its own* families (the base method only sees
S2 cells), and images are processed in batches: a matrix ``images x groups`` bounded by ``chunk_elements``.

Grid top-1 of an image and method: the highest-``P`` region's area-weighted spherical centroid (the
normalised sum of the atoms' ``sx, sy, sz``) when the atom of the pixel holding that point belongs to the
region; otherwise the centre of the region's pixel nearest to the centroid (largest dot product of unit
vectors; ties go to the lowest row-major pixel index). The region's pixels are read from the atom index
raster, so the fallback is exact rather than limited to the atoms' representative points.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geoens.constants import (
    BASE_MODELS,
    CAP_AREAS_KM2,
    DISPLAY_NAMES,
    EARTH_RADIUS_KM,
    FAMILIES,
    GCD_RADIUS_KM,
    GCD_THRESHOLDS_KM,
    INDEX_IN_MEMORY_MAX_PIXELS,
    LS_BUCKETS,
    LS_URBAN_BUCKETS,
    METHOD_VARIANTS,
    N_CLASSES,
)
from geoens.grid import Grid, haversine_km, latlon_to_xyz, xyz_to_latlon

if TYPE_CHECKING:
    from geoens.rva_fast import RunLayout

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

log = logging.getLogger(__name__)

#: Columns of ``results/atoms/atoms.parquet``.
ATOM_COLUMNS: tuple[str, ...] = (
    "atom",
    "s2",
    "ls",
    "lc",
    "area_km2",
    "n_pixels",
    "rep_lat",
    "rep_lon",
    "sx",
    "sy",
    "sz",
)
#: Columns of ``results/eval/<testset>/per_image.parquet``.
PER_IMAGE_COLUMNS: tuple[str, ...] = (
    "image_id",
    "base",
    "method",
    "area_km2",
    "zero_prob",
    "top1_lat",
    "top1_lon",
    "gcd_km",
    "ls_bucket",
)
#: Default bound on the number of float64 elements of one ``images x groups`` matrix (32 MB).
DEFAULT_CHUNK_ELEMENTS = 4_000_000


# --------------------------------------------------------------------------------------------------
# Atoms
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AtomTable:
    """The atom table: one row per distinct tuple of family labels.

    Attributes:
        labels: Family name -> int64 label of each atom (-1 = no class).
        area: Area (km^2) of each atom.
        rep_lat: Latitude of a pixel centre inside each atom.
        rep_lon: Longitude of that pixel centre.
        sxyz: ``n x 3`` sums of area times the unit vector of the atom's pixel centres.

    """

    labels: dict[str, IntArray]
    area: FloatArray
    rep_lat: FloatArray
    rep_lon: FloatArray
    sxyz: FloatArray

    @property
    def n(self) -> int:
        """Number of atoms."""
        return int(self.area.shape[0])

    def class_areas(self, family: str, n_classes: int) -> FloatArray:
        """``area_f(j)``: total area of the atoms labelled ``j`` in ``family``, for ``j < n_classes``.

        Raises:
            ValueError: If an atom's label is ``>= n_classes``.

        """
        lab = self.labels[family]
        if lab.size and int(lab.max()) >= n_classes:
            raise ValueError(
                f"atoms: family {family!r} has label {int(lab.max())} but the predictor has only "
                f"{n_classes} classes"
            )
        ok = lab >= 0
        return np.bincount(lab[ok], weights=self.area[ok], minlength=n_classes).astype(np.float64)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, source: str = "atoms table") -> AtomTable:
        """Build from a DataFrame with the ``atoms.parquet`` columns.

        Raises:
            ValueError: Naming ``source`` if a column is missing or the ``atom`` column is not ``0..n-1``.

        """
        missing = [c for c in ATOM_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"{source}: missing column(s) {missing}")
        atom = df["atom"].to_numpy(np.int64)
        if not np.array_equal(atom, np.arange(len(df))):
            raise ValueError(f"{source}: column 'atom' must be 0..n-1 in order")
        area = df["area_km2"].to_numpy(np.float64)
        if not np.all(np.isfinite(area)) or np.any(area < 0):
            bad = int(np.flatnonzero(~np.isfinite(area) | (area < 0))[0])
            raise ValueError(f"{source}: bad area_km2 {area[bad]} at row {bad}")
        return cls(
            labels={f: df[f].to_numpy(np.int64) for f in FAMILIES},
            area=area,
            rep_lat=df["rep_lat"].to_numpy(np.float64),
            rep_lon=df["rep_lon"].to_numpy(np.float64),
            sxyz=df[["sx", "sy", "sz"]].to_numpy(np.float64),
        )

    def to_frame(self) -> pd.DataFrame:
        """Return the table in the ``atoms.parquet`` layout (``n_pixels`` is not kept and written as -1)."""
        out = pd.DataFrame({"atom": np.arange(self.n, dtype=np.int32)})
        for f in FAMILIES:
            out[f] = self.labels[f].astype(np.int32)
        out["area_km2"] = self.area
        out["n_pixels"] = np.full(self.n, -1, dtype=np.int64)
        out["rep_lat"] = self.rep_lat
        out["rep_lon"] = self.rep_lon
        out["sx"], out["sy"], out["sz"] = self.sxyz[:, 0], self.sxyz[:, 1], self.sxyz[:, 2]
        return out


def read_atoms(path: str | Path) -> AtomTable:
    """Read ``results/atoms/atoms.parquet``."""
    return AtomTable.from_frame(pd.read_parquet(path), source=str(path))


def read_atom_index(path: str | Path, n_atoms: int | None = None) -> npt.NDArray[np.int32]:
    """Read ``results/atoms/atom_index.tif`` (int32 atom id of each pixel).

    Raises:
        ValueError: Naming the file if the raster is not ``H x 2H`` or holds ids outside ``0..n_atoms-1``.

    """
    import rasterio

    with rasterio.open(path) as src:
        idx = src.read(1).astype(np.int32, copy=False)
    h, w = idx.shape
    if w != 2 * h:
        raise ValueError(f"{path}: atom index must be H x 2H, got {h} x {w}")
    if n_atoms is not None and idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n_atoms):
        raise ValueError(
            f"{path}: atom ids must lie in 0..{n_atoms - 1}, found {int(idx.min())}..{int(idx.max())}"
        )
    return idx


def atoms_from_rasters(
    labels: Mapping[str, npt.ArrayLike], pixel_area: npt.ArrayLike, grid: Grid
) -> tuple[AtomTable, npt.NDArray[np.int32]]:
    """Build the atom table and atom index from label rasters (a small reference builder).

    Args:
        labels: Family -> ``H x W`` integer label raster (-1 = none), for every family of
            :data:`~geoens.constants.FAMILIES`.
        pixel_area: ``H x W`` (or ``H`` row vector) pixel areas in km^2.
        grid: The grid (for pixel centres).

    Returns:
        ``(atoms, atom_index)``; atoms are numbered in the order of their sorted label tuples.

    """
    h, w = grid.shape
    arrs = [np.asarray(labels[f], dtype=np.int64).reshape(h, w) for f in FAMILIES]
    key = np.zeros((h, w), dtype=np.int64)
    for a in arrs:
        span = int(a.max()) + 2
        key = key * span + (a + 1)
    uniq, inv = np.unique(key.ravel(), return_inverse=True)
    inv = inv.astype(np.int32)
    area_px = np.broadcast_to(np.asarray(pixel_area, dtype=np.float64).reshape(h, -1), (h, w)).ravel()
    n = uniq.size
    area = np.bincount(inv, weights=area_px, minlength=n).astype(np.float64)
    lat_c, lon_c = grid.lat_centers(), grid.lon_centers()
    lat2, lon2 = np.broadcast_arrays(lat_c[:, None], lon_c[None, :])
    xyz = latlon_to_xyz(lat2, lon2).reshape(-1, 3)
    sxyz = np.stack(
        [np.bincount(inv, weights=area_px * xyz[:, k], minlength=n) for k in range(3)], axis=1
    ).astype(np.float64)
    first = np.full(n, -1, dtype=np.int64)
    first[inv[::-1]] = np.arange(h * w - 1, -1, -1)
    rows, cols = np.divmod(first, w)
    rep_lat, rep_lon = grid.pixel_center(rows, cols)
    lab = {f: a.ravel()[first] for f, a in zip(FAMILIES, arrs, strict=True)}
    return AtomTable(lab, area, rep_lat, rep_lon, sxyz), inv.reshape(h, w).astype(np.int32)


# --------------------------------------------------------------------------------------------------
# Methods and probabilities
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """One ensemble of a base model with attribute families.

    Attributes:
        base: Base model key (``geoest`` or ``geoclip``).
        suffix: Variant suffix of :data:`~geoens.constants.METHOD_VARIANTS` (``""``, ``"+LS"``, ...).
        families: Families multiplied, in the fixed order of :data:`~geoens.constants.FAMILIES`.
        urban_prior: Whether LS is the constant urban prior instead of the LS predictor.

    """

    base: str
    suffix: str
    families: tuple[str, ...]
    urban_prior: bool = False

    @property
    def name(self) -> str:
        """Display name, e.g. ``GeoEst.+LS``."""
        return method_name(self.base, self.suffix)


def method_name(base: str, suffix: str) -> str:
    """Display name of a method: the base's display name followed by the variant suffix."""
    return f"{DISPLAY_NAMES.get(base, base)}{suffix}"


def own_top1_name(base: str) -> str:
    """Name the method of a base model's own top-1 (its argmax cell's mean location): ``GeoEst. (cell)``."""
    return f"{DISPLAY_NAMES.get(base, base)} (cell)"


def all_methods(bases: Sequence[str] = BASE_MODELS) -> list[Method]:
    """Every method of :data:`~geoens.constants.METHOD_VARIANTS` for each base model, in table order."""
    out = []
    for b in bases:
        for suffix, extra, urban in METHOD_VARIANTS:
            fams = tuple(f for f in FAMILIES if f == "s2" or f in extra)
            out.append(Method(b, suffix, fams, urban))
    return out


def normalise_probs(
    probs: npt.ArrayLike, what: str = "probs", ids: Sequence[str] | None = None
) -> FloatArray:
    """Cast a ``batch x classes`` probability matrix to float64 and renormalise every row to sum 1.

    Raises:
        ValueError: Naming ``what`` and the image if a row has a negative or non-finite value or sums to 0.

    """
    p = np.array(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"{what}: expected a 2-d batch x classes array, got shape {p.shape}")
    bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1)
    s = p.sum(axis=1)
    bad |= ~(s > 0)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        who = ids[i] if ids is not None else f"row {i}"
        raise ValueError(f"{what}: image {who}: probabilities must be finite, >= 0 and not all zero")
    p /= s[:, None]
    return p


def absorb(probs: FloatArray, cells: npt.ArrayLike, targets: npt.ArrayLike) -> FloatArray:
    """Move the probability of absorbed S2 cells onto the cells receiving them (row sums conserved).

    Delegates to :func:`geoens.s2mask.apply_absorption` so that every stage absorbs the same way; absorbed
    cells' columns become 0.

    Raises:
        ValueError: If a cell or target is outside the predictor's classes.

    """
    from geoens.s2mask import apply_absorption

    c = np.asarray(cells, dtype=np.int64)
    if c.size == 0:
        return probs
    table = pd.DataFrame({"cell": c, "target": np.asarray(targets, dtype=np.int64)})
    try:
        return np.asarray(apply_absorption(probs, table), dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"absorption table: {exc} (the predictor has {probs.shape[1]} classes)") from exc


def family_scores(p: FloatArray, class_area: FloatArray) -> FloatArray:
    """Alg. 1 per class: ``p[j] / area_f(j)`` with a trailing zero column for the label -1.

    Classes with no area own no pixel and score 0.
    """
    b, c = p.shape
    if c != class_area.size:
        raise ValueError(f"{c} probabilities for {class_area.size} classes")
    out = np.zeros((b, c + 1), dtype=np.float64)
    has = class_area > 0
    out[:, :c][:, has] = p[:, has] / class_area[has]
    return out


def scores_t(
    probs: npt.ArrayLike,
    class_area: FloatArray,
    absorption: tuple[IntArray, IntArray] | None = None,
    family: str = "probs",
    ids: Sequence[str] | None = None,
) -> FloatArray:
    """:func:`normalise_probs`, :func:`absorb` and :func:`family_scores` fused, transposed: ``(c + 1) x b``.

    The same roundings in the same order (row sum, division by it, absorbed columns added onto their
    targets, division by the class area), in about four passes over the batch instead of a dozen.

    Raises:
        ValueError: As the three functions (naming ``family`` and the image).

    """
    p = np.array(probs, dtype=np.float64)
    what = f"{family} predictions"
    if p.ndim != 2:
        raise ValueError(f"{what}: expected a 2-d batch x classes array, got shape {p.shape}")
    b, c = p.shape
    if c != class_area.size:
        raise ValueError(f"{what}: {c} classes, expected {class_area.size}")
    s = p.sum(axis=1)
    bad = ~np.isfinite(s) | ~(s > 0)
    if b:
        bad |= ~(p.min(axis=1) >= 0)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        who = ids[i] if ids is not None else f"row {i}"
        raise ValueError(f"{what}: image {who}: probabilities must be finite, >= 0 and not all zero")
    p /= s[:, None]
    if absorption is not None and np.asarray(absorption[0]).size:
        cell = np.asarray(absorption[0], dtype=np.int64)
        target = np.asarray(absorption[1], dtype=np.int64)
        if cell.min() < 0 or target.min() < 0 or cell.max() >= c or target.max() >= c:
            raise ValueError(
                f"absorption table: absorption table refers to cells outside 0..{c - 1} "
                f"(the predictor has {c} classes)"
            )
        order = np.argsort(target, kind="stable")  # as geoens.s2mask.apply_absorption
        uniq, starts = np.unique(target[order], return_index=True)
        sums = np.add.reduceat(p[:, cell[order]], starts, axis=1)
        p[:, cell] = 0.0
        p[:, uniq] += sums
    out = np.empty((c + 1, b), dtype=np.float64)
    has = class_area > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(p.T, np.where(has, class_area, 1.0)[:, None], out=out[:c])
    out[:c][~has] = 0.0
    out[c] = 0.0
    return out


def urban_prior_probs(ls_class_area: FloatArray) -> FloatArray:
    """Return the LS urban prior ``q_j = area(j) / (area(medium) + area(high))`` (urban buckets, else 0).

    Raises:
        ValueError: If the urban buckets have no area.

    """
    q = np.zeros(ls_class_area.size, dtype=np.float64)
    urban = list(LS_URBAN_BUCKETS)
    tot = float(ls_class_area[urban].sum())
    if not tot > 0:
        raise ValueError("urban prior: the LS medium and high buckets have no area")
    q[urban] = ls_class_area[urban] / tot
    return q


def urban_prior_scores(ls_class_area: FloatArray) -> FloatArray:
    """Alg. 1 class scores of the urban prior: ``q_j / area(j) = 1 / (area(medium) + area(high))``.

    The value is computed once and shared by both urban buckets, so that the prior is exactly uniform over
    urban land (``q_j / area(j)`` evaluated per bucket could differ in the last bit). Trailing zero column
    for the label -1, as :func:`family_scores`.
    """
    urban = list(LS_URBAN_BUCKETS)
    urban_prior_probs(ls_class_area)  # validates
    out = np.zeros(ls_class_area.size + 1, dtype=np.float64)
    out[urban] = 1.0 / float(ls_class_area[urban].sum())
    return out


# --------------------------------------------------------------------------------------------------
# Groups: the atoms collapsed to a method's families
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Groups:
    """Atoms collapsed to the distinct label tuples of some families.

    Groups are ordered by their attribute classes (LS, LC), then by S2 cell, so that the groups sharing one
    attribute combination form a contiguous run: Alg. 2 then needs one gather (S2) and per-run scalings.

    Attributes:
        families: The families.
        index: Family -> index of each group's class into the score matrix (label -1 -> the zero column).
        area: Area of each group (km^2).
        sxyz: ``G x 3`` sums of area times unit vectors.
        of_atom: Group of each atom.
        runs: ``(start, stop, {attribute family: class index})`` of each run of equal attribute classes.

    """

    families: tuple[str, ...]
    index: dict[str, IntArray]
    area: FloatArray
    sxyz: FloatArray
    of_atom: IntArray
    runs: tuple[tuple[int, int, dict[str, int]], ...] = ()

    @property
    def n(self) -> int:
        """Number of groups."""
        return int(self.area.size)


def group_atoms(atoms: AtomTable, families: Sequence[str], n_classes: Mapping[str, int]) -> Groups:
    """Collapse atoms to the distinct label tuples of ``families``.

    Args:
        atoms: The atom table.
        families: Families in :data:`~geoens.constants.FAMILIES` order.
        n_classes: Number of predictor classes per family (the zero column of label -1 is at that index).

    """
    fams = tuple(f for f in FAMILIES if f in families)
    key_order = [f for f in fams if f != "s2"] + [f for f in fams if f == "s2"]  # attributes major
    key = np.zeros(atoms.n, dtype=np.int64)
    for f in key_order:
        key = key * (n_classes[f] + 1) + (atoms.labels[f] + 1)
    uniq, first, inv = np.unique(key, return_index=True, return_inverse=True)
    g = uniq.size
    area = np.bincount(inv, weights=atoms.area, minlength=g).astype(np.float64)
    sxyz: FloatArray = np.stack(
        [np.bincount(inv, weights=atoms.sxyz[:, k], minlength=g) for k in range(3)], axis=1
    ).astype(np.float64)
    index = {}
    for f in fams:
        lab = atoms.labels[f][first]
        index[f] = np.where(lab < 0, n_classes[f], lab).astype(np.int64)
    attrs = [f for f in fams if f != "s2"]
    runs: list[tuple[int, int, dict[str, int]]] = []
    if attrs and "s2" in fams:
        combo = np.zeros(g, dtype=np.int64)
        for f in attrs:
            combo = combo * (n_classes[f] + 1) + index[f]
        starts = np.flatnonzero(np.concatenate([[True], combo[1:] != combo[:-1]]))
        stops = np.concatenate([starts[1:], [g]])
        runs = [
            (int(a), int(b), {f: int(index[f][a]) for f in attrs}) for a, b in zip(starts, stops, strict=True)
        ]
    return Groups(fams, index, area, sxyz, inv.astype(np.int64), tuple(runs))


def group_scores_t(
    groups: Groups, scores_t: Mapping[str, FloatArray], out: FloatArray | None = None
) -> FloatArray:
    """Alg. 2 on groups, transposed: ``groups x images`` from ``(classes + 1) x images`` class scores.

    ``P = (P_s2 * P_ls) * P_lc`` in float64, in the fixed family order, exactly as a raster implementation
    multiplying the per-pixel maps in that order. ``out``: optional contiguous ``groups x images`` buffer.
    """
    if "s2" not in groups.families or not groups.runs:
        P: FloatArray | None = None
        for f in groups.families:
            s = np.take(np.ascontiguousarray(scores_t[f]), groups.index[f], axis=0)
            P = s if P is None else np.multiply(P, s, out=P)
        assert P is not None
        if out is not None:
            out[...] = P
            return out
        return P
    src = np.ascontiguousarray(scores_t["s2"])
    P = np.take(src, groups.index["s2"], axis=0, out=out)
    for a, b, cls in groups.runs:
        blk = P[a:b]
        for f in groups.families:
            if f != "s2":
                blk *= scores_t[f][cls[f]]
    return P


# --------------------------------------------------------------------------------------------------
# Evaluation of one method on a batch of images
# --------------------------------------------------------------------------------------------------
@dataclass
class PixelLookup:
    """Pixels of each atom (built lazily from the atom index), for the exact top-1 fallback.

    Attributes:
        atom_index: ``H x W`` atom ids.
        grid: The grid.

    """

    atom_index: npt.NDArray[np.int32]
    grid: Grid
    _order: npt.NDArray[np.int32] | None = field(default=None, repr=False)
    _start: IntArray | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def atom_at(self, lat: FloatArray, lon: FloatArray) -> IntArray:
        """Atom of the pixel holding each point."""
        r, c = self.grid.pixel_of(lat, lon)
        return self.atom_index[r, c].astype(np.int64)

    def pixels_of(self, atom_ids: IntArray) -> IntArray:
        """Sorted row-major pixel indices of the given atoms."""
        with self._lock:
            if self._order is None:
                flat = self.atom_index.ravel()
                self._order = np.argsort(flat, kind="stable").astype(np.int32)
                counts = np.bincount(flat, minlength=int(flat.max()) + 1 if flat.size else 0)
                self._start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        assert self._start is not None and self._order is not None
        parts = [self._order[self._start[a] : self._start[a + 1]] for a in atom_ids]
        return np.sort(np.concatenate(parts).astype(np.int64)) if parts else np.zeros(0, np.int64)

    def nearest_pixel(self, atom_ids: IntArray, direction: FloatArray) -> tuple[float, float]:
        """Centre of the pixel of ``atom_ids`` nearest to ``direction`` (ties: lowest pixel index)."""
        px = self.pixels_of(atom_ids)
        rows, cols = np.divmod(px, self.grid.width)
        lat, lon = self.grid.pixel_center(rows, cols)
        dots = latlon_to_xyz(lat, lon) @ direction
        k = int(np.argmax(dots))
        return float(lat[k]), float(lon[k])


@dataclass
class TiledPixelLookup:
    """:class:`PixelLookup` for grids too large to hold: reads the tiled atom index GeoTIFF by windows.

    Points are looked up tile by tile (decoded tiles are cached, up to ``cache_tiles``). The exact top-1
    fallback needs the pixels of given atoms: on first use a *pixel-order file* is built in ``workdir``
    (default: a temporary folder removed with the object): every pixel's flat index, ordered by atom, then
    by pixel, so that atom ``a``'s pixels are the slice ``start[a]:start[a + 1]`` (``start`` from the atoms'
    ``n_pixels``). It is built in one windowed pass with bounded memory (pixels bucketed by atom range into
    temporary files, each bucket then sorted alone) and read by slices, never whole.

    Attributes:
        path: The atom index GeoTIFF.
        grid: The grid.
        n_pixels: Pixels per atom (the atom table's ``n_pixels``).
        workdir: Folder for the pixel-order file.
        cache_tiles: Decoded tiles kept for point look-ups.
        bucket_bytes: Bytes of one bucket while the pixel-order file is built.

    """

    path: Path
    grid: Grid
    n_pixels: IntArray
    workdir: Path | None = None
    cache_tiles: int = 2048
    bucket_bytes: int = 256 * 2**20
    _tiles: dict[int, npt.NDArray[np.int32]] = field(default_factory=dict, repr=False)
    _block: tuple[int, int] = (256, 256)
    _order_path: Path | None = field(default=None, repr=False)
    _tmp: object = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        import rasterio

        with rasterio.open(self.path) as ds:
            if (ds.height, ds.width) != self.grid.shape:
                raise ValueError(f"{self.path}: atom index {ds.height} x {ds.width} is not on the grid")
            bh, bw = ds.block_shapes[0]
        self._block = (int(bh), int(bw))
        self._start = np.concatenate([[0], np.cumsum(self.n_pixels)]).astype(np.int64)
        if int(self._start[-1]) != self.grid.height * self.grid.width:
            raise ValueError(f"{self.path}: the atoms' n_pixels do not sum to the grid's pixels")
        self._dtype = np.int32 if self.grid.height * self.grid.width < 2**31 else np.int64

    def read_rows(self, r0: int, r1: int) -> npt.NDArray[np.int32]:
        """Rows ``[r0, r1)`` of the atom index."""
        import rasterio

        with rasterio.open(self.path) as ds:
            return ds.read(1, window=rasterio.windows.Window(0, r0, self.grid.width, r1 - r0))

    def atom_at(self, lat: FloatArray, lon: FloatArray) -> IntArray:
        """Atom of the pixel holding each point (tile-wise windowed reads, decoded tiles cached)."""
        import rasterio

        r, c = self.grid.pixel_of(lat, lon)
        r, c = np.ravel(r), np.ravel(c)
        bh, bw = self._block
        nt = -(-self.grid.width // bw)
        tile = (r // bh) * nt + c // bw
        out = np.empty(r.size, dtype=np.int64)
        order = np.argsort(tile, kind="stable")
        ts = tile[order]
        bounds = np.flatnonzero(np.concatenate([[True], ts[1:] != ts[:-1], [True]]))
        full = rasterio.windows.Window(0, 0, self.grid.width, self.grid.height)
        with self._lock:
            got = {int(t): self._tiles[int(t)] for t in ts[bounds[:-1]] if int(t) in self._tiles}
            need = [int(t) for t in ts[bounds[:-1]] if int(t) not in got]
            if need:
                with rasterio.open(self.path) as ds:
                    for t in need:
                        tr, tc = divmod(t, nt)
                        win = rasterio.windows.Window(tc * bw, tr * bh, bw, bh).intersection(full)
                        got[t] = ds.read(1, window=win)
                for t in need:  # cache, oldest out first
                    if len(self._tiles) >= self.cache_tiles:
                        self._tiles.pop(next(iter(self._tiles)))
                    self._tiles[t] = got[t]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            t = int(ts[a])
            sel = order[a:b]
            tr, tc = divmod(t, nt)
            out[sel] = got[t][r[sel] - tr * bh, c[sel] - tc * bw]
        return out

    def _build_order(self) -> Path:
        import shutil
        import tempfile

        if self.workdir is None:
            tmp = tempfile.TemporaryDirectory(prefix="geoens_pixels_")
            self._tmp = tmp
            work = Path(tmp.name)
        else:
            work = Path(self.workdir)
            work.mkdir(parents=True, exist_ok=True)
        total = self.grid.height * self.grid.width
        item = np.dtype(self._dtype).itemsize
        k = int(max(1, min(256, -(-total * (item + 4) // self.bucket_bytes))))
        # atoms in consecutive ranges of about equal pixel counts; an atom larger than a range is a bucket
        # of its own (copied through: its pixels arrive in order), so no bucket exceeds ~2 ranges to sort
        first_atom = np.searchsorted(self._start[1:], np.linspace(0, total, k + 1)[:-1], side="right")
        big = np.flatnonzero(self.n_pixels > total // k)
        first_atom = np.unique(np.concatenate([first_atom, big, big + 1]))
        first_atom = first_atom[first_atom < self.n_pixels.size]
        k = first_atom.size
        bucket_of = np.searchsorted(first_atom, np.arange(self.n_pixels.size), side="right") - 1
        single = np.diff(np.concatenate([first_atom, [self.n_pixels.size]])) == 1
        w = self.grid.width
        rows = max(1, (64 * 2**20) // (w * 4))
        names = [(work / f"a{j}.bin", work / f"p{j}.bin") for j in range(k)]
        handles = [(open(x, "wb"), open(y, "wb")) for x, y in names]  # noqa: SIM115
        try:
            for a in range(0, self.grid.height, rows):
                e = min(self.grid.height, a + rows)
                idx = self.read_rows(a, e).ravel()
                px = np.arange(a * w, e * w, dtype=self._dtype)
                bk = bucket_of[idx]
                o = np.argsort(bk, kind="stable")
                counts = np.bincount(bk, minlength=k)
                pos = 0
                for jj in np.flatnonzero(counts):
                    sl = o[pos : pos + counts[jj]]
                    handles[jj][0].write(idx[sl].astype(np.int32).tobytes())
                    handles[jj][1].write(px[sl].tobytes())
                    pos += int(counts[jj])
        finally:
            for ha, hp in handles:
                ha.close()
                hp.close()
        out_path = work / "pixel_order.bin"
        with open(out_path, "wb") as out:
            for j, (fa, fp) in enumerate(names):  # bucket j holds atoms first_atom[j]..: written in order
                if single[j]:
                    with open(fp, "rb") as src:
                        shutil.copyfileobj(src, out, 64 * 2**20)
                else:
                    atoms_j = np.fromfile(fa, dtype=np.int32)
                    px_j = np.fromfile(fp, dtype=self._dtype)
                    out.write(px_j[np.argsort(atoms_j, kind="stable")].tobytes())
                    del atoms_j, px_j
                fa.unlink()
                fp.unlink()
        return out_path

    def pixels_of(self, atom_ids: IntArray) -> IntArray:
        """Sorted row-major pixel indices of the given atoms (slices of the pixel-order file)."""
        with self._lock:
            if self._order_path is None:
                self._order_path = self._build_order()
        item = np.dtype(self._dtype).itemsize
        parts = [
            np.fromfile(
                self._order_path, dtype=self._dtype, count=int(self._start[a + 1] - self._start[a]),
                offset=int(self._start[a]) * item,
            )
            for a in np.asarray(atom_ids, dtype=np.int64)
        ]  # fmt: skip
        return np.sort(np.concatenate(parts).astype(np.int64)) if parts else np.zeros(0, np.int64)

    def nearest_pixel(self, atom_ids: IntArray, direction: FloatArray) -> tuple[float, float]:
        """Centre of the pixel of ``atom_ids`` nearest to ``direction`` (ties: lowest pixel index)."""
        return PixelLookup.nearest_pixel(self, atom_ids, direction)  # type: ignore[arg-type]


#: Either pixel lookup (in memory, or windowed reads of the tiled index for large grids).
Lookup = PixelLookup | TiledPixelLookup


def open_pixel_lookup(
    atom_index_path: str | Path,
    atoms_path: str | Path,
    n_atoms: int,
    earth_radius_km: float = EARTH_RADIUS_KM,
    max_pixels: int = INDEX_IN_MEMORY_MAX_PIXELS,
    workdir: str | Path | None = None,
) -> Lookup:
    """The pixel lookup of an atom index: in memory up to ``max_pixels``, else windowed (DESIGN 10).

    Raises:
        ValueError: Naming the file if the index is not ``H x 2H``, holds ids outside ``0..n_atoms-1`` (in
            memory) or disagrees with the atoms' pixel counts (windowed).

    """
    import rasterio

    with rasterio.open(atom_index_path) as ds:
        h, w = ds.height, ds.width
    if w != 2 * h:
        raise ValueError(f"{atom_index_path}: atom index must be H x 2H, got {h} x {w}")
    grid = Grid(h, w, earth_radius_km)
    if h * w <= max_pixels:
        return PixelLookup(read_atom_index(atom_index_path, n_atoms), grid)
    npx = pd.read_parquet(atoms_path, columns=["n_pixels"])["n_pixels"].to_numpy(np.int64)
    if npx.size != n_atoms or np.any(npx < 0):
        raise ValueError(f"{atoms_path}: column n_pixels must hold every atom's pixel count")
    return TiledPixelLookup(Path(atom_index_path), grid, npx, Path(workdir) if workdir else None)


@dataclass
class MethodResult:
    """Per-image results of one method on a batch.

    Attributes:
        area: Alg. 3 area (km^2).
        zero_prob: ``P(g) == 0`` (area is then the whole sphere).
        top1_lat: Grid top-1 latitude (NaN when every ``P`` is 0).
        top1_lon: Grid top-1 longitude.

    """

    area: FloatArray
    zero_prob: BoolArray
    top1_lat: FloatArray
    top1_lon: FloatArray


def _true_positions(mask: BoolArray) -> IntArray:
    """Flat indices of the True entries of a contiguous bool array (fast when they are few)."""
    flat = mask.reshape(-1)
    m = flat.size // 8 * 8
    words = np.flatnonzero(flat[:m].view(np.uint64))
    cand = (words[:, None] * 8 + np.arange(8)).ravel()
    cand = cand[flat[cand]]
    tail = np.flatnonzero(flat[m:]) + m
    return np.concatenate([cand, tail]).astype(np.int64)


def evaluate_groups(
    groups: Groups,
    scores_t: Mapping[str, FloatArray],
    gt_atom: IntArray,
    total_area: float,
    lookup: Lookup | None = None,
    group_atoms_csr: tuple[IntArray, IntArray] | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    layout: RunLayout | None = None,
) -> MethodResult:
    """Alg. 2-3 (and the grid top-1 when ``lookup`` is given) for a batch of images on one method's groups.

    Uses the threshold form of :mod:`geoens.rva_fast` (no product is materialised) when the groups include
    ``s2``, else :func:`evaluate_groups_dense`.

    Args:
        groups: The method's groups.
        scores_t: Family -> ``(classes + 1) x batch`` Alg. 1 class scores (:meth:`Evaluator.scores`).
        gt_atom: Atom of each image's ground-truth pixel.
        total_area: Area of the sphere (km^2), the area of a zero-probability image.
        lookup: Pixel lookup for the top-1; ``None`` skips the top-1 (NaN).
        group_atoms_csr: ``(order, start)`` atoms of each group (``order[start[g]:start[g+1]]``), for the
            top-1 fallback; computed when needed.
        chunk_elements: Bound on ``groups x images`` of one matrix (dense form only).
        layout: The groups' run layout (:func:`geoens.rva_fast.run_layout`), computed when not given.

    """
    from geoens import rva_fast

    if "s2" not in groups.families:
        return evaluate_groups_dense(
            groups, scores_t, gt_atom, total_area, lookup, group_atoms_csr, chunk_elements
        )
    if layout is None:
        layout = rva_fast.run_layout(groups, _block_rows())
    return rva_fast.evaluate_numpy(groups, layout, scores_t, gt_atom, total_area, lookup, group_atoms_csr)


def _block_rows() -> int:
    from geoens import rva_fast

    return rva_fast.LAYOUT_BLOCK_ROWS


def evaluate_groups_dense(
    groups: Groups,
    scores_t: Mapping[str, FloatArray],
    gt_atom: IntArray,
    total_area: float,
    lookup: Lookup | None = None,
    group_atoms_csr: tuple[IntArray, IntArray] | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> MethodResult:
    """Alg. 2-3 and the top-1 on the dense ``groups x images`` score matrix (the previous engine).

    Materialises ``P`` of every group and image; kept for family sets without ``s2`` and as a reference for
    the threshold form (:func:`evaluate_groups`).

    Args:
        groups: The method's groups.
        scores_t: Family -> ``(classes + 1) x batch`` Alg. 1 class scores (:meth:`Evaluator.scores`).
        gt_atom: Atom of each image's ground-truth pixel.
        total_area: Area of the sphere (km^2), the area of a zero-probability image.
        lookup: Pixel lookup for the top-1; ``None`` skips the top-1 (NaN).
        group_atoms_csr: ``(order, start)`` atoms of each group (``order[start[g]:start[g+1]]``), for the
            top-1 fallback; computed when needed.
        chunk_elements: Bound on ``groups x images`` of one matrix.

    """
    b = gt_atom.size
    area = np.empty(b, dtype=np.float64)
    zero = np.zeros(b, dtype=bool)
    t_lat = np.full(b, np.nan)
    t_lon = np.full(b, np.nan)
    gt_group = groups.of_atom[gt_atom]
    G = groups.n
    step = max(1, min(b, chunk_elements // max(G, 1)))
    csr = group_atoms_csr
    pbuf = np.empty(G * step, dtype=np.float64)  # buffers reused: fresh 30 MB arrays cost page faults
    fbuf = np.empty(G * step, dtype=np.float64)
    bbuf = np.empty(G * step, dtype=bool)
    for s in range(0, b, step):
        rows = slice(s, min(b, s + step))
        n = rows.stop - rows.start
        sc = {f: scores_t[f][:, rows] for f in groups.families}
        P = group_scores_t(groups, sc, out=pbuf[: G * n].reshape(G, n))  # groups x images
        cols = np.arange(n)
        thr = P[gt_group[rows], cols]
        ge = fbuf[: G * n].reshape(G, n)
        np.greater_equal(P, thr[None, :], out=ge, casting="unsafe")  # 1.0 / 0.0
        area[rows] = groups.area @ ge
        z = thr == 0.0
        area[rows][z] = total_area
        zero[rows] = z
        if lookup is None:
            continue
        pmax = P.max(axis=0)
        top = bbuf[: G * n].reshape(G, n)
        np.equal(P, pmax[None, :], out=top)
        gi, bi = np.divmod(_true_positions(top), n)
        cen = np.zeros((n, 3))
        np.add.at(cen, bi, groups.sxyz[gi])
        norm = np.linalg.norm(cen, axis=1)
        okc = (pmax > 0) & (norm > 0)
        cen_u = np.where(okc[:, None], cen / np.where(norm > 0, norm, 1.0)[:, None], 0.0)
        lat, lon = xyz_to_latlon(cen_u)
        lat = np.clip(lat, -90.0, 90.0)
        idx = np.flatnonzero(okc)
        if idx.size == 0:
            continue
        a = lookup.atom_at(lat[idx], lon[idx])
        inside = top[groups.of_atom[a], idx]
        t_lat[s + idx[inside]] = lat[idx[inside]]
        t_lon[s + idx[inside]] = lon[idx[inside]]
        for i in idx[~inside]:
            if csr is None:
                order = np.argsort(groups.of_atom, kind="stable")
                start = np.concatenate([[0], np.cumsum(np.bincount(groups.of_atom, minlength=groups.n))])
                csr = (order.astype(np.int64), start.astype(np.int64))
            gs = gi[bi == i]
            atom_ids = np.concatenate([csr[0][csr[1][g] : csr[1][g + 1]] for g in gs])
            t_lat[s + i], t_lon[s + i] = lookup.nearest_pixel(atom_ids, cen_u[i])
    return MethodResult(area, zero, t_lat, t_lon)


# --------------------------------------------------------------------------------------------------
# Whole test set
# --------------------------------------------------------------------------------------------------
@dataclass
class Evaluator:
    """Evaluates every method of the given bases on batches of images.

    Attributes:
        atoms: The atom table.
        n_classes: Predictor classes per family (``s2`` = number of fine cells).
        lookup: Pixel lookup (atom index) for ground-truth atoms and the top-1.
        total_area: Area of the sphere, ``4 pi R^2``.
        absorption: ``(cells, targets)`` of the absorbed S2 cells.
        chunk_elements: Bound on one ``images x groups`` matrix (dense forms).
        backend: ``numpy`` (threshold form) or ``torch`` (dense form on ``device``), see
            :mod:`geoens.rva_fast`; both give the same results.
        device: Torch device of the torch backend (default: CUDA when present, else CPU).

    """

    atoms: AtomTable
    n_classes: dict[str, int]
    lookup: Lookup
    total_area: float
    absorption: tuple[IntArray, IntArray] = field(
        default_factory=lambda: (np.zeros(0, np.int64), np.zeros(0, np.int64))
    )
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
    backend: str = "numpy"
    device: str | None = None
    _groups: dict[tuple[str, ...], Groups] = field(default_factory=dict, repr=False)
    _csr: dict[tuple[str, ...], tuple[IntArray, IntArray]] = field(default_factory=dict, repr=False)
    _layouts: dict[tuple[str, ...], RunLayout] = field(default_factory=dict, repr=False)
    _torch: dict[tuple[str, ...], Any] = field(default_factory=dict, repr=False)
    class_area: dict[str, FloatArray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in ("numpy", "torch"):
            raise ValueError(f"evaluation backend must be 'numpy' or 'torch', got {self.backend!r}")
        for f in FAMILIES:
            self.class_area[f] = self.atoms.class_areas(f, self.n_classes[f])

    def groups(self, families: tuple[str, ...]) -> Groups:
        """Return the (cached) groups of a family set."""
        if families not in self._groups:
            self._groups[families] = group_atoms(self.atoms, families, self.n_classes)
        return self._groups[families]

    def scores(
        self, probs: Mapping[str, npt.ArrayLike], ids: Sequence[str] | None = None
    ) -> dict[str, FloatArray]:
        """Alg. 1 class scores per family, ``(classes + 1) x images`` (transposed; last row: label -1).

        Raw predictor outputs are renormalised in float64; S2 probabilities are then absorbed.
        """
        out = {}
        for f, p in probs.items():
            out[f] = scores_t(p, self.class_area[f], self.absorption if f == "s2" else None, f, ids)
        return out

    def urban_scores(self, batch: int) -> FloatArray:
        """Alg. 1 scores of the constant urban prior, ``(classes + 1) x batch``."""
        return np.repeat(urban_prior_scores(self.class_area["ls"])[:, None], batch, axis=1)

    def evaluate_many(
        self,
        methods: Sequence[Method],
        scores: Mapping[str, FloatArray],
        gt_atom: IntArray,
        top1: bool = True,
        threads: int = 1,
    ) -> list[MethodResult]:
        """:meth:`evaluate` for several methods, ``threads`` of them at a time (numpy releases the GIL).

        Each method is computed whole by one thread, so the results do not depend on ``threads``.
        """
        for m in methods:  # caches first, one thread
            self.evaluate(m, {f: s[:, :0] for f, s in scores.items()}, gt_atom[:0], top1)
        if threads <= 1 or len(methods) <= 1:
            return [self.evaluate(m, scores, gt_atom, top1) for m in methods]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(lambda m: self.evaluate(m, scores, gt_atom, top1), methods))

    def evaluate(
        self,
        method: Method,
        scores: Mapping[str, FloatArray],
        gt_atom: IntArray,
        top1: bool = True,
    ) -> MethodResult:
        """Alg. 2-3 and the grid top-1 of one method on a batch (``scores`` from :meth:`scores`)."""
        sc = {f: scores[f] for f in method.families if not (f == "ls" and method.urban_prior)}
        if method.urban_prior:
            sc["ls"] = self.urban_scores(gt_atom.size)
        fams = method.families
        g = self.groups(fams)
        from geoens import rva_fast

        if top1 and fams not in self._csr:
            self._csr[fams] = rva_fast.group_csr(g)
        lookup = self.lookup if top1 else None
        if self.backend == "torch":
            dev = rva_fast.torch_device(self.device)
            if fams not in self._torch:
                self._torch[fams] = rva_fast.torch_groups(g, dev)
            return rva_fast.evaluate_torch(
                g, self._torch[fams], sc, gt_atom, self.total_area, lookup, self._csr.get(fams),
                self.chunk_elements, dev,
            )  # fmt: skip
        if "s2" in fams and fams not in self._layouts:
            self._layouts[fams] = rva_fast.run_layout(g, _block_rows())
        return evaluate_groups(
            g,
            sc,
            gt_atom,
            self.total_area,
            lookup=lookup,
            group_atoms_csr=self._csr.get(fams),
            chunk_elements=self.chunk_elements,
            layout=self._layouts.get(fams),
        )


def read_probs(path: str | Path) -> tuple[list[str], npt.NDArray[np.float32]]:
    """Read a predictions Parquet: ``(image_ids, probs as batch x classes float32)``.

    Raises:
        ValueError: Naming the file on missing columns, ragged or empty probability lists, or duplicate ids.

    """
    table = pq.read_table(path, columns=["image_id", "probs"])
    return _probs_from_table(table, str(path))


def _probs_from_table(table: pa.Table, source: str) -> tuple[list[str], npt.NDArray[np.float32]]:
    for c in ("image_id", "probs"):
        if c not in table.column_names:
            raise ValueError(f"{source}: missing column {c!r}")
    ids = [str(x) for x in table.column("image_id").to_pylist()]
    col = table.column("probs").combine_chunks()
    if len(ids) == 0:
        return ids, np.zeros((0, 0), np.float32)
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        flat = col.flatten().to_numpy(zero_copy_only=False)
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = np.asarray(col.value_lengths().to_numpy(zero_copy_only=False))
        width = int(lengths[0])
        if np.any(lengths != width):
            i = int(np.flatnonzero(lengths != width)[0])
            raise ValueError(
                f"{source}: probs of row {i} (image {ids[i]}) has {lengths[i]} values, not {width}"
            )
        flat = col.flatten().to_numpy(zero_copy_only=False)
    else:
        raise ValueError(f"{source}: column 'probs' must be a list of floats, got {col.type}")
    probs = np.asarray(flat, dtype=np.float32).reshape(len(ids), width)
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise ValueError(f"{source}: duplicate image_id {dup!r}")
    return ids, probs


def iter_prob_batches(
    path: str | Path, batch_size: int
) -> Iterator[tuple[list[str], npt.NDArray[np.float32]]]:
    """Stream a predictions Parquet in batches of ``batch_size`` rows (bounded memory for big test sets)."""
    pf = pq.ParquetFile(path)
    for rb in pf.iter_batches(batch_size=batch_size, columns=["image_id", "probs"]):
        yield _probs_from_table(pa.Table.from_batches([rb]), str(path))


def read_partition_centres(path: str | Path) -> tuple[FloatArray, FloatArray]:
    """Mean location ``(lat, lon)`` of each fine class from a GeoEstimation partition CSV (2 comment lines).

    Raises:
        ValueError: Naming the file if columns are missing or ``class_label`` is not ``0..n-1``.

    """
    df = pd.read_csv(path, skiprows=2)
    need = ["class_label", "latitude_mean", "longitude_mean"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (expected 2 comment lines, then a header)")
    df = df.sort_values("class_label")
    if not np.array_equal(df["class_label"].to_numpy(), np.arange(len(df))):
        raise ValueError(f"{path}: class_label must be 0..n-1")
    return df["latitude_mean"].to_numpy(np.float64), df["longitude_mean"].to_numpy(np.float64)


def read_absorption(path: str | Path) -> tuple[IntArray, IntArray]:
    """Read ``s2_absorption.parquet`` as ``(cells, targets)``.

    Raises:
        ValueError: Naming the file if a column is missing.

    """
    df = pd.read_parquet(path)
    for c in ("cell", "target"):
        if c not in df.columns:
            raise ValueError(f"{path}: missing column {c!r}")
    return df["cell"].to_numpy(np.int64), df["target"].to_numpy(np.int64)


def evaluate_testset(
    atoms_path: str | Path,
    atom_index_path: str | Path,
    absorption_path: str | Path,
    labels_path: str | Path,
    fine_csv_path: str | Path,
    predictions: Mapping[str, str | Path],
    earth_radius_km: float = EARTH_RADIUS_KM,
    batch_size: int = 2048,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    progress: Callable[[int], None] | None = None,
    index_max_pixels: int = INDEX_IN_MEMORY_MAX_PIXELS,
    threads: int = 1,
) -> pd.DataFrame:
    """Evaluate every method of every base model on one test set (the ``evaluate`` rule).

    Args:
        atoms_path: ``results/atoms/atoms.parquet``.
        atom_index_path: ``results/atoms/atom_index.tif``.
        absorption_path: ``results/masks/s2_absorption.parquet``.
        labels_path: ``results/labels/testsets/<testset>.parquet`` (``image_id, lat, lon``).
        fine_csv_path: The fine partition CSV (each class's mean location, for the base models' own top-1).
        predictions: Model (``ls``, ``lc`` and each base model) -> predictions Parquet.
        earth_radius_km: Sphere radius of the grid (whole-sphere area of zero-probability images).
        batch_size: Images per streamed batch of a base model's predictions.
        chunk_elements: Bound on one ``images x groups`` matrix.
        progress: Called with the number of images done after each batch.
        index_max_pixels: Largest grid whose atom index is held in memory; larger grids read the tiled
            index by windows (:func:`open_pixel_lookup`).
        threads: Methods evaluated at a time (:meth:`Evaluator.evaluate_many`).

    Returns:
        The per-image table (:data:`PER_IMAGE_COLUMNS`), rows ordered by base, method, label order of images.

    Raises:
        ValueError: Naming the file on inconsistent inputs.

    """
    atoms = read_atoms(atoms_path)
    lookup = open_pixel_lookup(atom_index_path, atoms_path, atoms.n, earth_radius_km, index_max_pixels)
    grid = lookup.grid
    cells, targets = read_absorption(absorption_path)
    labels = pd.read_parquet(labels_path)
    for c in ("image_id", "lat", "lon"):
        if c not in labels.columns:
            raise ValueError(f"{labels_path}: missing column {c!r}")
    labels = labels.assign(image_id=labels["image_id"].astype(str)).drop_duplicates("image_id")
    centre_lat, centre_lon = read_partition_centres(fine_csv_path)
    n_cells = centre_lat.size
    bases = [b for b in BASE_MODELS if b in predictions]
    missing = [m for m in ("ls", "lc") if m not in predictions]
    if missing or not bases:
        raise ValueError(
            f"evaluate: predictions needed for ls, lc and a base model; missing {missing or bases}"
        )
    attr_row: dict[str, pd.Series] = {}
    attr_probs: dict[str, npt.NDArray[np.float32]] = {}
    for f in ("ls", "lc"):
        ids, p = read_probs(predictions[f])
        if p.shape[1] != N_CLASSES[f]:
            raise ValueError(f"{predictions[f]}: {p.shape[1]} classes, expected {N_CLASSES[f]}")
        attr_row[f] = pd.Series(np.arange(len(ids)), index=pd.Index(ids))
        attr_probs[f] = p
    ev = Evaluator(
        atoms,
        {"s2": n_cells, **N_CLASSES},
        lookup,
        grid.total_area(),
        (cells, targets),
        chunk_elements,
    )
    lab = labels.set_index("image_id")
    frames = []
    done = 0
    for base in bases:
        for ids_all, p_base in iter_prob_batches(predictions[base], batch_size):
            if p_base.shape[1] != n_cells:
                raise ValueError(
                    f"{predictions[base]}: {p_base.shape[1]} classes but {fine_csv_path} has {n_cells} cells"
                )
            keep = np.asarray(
                pd.Index(ids_all).isin(lab.index)
                & pd.Index(ids_all).isin(attr_row["ls"].index)
                & pd.Index(ids_all).isin(attr_row["lc"].index),
                dtype=bool,
            )
            if not keep.all():
                log.warning(
                    "%s: %d image(s) without labels or attribute predictions skipped",
                    predictions[base],
                    int((~keep).sum()),
                )
            ids = [i for i, k in zip(ids_all, keep, strict=True) if k]
            if not ids:
                continue
            pb = p_base[keep]
            lat = lab.loc[ids, "lat"].to_numpy(np.float64)
            lon = lab.loc[ids, "lon"].to_numpy(np.float64)
            try:
                gt_atom = ev.lookup.atom_at(lat, lon)
            except ValueError as exc:
                raise ValueError(f"{labels_path}: {exc}") from exc
            probs = {"s2": pb}
            for f in ("ls", "lc"):
                probs[f] = attr_probs[f][attr_row[f].loc[ids].to_numpy()]
            sc = ev.scores(probs, ids)
            ls_bucket = atoms.labels["ls"][gt_atom].astype(np.int8)
            methods = all_methods([base])
            for m, r in zip(methods, ev.evaluate_many(methods, sc, gt_atom, threads=threads), strict=True):
                gcd = haversine_km(lat, lon, r.top1_lat, r.top1_lon, GCD_RADIUS_KM)
                frames.append(
                    _frame(ids, base, m.name, r.area, r.zero_prob, r.top1_lat, r.top1_lon, gcd, ls_bucket)
                )
            arg = np.argmax(pb, axis=1)
            olat, olon = centre_lat[arg], centre_lon[arg]
            gcd = haversine_km(lat, lon, olat, olon, GCD_RADIUS_KM)
            nan = np.full(len(ids), np.nan)
            frames.append(
                _frame(
                    ids, base, own_top1_name(base), nan, np.zeros(len(ids), bool), olat, olon, gcd, ls_bucket
                )
            )
            done += len(ids)
            if progress is not None:
                progress(len(ids))
    if not frames:
        raise ValueError(f"{labels_path}: no image has labels and all predictions")
    out = pd.concat(frames, ignore_index=True)
    order = {n: k for k, n in enumerate(method_order(bases))}
    out["_o"] = out["method"].map(order)
    out = out.sort_values(["_o"], kind="stable").drop(columns="_o").reset_index(drop=True)
    return out


def method_order(bases: Sequence[str] = BASE_MODELS) -> list[str]:
    """List method names in table order: each base's variants, then its own top-1."""
    out = []
    for b in bases:
        out += [m.name for m in all_methods([b])] + [own_top1_name(b)]
    return out


def _frame(
    ids: Sequence[str],
    base: str,
    method: str,
    area: FloatArray,
    zero: BoolArray,
    lat: FloatArray,
    lon: FloatArray,
    gcd: FloatArray,
    ls_bucket: npt.NDArray[np.int8],
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": list(ids),
            "base": base,
            "method": method,
            "area_km2": np.asarray(area, np.float64),
            "zero_prob": np.asarray(zero, bool),
            "top1_lat": np.asarray(lat, np.float64),
            "top1_lon": np.asarray(lon, np.float64),
            "gcd_km": np.asarray(gcd, np.float64),
            "ls_bucket": np.asarray(ls_bucket, np.int8),
        }
    )


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------
def recall_at(areas: npt.ArrayLike, alphas: npt.ArrayLike) -> FloatArray:
    """``recall(alpha)``: share of images with ``area <= alpha``, per alpha (NaN areas are misses)."""
    a = np.asarray(areas, dtype=np.float64)
    al = np.asarray(alphas, dtype=np.float64)
    if a.size == 0:
        return np.full(al.shape, np.nan)
    s = np.sort(np.where(np.isnan(a), np.inf, a))
    return np.searchsorted(s, al, side="right") / a.size


def gcd_accuracy(gcd_km: npt.ArrayLike, thresholds: npt.ArrayLike = GCD_THRESHOLDS_KM) -> FloatArray:
    """Share of images with distance ``<= threshold`` (NaN distances count as misses)."""
    return recall_at(gcd_km, thresholds)


def curve_alphas(n: int = 200, lo: float = 1.0, hi: float | None = None) -> FloatArray:
    """Log-spaced area budgets (km^2) from ``lo`` to the area of the sphere, for RvA curves."""
    top = hi if hi is not None else 4.0 * math.pi * EARTH_RADIUS_KM**2
    return np.logspace(math.log10(lo), math.log10(top), n)


def balanced_sample(
    buckets: npt.ArrayLike, seed: int, n_buckets: int = len(LS_BUCKETS)
) -> tuple[IntArray, list[int]]:
    """Draw a balanced subset: the same number of images from every ground-truth LS bucket.

    ``min`` of the non-empty buckets' counts is drawn without replacement from each non-empty bucket
    (seeded); images with no bucket (-1) leave the set. Returned indices are sorted.

    Returns:
        ``(indices, counts per bucket before balancing)``.

    """
    b = np.asarray(buckets, dtype=np.int64)
    counts = [int((b == k).sum()) for k in range(n_buckets)]
    nonempty = [c for c in counts if c > 0]
    if not nonempty:
        return np.zeros(0, np.int64), counts
    m = min(nonempty)
    rng = np.random.default_rng(seed)
    pick = [rng.choice(np.flatnonzero(b == k), size=m, replace=False) for k in range(n_buckets) if counts[k]]
    return np.sort(np.concatenate(pick)).astype(np.int64), counts


def bootstrap_weights(n: int, n_boot: int, seed: int) -> npt.NDArray[np.float32]:
    """``n_boot x n`` resampling counts (each row a bootstrap resample of ``n`` images), seeded."""
    rng = np.random.default_rng(seed)
    w = np.zeros((n_boot, n), dtype=np.float32)  # integer counts: exact in float32 below 2**24
    for k in range(n_boot):
        w[k] = np.bincount(rng.integers(0, n, size=n), minlength=n)
    return w


def bootstrap_ci(
    hits: npt.ArrayLike, weights: npt.NDArray[np.float32], level: float = 0.95
) -> tuple[FloatArray, FloatArray]:
    """Percentile bootstrap interval of the mean of each column of ``hits`` (``n x k`` values in {-1, 0, 1}).

    The weighted sums are integers, exact in float32 below ``2**24`` images.
    """
    h = np.asarray(hits, dtype=np.float32)
    if weights.shape[0] == 0 or h.shape[0] == 0:
        nan = np.full(h.shape[1:], np.nan)
        return nan, nan.copy()
    stats = (weights @ h).astype(np.float64) / h.shape[0]
    q = (1.0 - level) / 2.0
    return np.quantile(stats, q, axis=0), np.quantile(stats, 1.0 - q, axis=0)


@dataclass
class Summary:
    """Metrics of one test set and kind (original or balanced).

    Attributes:
        table: One row per method: ``base, method, n`` and, per metric, value / ``_lo`` / ``_hi`` (fractions).
        curves: Long table ``base, method, alpha, recall, lo, hi`` (RvA curves with bootstrap bands).
        bucket_counts: Images per LS bucket before balancing.
        n_images: Images in the set.

    """

    table: pd.DataFrame
    curves: pd.DataFrame
    bucket_counts: list[int]
    n_images: int


def metric_names() -> list[str]:
    """Column names of the table metrics: RvA at the five caps, then GCD accuracy at the five thresholds."""
    return [f"rva_{int(r)}km" for r in GCD_THRESHOLDS_KM] + [f"gcd_{int(r)}km" for r in GCD_THRESHOLDS_KM]


def summarise(
    per_image: pd.DataFrame,
    balanced: bool,
    n_boot: int,
    seed: int,
    balanced_seed: int,
    alphas: FloatArray | None = None,
) -> Summary:
    """Recall at the cap areas, GCD accuracy, RvA curves, all with paired bootstrap 95% intervals.

    Args:
        per_image: The per-image table of one test set.
        balanced: Restrict to the balanced set (equal images per ground-truth LS bucket).
        n_boot: Bootstrap resamples (0: no intervals).
        seed: Bootstrap seed (the same resamples for every method, so differences are paired).
        balanced_seed: Seed of the balanced sampling.
        alphas: Area budgets of the curves (default :func:`curve_alphas`).

    """
    missing = [c for c in PER_IMAGE_COLUMNS if c not in per_image.columns]
    if missing:
        raise ValueError(f"per-image table: missing column(s) {missing}")
    al = alphas if alphas is not None else curve_alphas()
    images = (
        per_image.drop_duplicates("image_id")[["image_id", "ls_bucket"]]
        .sort_values("image_id")
        .reset_index(drop=True)
    )
    counts = [int((images["ls_bucket"] == k).sum()) for k in range(len(LS_BUCKETS))]
    if balanced:
        idx, counts = balanced_sample(images["ls_bucket"].to_numpy(), balanced_seed)
        images = images.iloc[idx].reset_index(drop=True)
    n = len(images)
    pos = pd.Series(np.arange(n), index=images["image_id"].to_numpy())
    w = bootstrap_weights(n, n_boot, seed)
    caps = np.asarray(CAP_AREAS_KM2)
    thr = np.asarray(GCD_THRESHOLDS_KM)
    names = metric_names()
    rows, curves = [], []
    bases = list(dict.fromkeys(per_image["base"]))
    for method in [m for m in method_order(bases) if m in set(per_image["method"])]:
        sub = per_image[(per_image["method"] == method) & per_image["image_id"].isin(pos.index)]
        sub = sub.iloc[np.argsort(pos[sub["image_id"]].to_numpy())]
        if len(sub) != n:
            raise ValueError(f"per-image table: method {method!r} has {len(sub)} of {n} images")
        area = sub["area_km2"].to_numpy(np.float64)
        area = np.where(np.isnan(area), np.inf, area)
        gcd = sub["gcd_km"].to_numpy(np.float64)
        gcd = np.where(np.isnan(gcd), np.inf, gcd)
        has_area = not np.all(np.isinf(area))
        hits = np.concatenate([area[:, None] <= caps[None, :], gcd[:, None] <= thr[None, :]], axis=1)
        val = hits.mean(axis=0) if n else np.full(hits.shape[1], np.nan)
        lo, hi = bootstrap_ci(hits, w)
        row: dict[str, object] = {"base": sub["base"].iloc[0] if n else "", "method": method, "n": n}
        row["zero_prob"] = float(sub["zero_prob"].mean()) if n else np.nan
        for k, name in enumerate(names):
            is_rva = name.startswith("rva")
            row[name] = val[k] if (has_area or not is_rva) else np.nan
            row[name + "_lo"] = lo[k] if (has_area or not is_rva) else np.nan
            row[name + "_hi"] = hi[k] if (has_area or not is_rva) else np.nan
        rows.append(row)
        if has_area:
            ch = area[:, None] <= al[None, :]
            clo, chi = bootstrap_ci(ch, w)
            curves.append(
                pd.DataFrame(
                    {
                        "base": row["base"],
                        "method": method,
                        "alpha": al,
                        "recall": ch.mean(axis=0) if n else np.nan,
                        "lo": clo,
                        "hi": chi,
                    }
                )
            )
    cur = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    return Summary(pd.DataFrame(rows), cur, counts, n)


def bucket_recall(per_image: pd.DataFrame, caps: Sequence[float] = CAP_AREAS_KM2) -> pd.DataFrame:
    """Recall at the cap areas per ground-truth LS bucket and method (long table, fractions)."""
    rows = []
    df = per_image[per_image["area_km2"].notna()]
    for key, sub in df.groupby(["method", "ls_bucket"], sort=False):
        method, bucket = str(key[0]), int(str(key[1]))
        if bucket < 0:
            continue
        rec = recall_at(sub["area_km2"].to_numpy(), caps)
        for r, c, v in zip(GCD_THRESHOLDS_KM, caps, rec, strict=True):
            rows.append(
                {
                    "base": sub["base"].iloc[0],
                    "method": method,
                    "bucket": LS_BUCKETS[bucket],
                    "radius_km": r,
                    "cap_km2": c,
                    "recall": v,
                    "n": len(sub),
                }
            )
    return pd.DataFrame(rows)
