"""Small random worlds for the evaluation tests: label rasters, atoms, predictions, and a raster reference.

The raster reference implements Algorithms 1-3 pixel by pixel on H x W arrays, independently of the atom
code in ``geoens.evaluation.rva`` (it shares nothing but the grid).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fakes import write_geotiff, write_partition_csv, write_prediction_parquet
from geoens.core.constants import FAMILIES, LS_URBAN_BUCKETS
from geoens.core.grid import Grid, latlon_to_xyz
from geoens.evaluation.methods import Method
from geoens.geo.atoms import AtomTable, atoms_from_rasters, build_atoms
from geoens.geo.s2mask import apply_absorption

N_CLS = {"ls": 4, "lc": 7}


@dataclass
class World:
    grid: Grid
    labels: dict[str, np.ndarray]  # family -> H x W int64
    area: np.ndarray  # H x W pixel areas
    n_cells: int
    absorption: tuple[np.ndarray, np.ndarray]
    atoms: AtomTable
    atom_index: np.ndarray
    total: float


def smooth_labels(rng: np.random.Generator, h: int, w: int, n: int, blocks: int) -> np.ndarray:
    """Blocky random labels in 0..n-1 (coarse random field upsampled by repetition)."""
    small = rng.integers(0, n, size=(max(1, h // blocks), max(1, w // blocks)))
    out = np.repeat(np.repeat(small, blocks, axis=0), blocks, axis=1)[:h, :w]
    pad_r, pad_c = h - out.shape[0], w - out.shape[1]
    return np.pad(out, ((0, pad_r), (0, pad_c)), mode="edge")


def make_world(seed: int = 0, h: int = 12, integer_areas: bool = False, n_cells: int = 30) -> World:
    """A random world; ``integer_areas`` makes every pixel area a small integer (exact sums, exact ties)."""
    rng = np.random.default_rng(seed)
    grid = Grid(h, 2 * h)
    w = 2 * h
    s2 = rng.integers(0, n_cells - 4, size=(h, w))  # the last 4 cells own no pixel -> absorbed
    s2[rng.random((h, w)) < 0.08] = -1
    ls = smooth_labels(rng, h, w, 4, 3)
    ls[rng.random((h, w)) < 0.1] = -1
    lc = smooth_labels(rng, h, w, 7, 2)
    lc[rng.random((h, w)) < 0.1] = -1
    labels = {"s2": s2.astype(np.int64), "ls": ls.astype(np.int64), "lc": lc.astype(np.int64)}
    if integer_areas:
        area = rng.integers(1, 3, size=(h, 1)).astype(np.float64) * np.ones((1, w))
    else:
        area = grid.pixel_areas()
    present = np.unique(s2[s2 >= 0])
    absent = np.setdiff1d(np.arange(n_cells), present)
    targets = rng.choice(present, size=absent.size)
    if integer_areas:  # the reference builder takes any pixel areas
        atoms, atom_index = atoms_from_rasters(labels, area, grid)
    else:  # the masks stage's builder, as the workflow uses it
        table, atom_index = build_atoms(s2.astype(np.int32), ls.astype(np.int8), lc.astype(np.int8), grid)
        atoms = AtomTable.from_frame(table, "build_atoms")
    return World(grid, labels, area, n_cells, (absent, targets), atoms, atom_index, float(area.sum()))


def random_probs(rng: np.random.Generator, n: int, c: int, ties: bool = False) -> np.ndarray:
    """Random probability rows (float32); ``ties`` draws a few values (incl. 0): exact ties."""
    if ties:
        p = rng.choice(np.array([0.0, 1.0, 2.0, 4.0], np.float32), size=(n, c))
        p[:, 0] += 1.0  # never all zero
    else:
        p = rng.dirichlet(np.full(c, 0.5), size=n).astype(np.float32)
        p[rng.random((n, c)) < 0.1] = 0.0
        p[:, 0] += np.float32(1e-3)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def raster_reference(
    world: World, method: Method, probs: dict[str, np.ndarray], gt_rc: tuple[int, int]
) -> tuple[float, bool, float, float, np.ndarray]:
    """Algorithms 1-3 on the raster for one image: ``(area, zero_prob, top1_lat, top1_lon, P)``."""
    P = None
    for f in FAMILIES:
        if f not in method.families:
            continue
        lab = world.labels[f]
        ok = lab >= 0
        ncls = world.n_cells if f == "s2" else N_CLS[f]
        carea = np.bincount(lab[ok], weights=world.area[ok], minlength=ncls)
        if f == "ls" and method.urban_prior:
            u = list(LS_URBAN_BUCKETS)
            Pf = np.where(np.isin(lab, u), 1.0 / float(carea[u].sum()), 0.0)
        else:
            p = probs[f].astype(np.float64)
            p = p / p[None, :].sum(axis=1)[0]
            if f == "s2":  # the masks stage's conservation rule
                cells, targets = world.absorption
                p = apply_absorption(p, pd.DataFrame({"cell": cells, "target": targets}))
            Pf = np.zeros(lab.shape)
            for j in range(ncls):
                if carea[j] > 0:
                    Pf[lab == j] = p[j] / carea[j]
        P = Pf if P is None else P * Pf
    assert P is not None
    thr = P[gt_rc]
    zero = bool(thr == 0.0)
    area = world.total if zero else float(world.area[thr <= P].sum())
    # top-1
    g = world.grid
    top = P.max() == P
    lat_c, lon_c = g.lat_centers(), g.lon_centers()
    xyz = latlon_to_xyz(lat_c[:, None] * np.ones((1, g.width)), lon_c[None, :] * np.ones((g.height, 1)))
    if P.max() <= 0:
        return area, zero, float("nan"), float("nan"), P
    cen = (xyz[top] * world.area[top][:, None]).sum(axis=0)
    cen /= np.linalg.norm(cen)
    lat = float(np.degrees(np.arctan2(cen[2], np.hypot(cen[0], cen[1]))))
    lon = float(np.degrees(np.arctan2(cen[1], cen[0])))
    r, c = g.pixel_of(lat, lon)
    if top[int(r), int(c)]:
        return area, zero, lat, lon, P
    flat = np.flatnonzero(top.ravel())
    dots = xyz.reshape(-1, 3)[flat] @ cen
    k = flat[int(np.argmax(dots))]
    rr, cc = divmod(int(k), g.width)
    return area, zero, float(lat_c[rr]), float(lon_c[cc]), P


def _cell_token(k: int, level: int = 10) -> str:
    """S2 token of the ``k``-th level-``level`` cell of face 0: distinct ``k`` give disjoint, valid cells."""
    lsb = 1 << (2 * (30 - level))
    return f"{k * 2 * lsb + lsb:016x}".rstrip("0")


def write_inputs(
    world: World, root: Path, n_images: int, seed: int = 1, bases: tuple[str, ...] = ("geoest", "geoclip")
) -> dict[str, Path]:
    """Write the evaluate stage's input files for ``world`` and random images; return their paths."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "atoms": root / "atoms.parquet",
        "atom_index": root / "atom_index.tif",
        "absorption": root / "s2_absorption.parquet",
        "labels": root / "labels.parquet",
        "fine": root / "fine.csv",
    }
    world.atoms.to_frame().to_parquet(paths["atoms"])
    write_geotiff(paths["atom_index"], world.atom_index.astype(np.int32))
    cells, targets = world.absorption
    pd.DataFrame({"cell": cells.astype(np.int32), "target": targets.astype(np.int32)}).to_parquet(
        paths["absorption"]
    )
    lat = rng.uniform(-89.0, 89.0, n_images)
    lon = rng.uniform(-180.0, 180.0, n_images)
    ids = [f"img{k:04d}" for k in range(n_images)]
    pd.DataFrame({"image_id": ids, "lat": lat, "lon": lon}).to_parquet(paths["labels"])
    rows = [
        f"{c},{_cell_token(c)},10,{rng.uniform(-60, 60):.6f},{rng.uniform(-180, 180):.6f}"
        for c in range(world.n_cells)
    ]
    write_partition_csv(paths["fine"], rows, num_images=1)
    sizes = {"ls": 4, "lc": 7, **{b: world.n_cells for b in bases}}
    for model, c in sizes.items():
        paths[model] = write_prediction_parquet(
            root / f"{model}.parquet", ids, random_probs(rng, n_images, c)
        )
    return paths
