"""Atoms: the sets of grid pixels sharing one tuple of labels ``(s2, ls, lc)`` (DESIGN 4).

The ensemble probability ``P`` is constant on every atom, so evaluation works on the atom table instead of
``H x W`` rasters. Every distinct tuple over the grid is an atom, including those with ``-1`` labels (so the
atoms tile the sphere: ``n_pixels`` sums to ``H * W`` and ``area_km2`` to ``4 pi R^2``).

Numbering is deterministic: atoms are sorted by ``(s2, ls, lc)`` (``-1`` first) and numbered ``0..n-1``.
Columns (docs/ARCHITECTURE.md): ``atom`` int32; ``s2``, ``ls``, ``lc`` int32 (-1 none); ``area_km2`` f64;
``n_pixels`` i64; ``rep_lat``, ``rep_lon`` f64, the centre of the atom's pixel nearest to its area-weighted
spherical centroid (ties: first pixel in row-major order), so the point always lies inside the atom;
``sx, sy, sz`` f64, sums over the atom's pixels of area times the unit vector of the pixel centre.

The rasters are processed in row strips (three passes: tuple keys, sums, representative pixel). The workflow's
:func:`make_atoms` reads the masks by row windows and keeps the index in a temporary file, so its memory
stays at a few strips whatever the grid (the 1 km grid, DESIGN 10, has 933 M pixels).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
from rasterio.crs import CRS

from geoens.core.constants import FAMILIES, N_CLASSES
from geoens.core.grid import Grid, latlon_to_xyz
from geoens.core.io import atomic_path
from geoens.core.types import FloatArray, I32Array, IntArray

#: Columns of ``results/atoms/atoms.parquet``, in order.
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

_N_LS = N_CLASSES["ls"] + 1  # classes plus "none"
_N_LC = N_CLASSES["lc"] + 1


def _keys(s2: np.ndarray, ls: np.ndarray, lc: np.ndarray) -> npt.NDArray[np.int64]:
    """Order-preserving int64 key of each tuple: sorting keys sorts tuples lexicographically."""
    return ((s2.astype(np.int64) + 1) * _N_LS + (ls.astype(np.int64) + 1)) * _N_LC + (lc.astype(np.int64) + 1)


def _decode(keys: npt.NDArray[np.int64]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lc = keys % _N_LC - 1
    rest = keys // _N_LC
    return rest // _N_LS - 1, rest % _N_LS - 1, lc


def _strips(grid: Grid, strip_rows: int) -> Iterator[tuple[int, int]]:
    for r0 in range(0, grid.height, strip_rows):
        yield r0, min(grid.height, r0 + strip_rows)


class _IndexStore:
    """Where the atom index goes while the table is built: an in-memory array or a raw temporary file."""

    def __init__(self, grid: Grid, path: Path | None = None) -> None:
        self.grid = grid
        self.path = path
        self.array: I32Array | None = None
        if path is None:
            self.array = np.empty(grid.shape, dtype=np.int32)
        else:
            path.write_bytes(b"")

    def write(self, r0: int, idx: I32Array) -> None:
        if self.array is not None:
            self.array[r0 : r0 + idx.shape[0]] = idx
            return
        assert self.path is not None
        with open(self.path, "r+b") as fh:
            fh.seek(r0 * self.grid.width * 4)
            fh.write(np.ascontiguousarray(idx, dtype=np.int32).tobytes())

    def read(self, r0: int, r1: int) -> I32Array:
        if self.array is not None:
            return self.array[r0:r1]
        w = self.grid.width
        assert self.path is not None
        return np.fromfile(self.path, dtype=np.int32, count=(r1 - r0) * w, offset=r0 * w * 4).reshape(-1, w)


LabelReader = Callable[[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]


def build_atoms(
    s2: np.ndarray, ls: np.ndarray, lc: np.ndarray, grid: Grid, strip_rows: int = 256
) -> tuple[pd.DataFrame, I32Array]:
    """Atom table and per-pixel atom index from the three label rasters.

    Args:
        s2: ``H x W`` S2 class labels (-1 none).
        ls: ``H x W`` LS buckets (-1 none).
        lc: ``H x W`` LC classes (-1 none).
        grid: The common grid.
        strip_rows: Rows per processing strip.

    Returns:
        ``(atoms, atom_index)``: the table (columns :data:`ATOM_COLUMNS`) and the ``int32`` index raster.

    Raises:
        ValueError: If a raster is not on the grid or holds labels out of range.

    """
    for name, arr in (("s2", s2), ("ls", ls), ("lc", lc)):
        if arr.shape != grid.shape:
            raise ValueError(f"{name} label raster {arr.shape} is not on the grid {grid.shape}")
    store = _IndexStore(grid)
    table = build_atoms_strips(lambda a, b: (s2[a:b], ls[a:b], lc[a:b]), grid, store, strip_rows)
    assert store.array is not None
    return table, store.array


def build_atoms_strips(
    read: LabelReader, grid: Grid, store: _IndexStore, strip_rows: int = 256, where: str = "labels"
) -> pd.DataFrame:
    """The atom table from label strips ``read(r0, r1) -> (s2, ls, lc)``, the index written to ``store``.

    Memory: one strip of each raster plus per-atom sums; the index lives in ``store`` (array or file).

    Raises:
        ValueError: Naming ``where`` if a strip holds labels out of range.

    """
    # pass 1: distinct tuples
    uniq = []
    for a, b in _strips(grid, strip_rows):
        s2, ls, lc = read(a, b)
        for name, arr, hi in (("s2", s2, None), ("ls", ls, _N_LS - 2), ("lc", lc, _N_LC - 2)):
            lo_v, hi_v = int(arr.min()), int(arr.max())
            if lo_v < -1 or (hi is not None and hi_v > hi):
                raise ValueError(
                    f"{where}: {name} labels outside -1..{hi if hi is not None else 'n'}: "
                    f"range [{lo_v}, {hi_v}] in rows {a}..{b}"
                )
        uniq.append(np.unique(_keys(s2, ls, lc)))
    keys = np.unique(np.concatenate(uniq))
    del uniq
    n = keys.size
    if n > np.iinfo(np.int32).max:
        raise ValueError(f"{n} atoms do not fit int32 ids")
    # pass 2: index, counts, areas, area-weighted vector sums
    n_pix = np.zeros(n, dtype=np.int64)
    area = np.zeros(n, dtype=np.float64)
    sxyz = np.zeros((3, n), dtype=np.float64)
    row_area = grid.row_areas()
    lat = np.deg2rad(grid.lat_centers())
    lon = np.deg2rad(grid.lon_centers())
    cos_lon, sin_lon = np.cos(lon), np.sin(lon)
    for a, b in _strips(grid, strip_rows):
        idx = np.searchsorted(keys, _keys(*read(a, b))).astype(np.int32)
        store.write(a, idx)
        flat = idx.ravel()
        w = np.broadcast_to(row_area[a:b, None], idx.shape).ravel()
        n_pix += np.bincount(flat, minlength=n)
        area += np.bincount(flat, weights=w, minlength=n)
        cl = np.cos(lat[a:b])[:, None]
        comps = (
            cl * cos_lon[None, :],
            cl * sin_lon[None, :],
            np.broadcast_to(np.sin(lat[a:b])[:, None], idx.shape),
        )
        for k, comp in enumerate(comps):
            sxyz[k] += np.bincount(flat, weights=w * np.asarray(comp).ravel(), minlength=n)
    # pass 3: representative pixel = pixel centre nearest the centroid direction (max dot product; ties:
    # first pixel in row-major order), one pass: per strip maxima merged into the running best
    norm = np.sqrt((sxyz**2).sum(axis=0))
    cdir = sxyz / np.where(norm > 0, norm, 1.0)
    best = np.full(n, -np.inf)
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    for a, b in _strips(grid, strip_rows):
        idx = store.read(a, b)
        cl = np.cos(lat[a:b])[:, None]
        d = (
            (cl * cos_lon[None, :] * cdir[0][idx] + cl * sin_lon[None, :] * cdir[1][idx])
            + np.sin(lat[a:b])[:, None] * cdir[2][idx]
        ).ravel()
        flat = idx.ravel()
        sm = np.full(n, -np.inf)
        np.maximum.at(sm, flat, d)
        hit = d == sm[flat]
        sf = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(sf, flat[hit], np.flatnonzero(hit) + a * grid.width)
        better = sm > best  # equal maxima keep the earlier strip's (lower) pixel
        best[better] = sm[better]
        first[better] = sf[better]
    rep_lat, rep_lon = grid.pixel_center(first // grid.width, first % grid.width)
    s2k, lsk, lck = _decode(keys)
    return pd.DataFrame(
        {
            "atom": np.arange(n, dtype=np.int32),
            "s2": s2k.astype(np.int32),
            "ls": lsk.astype(np.int32),
            "lc": lck.astype(np.int32),
            "area_km2": area,
            "n_pixels": n_pix,
            "rep_lat": rep_lat,
            "rep_lon": rep_lon,
            "sx": sxyz[0],
            "sy": sxyz[1],
            "sz": sxyz[2],
        }
    )


def atom_of(lat: npt.ArrayLike, lon: npt.ArrayLike, atom_index: I32Array, grid: Grid) -> I32Array:
    """Atom id of each point (the atom of the grid pixel containing it).

    Raises:
        ValueError: If ``atom_index`` is not on the grid or a point is invalid (see ``Grid.pixel_of``).

    """
    if atom_index.shape != grid.shape:
        raise ValueError(f"atom index {atom_index.shape} is not on the grid {grid.shape}")
    r, c = grid.pixel_of(lat, lon)
    return atom_index[r, c]


def class_areas(atoms: pd.DataFrame, family: str, n_classes: int) -> FloatArray:
    """Return ``area_f(j)``, ``j = 0..n_classes-1``, of one family (s2, ls or lc) from the atom table."""
    lab = atoms[family].to_numpy()
    ok = lab >= 0
    w = atoms["area_km2"].to_numpy(dtype=np.float64)[ok]
    return np.asarray(np.bincount(lab[ok], weights=w, minlength=n_classes)[:n_classes], dtype=np.float64)


def write_atoms(path: str | Path, atoms: pd.DataFrame) -> None:
    """Write the atom table as Parquet with the contract's column order and dtypes."""
    schema = pa.schema(
        [
            ("atom", pa.int32()),
            ("s2", pa.int32()),
            ("ls", pa.int32()),
            ("lc", pa.int32()),
            ("area_km2", pa.float64()),
            ("n_pixels", pa.int64()),
            ("rep_lat", pa.float64()),
            ("rep_lon", pa.float64()),
            ("sx", pa.float64()),
            ("sy", pa.float64()),
            ("sz", pa.float64()),
        ]
    )
    tbl = pa.Table.from_pandas(atoms[list(ATOM_COLUMNS)], schema=schema, preserve_index=False)
    pq.write_table(tbl, path)


def _write_index(path: Path, store: _IndexStore, grid: Grid, n_atoms: int, strip_rows: int) -> None:
    """Write the atom index by strips (tiled, deflate; see :func:`~geoens.geo.rasters.write_label_raster`)."""
    profile = {
        "driver": "GTiff", "height": grid.height, "width": grid.width, "count": 1, "dtype": "int32",
        "crs": CRS.from_epsg(4326), "transform": grid.transform, "nodata": -1, "tiled": True,
        "blockxsize": 256, "blockysize": 256, "compress": "deflate", "predictor": 1, "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    rows = max(256, strip_rows // 256 * 256)  # whole tile rows per write
    with rasterio.open(path, "w", **profile) as dst:
        for a in range(0, grid.height, rows):
            b = min(grid.height, a + rows)
            dst.write(store.read(a, b), 1, window=rasterio.windows.Window(0, a, grid.width, b - a))
        dst.update_tags(n_atoms=str(n_atoms))


def make_atoms(
    s2_tif: str | Path,
    ls_tif: str | Path,
    lc_tif: str | Path,
    grid: Grid,
    out_atoms: str | Path,
    out_index: str | Path,
    strip_rows: int = 256,
) -> dict[str, float]:
    """Build ``results/atoms/atoms.parquet`` and ``atom_index.tif`` from the three masks, atomically.

    Streamed at every grid size: the masks are read by row windows, the index goes to a raw temporary file
    next to ``out_index`` and is then written as a tiled GeoTIFF window by window, so memory stays at a few
    strips plus the per-atom sums (the 21600 x 43200 grid's index alone would be 3.7 GB).

    Raises:
        ValueError: Naming the mask if it is not on the grid or holds labels out of range.

    """
    paths = {"s2": Path(s2_tif), "ls": Path(ls_tif), "lc": Path(lc_tif)}
    with contextlib.ExitStack() as stack:
        ds = {}
        for name, p in paths.items():
            d = stack.enter_context(rasterio.open(p))
            if (d.height, d.width) != grid.shape:
                raise ValueError(
                    f"{p}: {name} label raster {d.height} x {d.width} is not on the grid {grid.shape}"
                )
            ds[name] = d

        def read(a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            win = rasterio.windows.Window(0, a, grid.width, b - a)
            s2, ls, lc = (ds[f].read(1, window=win) for f in ("s2", "ls", "lc"))
            return s2, ls, lc

        Path(out_index).parent.mkdir(parents=True, exist_ok=True)
        tmpdir = stack.enter_context(
            tempfile.TemporaryDirectory(dir=Path(out_index).parent, prefix=".atoms_")
        )
        store = _IndexStore(grid, Path(tmpdir) / "index.i32")
        where = ", ".join(str(p) for p in paths.values())
        table = build_atoms_strips(read, grid, store, strip_rows, where=where)
        with atomic_path(out_index) as tmp:
            _write_index(tmp, store, grid, len(table), strip_rows)
    with atomic_path(out_atoms) as tmp:
        write_atoms(tmp, table)
    return {
        "atoms": float(len(table)),
        "atoms_with_s2": float((table["s2"] >= 0).sum()),
        "area_km2": float(table["area_km2"].sum()),
    }


# --------------------------------------------------------------------------------------------------
# The atom table as evaluation reads it
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


def read_atom_index(path: str | Path, n_atoms: int | None = None) -> I32Array:
    """Read ``results/atoms/atom_index.tif`` (int32 atom id of each pixel).

    Raises:
        ValueError: Naming the file if the raster is not ``H x 2H`` or holds ids outside ``0..n_atoms-1``.

    """
    with rasterio.open(path) as src:
        idx: npt.NDArray[np.int32] = src.read(1).astype(np.int32, copy=False)
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
) -> tuple[AtomTable, I32Array]:
    """Build the atom table and atom index from label rasters (a small reference builder).

    Args:
        labels: Family -> ``H x W`` integer label raster (-1 = none), for every family of
            :data:`~geoens.core.constants.FAMILIES`.
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
