"""The 1 km grid's code path (DESIGN 10) on a small world against the brute-force raster reference.

At ``grid.height: 21600`` LandScan is taken at its native resolution (factor 1, no averaging), the land
cover by 3 x 3 block mode, the atoms are built from windowed reads of the masks with the index in a temporary
file, and evaluation reads the tiled atom index by windows (:class:`geoens.geo.lookup.TiledPixelLookup`). The
same functions run here on a 160 x 320 grid (two tile columns of 256), with small strips and a tiled lookup
forced.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from _rva_world import World, raster_reference, write_inputs
from fakes import write_geotiff
from geoens.core.constants import LANDSCAN_NODATA
from geoens.core.grid import Grid
from geoens.evaluation.methods import all_methods
from geoens.evaluation.testset import evaluate_testset, read_probs
from geoens.geo import atoms, buckets, masks, rasters, s2mask
from geoens.geo.atoms import AtomTable
from geoens.geo.lookup import PixelLookup, TiledPixelLookup
from geoens.geo.partitions import read_partition_csv
from test_rasters import lc_codes, ls_array
from test_s2 import mixed_partition, write_partition

EDGES = [0.0, 1.0, 2.5, 3.5, 4.7]


@pytest.fixture(scope="module")
def world_1km(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, dict[str, Path]]:
    tmp = tmp_path_factory.mktemp("w1km")
    g = Grid(160, 320)
    ls_native = ls_array(160, 320, 1, seed=3)
    ls_tif = write_geotiff(tmp / "landscan.tif", ls_native, nodata=LANDSCAN_NODATA)
    lc_tif = write_geotiff(tmp / "landcover.tif", lc_codes(480, 960, 3, seed=4), nodata=0)
    fine = tmp / "fine.csv"
    write_partition(fine, mixed_partition(2))
    (tmp / "edges.json").write_text(json.dumps({"edges_log10": EDGES}))
    m = tmp / "masks"
    masks.make_ls_mask(ls_tif, tmp / "edges.json", g, m / "ls.tif")
    masks.make_lc_mask(lc_tif, g, m / "lc.tif", unknown_codes="none")  # lc_codes draws 5, 99, 255 too
    s2mask.make_s2_mask(fine, g, m / "s2_fine.tif", m / "s2_absorption.parquet")
    a = tmp / "atoms"
    atoms.make_atoms(
        m / "s2_fine.tif", m / "ls.tif", m / "lc.tif", g, a / "atoms.parquet", a / "index.tif", 7
    )
    labels = {f: rasters.read_label_raster(m / f"{n}.tif", g)[0].astype(np.int64) for f, n in
              (("s2", "s2_fine"), ("ls", "ls"), ("lc", "lc"))}  # fmt: skip
    ab = pd.read_parquet(m / "s2_absorption.parquet")
    table = pd.read_parquet(a / "atoms.parquet")
    with rasterio.open(a / "index.tif") as ds:
        index = ds.read(1)
    n_cells = len(read_partition_csv(fine))
    world = World(
        g, labels, g.pixel_areas(), n_cells, (ab["cell"].to_numpy(), ab["target"].to_numpy()),
        AtomTable.from_frame(table), index, g.total_area(),
    )  # fmt: skip
    paths = {"ls_native": ls_tif, "atoms": a / "atoms.parquet", "index": a / "index.tif", "fine": fine}
    return world, paths


def test_ls_factor_one_takes_native_values(world_1km: tuple[World, dict[str, Path]]) -> None:
    world, paths = world_1km
    with rasterio.open(paths["ls_native"]) as ds:
        native = ds.read(1).astype(np.float64)
    native[native == LANDSCAN_NODATA] = np.nan
    assert np.array_equal(world.labels["ls"], buckets.bucketize(native, EDGES))  # no averaging


def test_streamed_atoms_equal_in_memory_builder(world_1km: tuple[World, dict[str, Path]]) -> None:
    world, paths = world_1km
    lab = world.labels
    table, index = atoms.build_atoms(
        lab["s2"].astype(np.int32), lab["ls"].astype(np.int8), lab["lc"].astype(np.int8), world.grid
    )
    assert np.array_equal(index, world.atom_index)
    pd.testing.assert_frame_equal(table, pd.read_parquet(paths["atoms"]))


def test_tiled_lookup_equals_in_memory(world_1km: tuple[World, dict[str, Path]], tmp_path: Path) -> None:
    world, paths = world_1km
    npx = pd.read_parquet(paths["atoms"])["n_pixels"].to_numpy()
    tiled = TiledPixelLookup(
        paths["index"], world.grid, npx, tmp_path / "px", cache_tiles=1, bucket_bytes=4096
    )
    mem = PixelLookup(world.atom_index, world.grid)
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-90, 90, 500), rng.uniform(-180, 180, 500)
    assert np.array_equal(tiled.atom_at(lat, lon), mem.atom_at(lat, lon))
    for a in range(world.atoms.n):
        assert np.array_equal(tiled.pixels_of(np.array([a])), mem.pixels_of(np.array([a]))), a
    assert len(list((tmp_path / "px").iterdir())) == 1  # only the pixel-order file remains


def test_1km_path_equals_raster_reference(world_1km: tuple[World, dict[str, Path]], tmp_path: Path) -> None:
    world, paths = world_1km
    n = 30
    inp = write_inputs(world, tmp_path, n_images=n, seed=5)
    preds = {k: inp[k] for k in ("ls", "lc", "geoest", "geoclip")}
    df = evaluate_testset(
        paths["atoms"], paths["index"], inp["absorption"], inp["labels"], inp["fine"], preds,
        earth_radius_km=world.grid.earth_radius_km, batch_size=16, index_max_pixels=0, threads=2,
    )  # fmt: skip
    lab = pd.read_parquet(inp["labels"]).set_index("image_id")
    probs = {k: dict(zip(*read_probs(inp[k]), strict=True)) for k in preds}
    n_zero = n_checked = 0
    for base in ("geoest", "geoclip"):
        for m in all_methods([base]):
            sub = df[df["method"] == m.name].set_index("image_id")
            for iid, row in sub.iterrows():
                r, c = world.grid.pixel_of(lab.loc[iid, "lat"], lab.loc[iid, "lon"])
                one = {"s2": probs[base][iid], "ls": probs["ls"][iid], "lc": probs["lc"][iid]}
                area, zero, tlat, tlon, _ = raster_reference(world, m, one, (int(r), int(c)))
                assert row["zero_prob"] == zero, (m.name, iid)
                assert row["area_km2"] == pytest.approx(area, rel=1e-9), (m.name, iid)
                if np.isnan(tlat):
                    assert np.isnan(row["top1_lat"])
                else:
                    assert row["top1_lat"] == pytest.approx(tlat, abs=1e-7), (m.name, iid)
                    assert row["top1_lon"] == pytest.approx(tlon, abs=1e-7), (m.name, iid)
                n_zero += zero
                n_checked += 1
    assert n_checked == n * 10 and n_zero > 0


def test_windowed_search_plan_equals_in_memory(
    world_1km: tuple[World, dict[str, Path]], tmp_path: Path
) -> None:
    from geoens.apps import search

    world, paths = world_1km
    rng = np.random.default_rng(8)
    probs = {"s2": rng.dirichlet(np.full(world.n_cells, 0.3)), "ls": rng.dirichlet(np.ones(4))}
    out = {}
    for name, max_px in (("mem", None), ("tiled", 0)):
        reg = search.plan_search(
            paths["atoms"], paths["index"], None, probs, 0.2 * world.total,
            tmp_path / f"{name}.geojson", tmp_path / f"{name}.tif", world.grid.earth_radius_km, max_px,
        )  # fmt: skip
        with rasterio.open(tmp_path / f"{name}.tif") as ds:
            out[name] = (reg, ds.read(1), json.loads((tmp_path / f"{name}.geojson").read_text()))
    (r1, t1, g1), (r2, t2, g2) = out["mem"], out["tiled"]
    pd.testing.assert_frame_equal(r1, r2)
    assert np.array_equal(t1, t2) and (t1 > 0).any()
    assert g1 == g2 and len(g1["features"]) == len(r1)
