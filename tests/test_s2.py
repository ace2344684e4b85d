"""geoens.geo.s2 against s2sphere: leaf ids, ancestry, ranges, tokens, centres; s2mask: rasterisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import s2sphere

from fakes import write_partition_csv
from geoens.core.grid import Grid
from geoens.geo import partitions as pt
from geoens.geo import s2, s2mask


def ref_leaf(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    return np.array(
        [
            s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(a, b)).id()
            for a, b in zip(lat, lon, strict=True)
        ],
        dtype=np.uint64,
    )


def random_points(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)


def test_leaf_ids_equal_s2sphere_on_100k_random_points() -> None:
    lat, lon = random_points(100_000, 0)
    ids = s2.latlng_to_leaf(lat, lon)
    assert ids.dtype == np.uint64
    np.testing.assert_array_equal(ids, ref_leaf(lat, lon))


def test_leaf_ids_on_poles_antimeridian_and_face_edges() -> None:
    t = np.degrees(np.arctan(1 / np.sqrt(2)))  # latitude of the cube corners
    pts = [
        (90, 0), (-90, 0), (90, 180), (-90, -180), (89.9999999, 45), (-89.9999999, -135),
        (0, 180), (0, -180), (10, 180), (-10, -180), (45, 179.9999999), (-45, -179.9999999),
        (0, 0), (0, 45), (0, -45), (0, 135), (0, -135), (0, 90), (0, -90),
        (45, 0), (-45, 0), (45, 90), (-45, -90), (t, 45), (-t, -45), (t, 135), (-t, -135),
        (t, -45), (-t, 45), (35.26, 45.0), (35.27, 45.0), (44.9999999, 0), (45.0000001, 0),
        (1e-12, 1e-12), (-1e-12, -1e-12), (0.0, -0.0), (-0.0, 180.0),
    ]  # fmt: skip
    lat = np.array([p[0] for p in pts], dtype=np.float64)
    lon = np.array([p[1] for p in pts], dtype=np.float64)
    np.testing.assert_array_equal(s2.latlng_to_leaf(lat, lon), ref_leaf(lat, lon))
    # Dense lines across the face boundaries.
    x = np.linspace(-1e-9, 1e-9, 21)
    lat2 = np.concatenate([np.full(21, 30.0), 45 + x, np.full(21, -20.0), t + x])
    lon2 = np.concatenate([45 + x, np.full(21, 10.0), -135 + x, np.full(21, 45.0)])
    np.testing.assert_array_equal(s2.latlng_to_leaf(lat2, lon2), ref_leaf(lat2, lon2))


def test_grid_leaves_equal_pointwise() -> None:
    g = Grid(18, 36)
    la, lo = g.lat_centers(), g.lon_centers()
    a = s2.grid_leaves(la, lo)
    b = s2.latlng_to_leaf(la[:, None], lo[None, :])
    assert a.shape == (18, 36)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("lvl", [0, 1, 5, 13, 22, 29, 30])
def test_parent_level_ranges_tokens_centres(lvl: int) -> None:
    lat, lon = random_points(500, lvl + 1)
    leaves = ref_leaf(lat, lon)
    p = s2.parent(leaves, lvl)
    refs = [s2sphere.CellId(int(x)).parent(lvl) for x in leaves]
    np.testing.assert_array_equal(p, np.array([c.id() for c in refs], dtype=np.uint64))
    np.testing.assert_array_equal(s2.level(p), np.full(500, lvl))
    np.testing.assert_array_equal(
        s2.range_min(p), np.array([c.range_min().id() for c in refs], dtype=np.uint64)
    )
    np.testing.assert_array_equal(
        s2.range_max(p), np.array([c.range_max().id() for c in refs], dtype=np.uint64)
    )
    toks = s2.id_to_token(p)
    assert toks == [c.to_token() for c in refs]
    np.testing.assert_array_equal(s2.token_to_id(toks), p)
    clat, clon = s2.cell_center_latlng(p)
    rl = np.array([[c.to_lat_lng().lat().degrees, c.to_lat_lng().lng().degrees] for c in refs])
    np.testing.assert_allclose(clat, rl[:, 0], atol=1e-9)
    np.testing.assert_allclose(((clon - rl[:, 1]) + 180) % 360 - 180, 0, atol=1e-9)
    # the centre lies inside the cell
    assert s2.contains(p, s2.latlng_to_leaf(clat, clon)).all()
    f, i, j = s2.to_face_ij(leaves[:50])
    for k, c in enumerate(leaves[:50]):
        ff, ii, jj, _ = s2sphere.CellId(int(c)).to_face_ij_orientation()
        assert (f[k], i[k], j[k]) == (ff, ii, jj)


def test_children_and_invalid_inputs() -> None:
    c = s2sphere.CellId.from_token("8747c")
    assert s2.children(c.id()).tolist() == [x.id() for x in c.children()]
    assert (s2.parent(s2.children(c.id()), c.level()) == c.id()).all()
    with pytest.raises(ValueError, match="leaf"):
        s2.children(int(s2.latlng_to_leaf(1.0, 2.0)))
    with pytest.raises(ValueError, match="finer"):
        s2.parent(s2.token_to_id(["8747c"]), 20)
    with pytest.raises(ValueError, match="invalid S2 token"):
        s2.token_to_id(["zz"])
    with pytest.raises(ValueError, match="invalid S2 cell id"):
        s2.level(np.array([2], dtype=np.uint64))
    assert s2.id_to_token([0]) == ["X"]
    assert s2.token_to_id(["X"]).tolist() == [0]


# ---------------------------------------------------------------------------------------------------
# partitions -> label raster
# ---------------------------------------------------------------------------------------------------


def write_partition(path: Path, tokens: list[str]) -> None:
    lat, lon = s2.cell_center_latlng(s2.token_to_id(tokens))
    cells = zip(tokens, lat.tolist(), lon.tolist(), strict=True)
    rows = [f"{k},{t},100,{la!r},{lo!r}" for k, (t, la, lo) in enumerate(cells)]
    write_partition_csv(path, rows, num_images=1)


def mixed_partition(seed: int) -> list[str]:
    """A random complete partition of the sphere into cells of levels 0..7 (plus some removed)."""
    rng = np.random.default_rng(seed)
    cells = [s2sphere.CellId.from_face_pos_level(f, 0, 0) for f in range(6)]
    out: list[s2sphere.CellId] = []
    while cells:
        c = cells.pop()
        if c.level() < 7 and rng.random() < (0.9 if c.level() < 2 else 0.45):
            cells.extend(c.children())
        else:
            out.append(c)
    keep = [c for c in out if rng.random() > 0.05]  # some holes: pixels in no cell
    return [c.to_token() for c in keep]


def test_every_pixel_gets_the_cell_s2sphere_says(tmp_path: Path) -> None:
    tokens = mixed_partition(3)
    csv = tmp_path / "fine.csv"
    write_partition(csv, tokens)
    part = pt.read_partition_csv(csv)
    g = Grid(36, 72)
    lab = s2mask.rasterize_partition(part, g, strip_rows=7)
    assert lab.shape == g.shape and lab.dtype == np.int32
    index = {s2sphere.CellId.from_token(t).id(): k for k, t in enumerate(tokens)}
    la, lo = g.lat_centers(), g.lon_centers()
    for i in range(g.height):
        for j in range(g.width):
            leaf = s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(la[i], lo[j]))
            owners = [index[a.id()] for a in (leaf.parent(lv) for lv in range(8)) if a.id() in index]
            assert owners == ([] if lab[i, j] < 0 else [int(lab[i, j])]), (i, j)
    assert (lab == -1).any()


def test_overlapping_cells_are_an_error() -> None:
    c = s2sphere.CellId.from_token("8747c")
    tokens = ["8747c", c.child_begin().to_token(), "1"]
    n = len(tokens)
    part = pt.Partition(s2.token_to_id(tokens), np.full(n, 100), np.zeros(n), np.zeros(n), 100 * n, "bad.csv")
    with pytest.raises(ValueError, match="bad.csv.*8747c.*overlap"):
        s2mask.rasterize_partition(part, Grid(4, 8))


def test_absorption_targets_and_conservation(tmp_path: Path) -> None:
    # Coarse cells everywhere plus one region split into level-10 cells, far below the pixel size.
    base = s2sphere.CellId.from_token("8747c")  # level 7, Utah
    fine = [base]
    for _ in range(3):
        fine = [ch for c in fine for ch in c.children()]
    # 64 level-10 cells; at 18 x 36 (10 degree pixels) at most one owns a pixel centre.
    others: list[s2sphere.CellId] = []
    stack = [s2sphere.CellId.from_face_pos_level(f, 0, 0) for f in range(6)]
    while stack:
        c = stack.pop()
        if c.contains(base) and c.level() < base.level():
            stack.extend(c.children())
        elif not c.contains(base):
            others.append(c)
    tokens = [c.to_token() for c in others] + [c.to_token() for c in fine]
    csv = tmp_path / "fine.csv"
    write_partition(csv, tokens)
    part = pt.read_partition_csv(csv)
    g = Grid(18, 36)
    lab = s2mask.rasterize_partition(part, g)
    table = s2mask.absorption_table(part, lab, g)
    n = len(tokens)
    owned = np.bincount(lab[lab >= 0], minlength=n) > 0
    np.testing.assert_array_equal(np.sort(table["cell"].to_numpy()), np.flatnonzero(~owned))
    assert table["cell"].dtype == np.int32 and table["target"].dtype == np.int32
    assert owned[table["target"].to_numpy()].all()
    # each target owns the pixel holding the absorbed cell's centre
    clat, clon = s2.cell_center_latlng(part.cells[table["cell"].to_numpy()])
    r, c = g.pixel_of(clat, clon)
    np.testing.assert_array_equal(lab[r, c], table["target"].to_numpy())
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(n), size=5)
    out = s2mask.apply_absorption(probs, table)
    np.testing.assert_allclose(out.sum(axis=1), probs.sum(axis=1), rtol=1e-12)
    assert (out[:, table["cell"].to_numpy()] == 0).all()
    t0, c0 = int(table["target"].iloc[0]), table["cell"].to_numpy()
    expect = probs[:, t0] + probs[:, c0[table["target"].to_numpy() == t0]].sum(axis=1)
    np.testing.assert_allclose(out[:, t0], expect, rtol=1e-12)


def test_absorption_to_nearest_labelled_pixel_when_centre_pixel_is_unlabelled(tmp_path: Path) -> None:
    # One tiny cell in the middle of a hole, one big cell elsewhere: the tiny one goes to the big one.
    g = Grid(18, 36)
    big = s2sphere.CellId.from_face_pos_level(0, 0, 0)  # face 0, around lon 0
    tiny = s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(60.0, 150.0)).parent(12)
    near = s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(55.0, 135.0)).parent(4)
    csv = tmp_path / "fine.csv"
    write_partition(csv, [big.to_token(), tiny.to_token(), near.to_token()])
    part = pt.read_partition_csv(csv)
    lab = s2mask.rasterize_partition(part, g)
    r, c = g.pixel_of(60.0, 150.0)
    assert lab[r, c] == -1
    table = s2mask.absorption_table(part, lab, g)
    assert table["cell"].tolist() == [1]
    assert table["target"].tolist() == [2]  # the nearer cell, not the big one


def shared_dir() -> Path:
    return Path(__file__).resolve().parents[1].parent / "shared"


REAL_FINE = shared_dir() / "reference" / "peers" / "GeoEstimation" / "geo-cells" / "cells_50_1000.csv"


@pytest.mark.skipif(not REAL_FINE.exists(), reason="peer reference data absent")
def test_real_fine_partition_on_a_moderate_grid() -> None:
    part = pt.read_partition_csv(REAL_FINE)
    assert len(part) == 12893
    g = Grid(540, 1080)
    lab = s2mask.rasterize_partition(part, g)
    owned = np.unique(lab[lab >= 0])
    table = s2mask.absorption_table(part, lab, g)
    n_abs = len(table)
    print(f"real fine partition on 540 x 1080: {owned.size} cells own pixels, {n_abs} absorbed")
    assert owned.size + n_abs == 12893
    # At this coarse grid most cells are sub-pixel (7,578 absorbed); at 5400 x 10800, 3,118 are (measured by
    # bench/bench_masks.py and checked cell by cell against s2sphere; DESIGN 3 estimated "about 3,800").
    assert 3800 < n_abs < 12000
    assert 0.05 < (lab >= 0).mean() < 0.6  # cells cover land where photos are, not the oceans
