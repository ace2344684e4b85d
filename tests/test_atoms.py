"""Atom table against a brute-force per-pixel reference (DESIGN 4)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from geoens.core.grid import Grid, latlon_to_xyz
from geoens.geo import atoms


def label_rasters(g: Grid, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # blocky S2-like labels, smooth-ish LS and LC, with -1 holes
    s2 = np.repeat(np.repeat(rng.integers(-1, 15, size=(g.height // 3, g.width // 4)), 3, 0), 4, 1)
    ls = rng.integers(-1, 4, size=g.shape)
    lc = np.repeat(rng.integers(-1, 7, size=(g.height, g.width // 2)), 2, 1)
    return s2.astype(np.int32), ls.astype(np.int8), lc.astype(np.int8)


def test_atoms_equal_brute_force() -> None:
    g = Grid(12, 24)
    s2, ls, lc = label_rasters(g, 0)
    table, index = atoms.build_atoms(s2, ls, lc, g, strip_rows=5)
    assert list(table.columns) == list(atoms.ATOM_COLUMNS)
    areas = g.pixel_areas()
    xyz = latlon_to_xyz(*np.meshgrid(g.lat_centers(), g.lon_centers(), indexing="ij"))
    tuples = sorted(
        {(int(a), int(b), int(c)) for a, b, c in zip(s2.ravel(), ls.ravel(), lc.ravel(), strict=True)}
    )
    assert len(table) == len(tuples)
    assert list(zip(table.s2, table.ls, table.lc, strict=True)) == tuples  # numbered by sorted tuple
    np.testing.assert_array_equal(table.atom.to_numpy(), np.arange(len(tuples)))
    for k, (a, b, c) in enumerate(tuples):
        m = (s2 == a) & (ls == b) & (lc == c)
        np.testing.assert_array_equal(index == k, m)
        row = table.iloc[k]
        assert row.n_pixels == m.sum()
        assert row.area_km2 == pytest.approx(areas[m].sum(), rel=1e-12)
        v = (areas[m][:, None] * xyz[m]).sum(axis=0)
        np.testing.assert_allclose([row.sx, row.sy, row.sz], v, rtol=1e-9, atol=1e-6)
        # representative point: the atom's pixel centre nearest to its centroid direction
        d = xyz[m] @ (v / np.linalg.norm(v))
        rep = latlon_to_xyz(row.rep_lat, row.rep_lon)
        assert rep @ (v / np.linalg.norm(v)) >= d.max() - 1e-12  # near-ties may break either way
    # the representative point lies inside its atom
    np.testing.assert_array_equal(atoms.atom_of(table.rep_lat, table.rep_lon, index, g), table.atom)
    assert table.n_pixels.sum() == g.height * g.width
    assert table.area_km2.sum() == pytest.approx(4 * math.pi * g.earth_radius_km**2, rel=1e-12)
    for fam, lab in (("s2", s2), ("ls", ls), ("lc", lc)):
        assert table.area_km2[table[fam] >= 0].sum() == pytest.approx(areas[lab >= 0].sum(), rel=1e-12)
    np.testing.assert_allclose(
        atoms.class_areas(table, "ls", 4), [areas[ls == j].sum() for j in range(4)], rtol=1e-12
    )


def test_strips_and_determinism() -> None:
    g = Grid(30, 60)
    s2, ls, lc = label_rasters(g, 1)
    t1, i1 = atoms.build_atoms(s2, ls, lc, g, strip_rows=7)
    t2, i2 = atoms.build_atoms(s2, ls, lc, g, strip_rows=1000)
    pd.testing.assert_frame_equal(t1, t2, check_exact=False, rtol=1e-12)
    np.testing.assert_array_equal(i1, i2)
    assert i1.dtype == np.int32


def test_atom_of_points() -> None:
    g = Grid(30, 60)
    s2, ls, lc = label_rasters(g, 2)
    _, index = atoms.build_atoms(s2, ls, lc, g)
    rng = np.random.default_rng(0)
    lat = np.concatenate([rng.uniform(-90, 90, 500), [90, -90, 0, 0]])
    lon = np.concatenate([rng.uniform(-180, 180, 500), [0, 0, 180, -180]])
    r, c = g.pixel_of(lat, lon)
    np.testing.assert_array_equal(atoms.atom_of(lat, lon, index, g), index[r, c])
    with pytest.raises(ValueError, match="not on the grid"):
        atoms.atom_of(lat, lon, index, Grid(4, 8))


def test_bad_labels() -> None:
    g = Grid(4, 8)
    s2 = np.zeros(g.shape, np.int32)
    ls = np.zeros(g.shape, np.int8)
    lc = np.zeros(g.shape, np.int8)
    ls[0, 0] = 4
    with pytest.raises(ValueError, match="ls labels outside"):
        atoms.build_atoms(s2, ls, lc, g)
    with pytest.raises(ValueError, match="lc label raster"):
        atoms.build_atoms(s2, ls * 0, lc[:2], g)


def test_write_atoms_schema(tmp_path: Path) -> None:
    g = Grid(6, 12)
    table, _ = atoms.build_atoms(*label_rasters(g, 3), g)
    p = tmp_path / "atoms.parquet"
    atoms.write_atoms(p, table)
    schema = pq.read_schema(p)
    assert schema.names == list(atoms.ATOM_COLUMNS)
    types = {n: str(schema.field(n).type) for n in schema.names}
    assert types == {
        "atom": "int32", "s2": "int32", "ls": "int32", "lc": "int32", "area_km2": "double",
        "n_pixels": "int64", "rep_lat": "double", "rep_lon": "double", "sx": "double", "sy": "double",
        "sz": "double",
    }  # fmt: skip
    pd.testing.assert_frame_equal(pd.read_parquet(p), table)


def test_stage_entry_points_end_to_end(tmp_path: Path) -> None:
    import json

    import rasterio

    from fakes import write_geotiff, write_lc_netcdf
    from geoens.core.constants import LANDSCAN_NODATA
    from geoens.geo import masks, s2mask
    from test_rasters import lc_codes, ls_array
    from test_s2 import mixed_partition, write_partition

    g = Grid(12, 24)
    ls_tif = write_geotiff(tmp_path / "ls.tif", ls_array(48, 96, 4), nodata=LANDSCAN_NODATA)
    lc_nc = write_lc_netcdf(tmp_path / "lc.nc", lc_codes(72, 144, 6), crs_var=True, units=True)
    fine = tmp_path / "fine.csv"
    write_partition(fine, mixed_partition(1))
    edges = tmp_path / "ls_edges.json"
    edges.write_text(json.dumps({"edges_log10": [0, 1, 2, 3, 4.7]}))
    m = tmp_path / "masks"
    info = masks.make_ls_mask(ls_tif, edges, g, m / "ls.tif", m / "ls.png")
    assert info["edges_log10"] == [0, 1, 2, 3, 4.7]
    masks.make_lc_mask(lc_nc, g, m / "lc.tif", m / "lc.png", unknown_codes="none")  # codes 5, 99, 255
    counts = s2mask.make_s2_mask(fine, g, m / "s2_fine.tif", m / "s2_absorption.parquet", m / "s2_fine.png")
    assert counts["cells"] == counts["cells_with_pixels"] + counts["absorbed"]
    a = tmp_path / "atoms"
    atoms.make_atoms(
        m / "s2_fine.tif", m / "ls.tif", m / "lc.tif", g, a / "atoms.parquet", a / "atom_index.tif"
    )
    table = pd.read_parquet(a / "atoms.parquet")
    assert table.n_pixels.sum() == g.height * g.width
    with rasterio.open(a / "atom_index.tif") as ds:
        idx = ds.read(1)
        assert ds.dtypes[0] == "int32" and ds.crs.to_epsg() == 4326
    with rasterio.open(m / "ls.tif") as ds:
        assert ds.dtypes[0] == "int8" and json.loads(ds.tags()["classes"])[0] == "lowest"
    assert idx.max() == len(table) - 1
    ab = pd.read_parquet(m / "s2_absorption.parquet")
    assert list(ab.columns) == ["cell", "target"] and len(ab) == counts["absorbed"]
    assert sorted(p.name for p in m.iterdir()) == [
        "lc.png", "lc.tif", "ls.png", "ls.tif", "s2_absorption.parquet", "s2_fine.png", "s2_fine.tif",
    ]  # fmt: skip
