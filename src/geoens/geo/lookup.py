"""Pixel lookups on the atom index: the atom of a point, and the pixels of given atoms (exact grid top-1).

:class:`PixelLookup` holds the index in memory; :class:`TiledPixelLookup` reads the tiled GeoTIFF by windows
for grids too large to hold (DESIGN 10). :func:`open_pixel_lookup` picks one by the grid's size.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio

from geoens.core.constants import EARTH_RADIUS_KM, INDEX_IN_MEMORY_MAX_PIXELS
from geoens.core.grid import Grid, latlon_to_xyz
from geoens.core.types import FloatArray, I32Array, IntArray
from geoens.geo.atoms import read_atom_index


@dataclass
class PixelLookup:
    """Pixels of each atom (built lazily from the atom index), for the exact top-1 fallback.

    Attributes:
        atom_index: ``H x W`` atom ids.
        grid: The grid.

    """

    atom_index: I32Array
    grid: Grid
    _order: I32Array | None = field(default=None, repr=False)
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
    _tiles: dict[int, I32Array] = field(default_factory=dict, repr=False)
    _block: tuple[int, int] = (256, 256)
    _order_path: Path | None = field(default=None, repr=False)
    _tmp: object = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        with rasterio.open(self.path) as ds:
            if (ds.height, ds.width) != self.grid.shape:
                raise ValueError(f"{self.path}: atom index {ds.height} x {ds.width} is not on the grid")
            bh, bw = ds.block_shapes[0]
        self._block = (int(bh), int(bw))
        self._start = np.concatenate([[0], np.cumsum(self.n_pixels)]).astype(np.int64)
        if int(self._start[-1]) != self.grid.height * self.grid.width:
            raise ValueError(f"{self.path}: the atoms' n_pixels do not sum to the grid's pixels")
        self._dtype = np.int32 if self.grid.height * self.grid.width < 2**31 else np.int64

    def read_rows(self, r0: int, r1: int) -> I32Array:
        """Rows ``[r0, r1)`` of the atom index."""
        with rasterio.open(self.path) as ds:
            rows: I32Array = ds.read(1, window=rasterio.windows.Window(0, r0, self.grid.width, r1 - r0))
            return rows

    def atom_at(self, lat: FloatArray, lon: FloatArray) -> IntArray:
        """Atom of the pixel holding each point (tile-wise windowed reads, decoded tiles cached)."""
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
