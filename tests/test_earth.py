"""The demo world on Earth (``demo.geography: earth``): rasters against the land mask and city list they were
made from, land cover by latitude, determinism, and the partition its geotags give at the antimeridian,
the poles and islands (rasterised exactly as s2sphere says)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import s2sphere

from cluster.workflow import TINY_CONFIG, copy_workflow, run_snakemake
from geoens.core.config import ConfigError
from geoens.core.constants import LANDSCAN_NODATA
from geoens.core.grid import Grid
from geoens.demo import earth
from geoens.demo.generate import generate_world
from geoens.demo.spec import output_paths, pixel_centres, pixel_km2, spec_from_config, stream_rng
from geoens.demo.world import World
from geoens.geo import s2, s2mask
from geoens.geo.partitions import build_partition

TINY_EARTH = Path("tests/data/tiny_earth.yaml")
FOREST = (50, 60, 61, 62, 70, 71, 72, 80, 81, 82, 90, 100, 160, 170)


def earth_config(height: int, ls_factor: int, lc_factor: int, **demo: Any) -> dict[str, Any]:
    d = {"ls_factor": ls_factor, "lc_factor": lc_factor, "geography": "earth", **demo}
    return {"seed": 0, "grid": {"height": height, "width": 2 * height}, "demo": d}


@pytest.fixture(scope="module")
def world() -> World:
    """Half-degree population raster, 1/4-degree land cover."""
    return earth.build_earth_world(spec_from_config(earth_config(90, 4, 8)))


def km_from(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float) -> np.ndarray:
    a, b, a0, b0 = map(np.deg2rad, (lat, lon, lat0, lon0))
    h = np.sin((a - a0) / 2) ** 2 + np.cos(a) * np.cos(a0) * np.sin((b - b0) / 2) ** 2
    return np.asarray(2 * 6371.0 * np.arcsin(np.sqrt(h)))


def test_unknown_geography_is_named() -> None:
    with pytest.raises(ConfigError, match=r"demo\.geography.*'mars'"):
        spec_from_config(earth_config(18, 2, 4, geography="mars"))


def test_population_is_nodata_exactly_where_the_mask_is_sea(world: World) -> None:
    land = earth.land_grid(*world.ls.shape)
    np.testing.assert_array_equal(world.ls == LANDSCAN_NODATA, ~land)
    assert (world.ls[land] >= 0).all()
    # Earth's land share by area (29 %), not by pixel
    lat = pixel_centres(world.ls.shape[0], -90.0, 90.0, descending=True)
    area = np.broadcast_to(np.cos(np.deg2rad(lat))[:, None], land.shape)
    assert 0.27 < area[land].sum() / area.sum() < 0.31


NAMED = [
    ("Tokyo", 35.69, 139.69),
    ("Lagos", 6.45, 3.39),
    ("São Paulo", -23.55, -46.64),
    ("London", 51.51, -0.13),
]


@pytest.mark.parametrize(("city", "lat", "lon"), NAMED)
def test_people_around_named_cities_are_the_listed_ones(
    world: World, city: str, lat: float, lon: float
) -> None:
    cities = earth.earth_cities()
    d = km_from(cities.lat, cities.lon, lat, lon)
    itself = int(np.argmin(d))
    assert cities.name[itself] == city and d[itself] < 20.0  # the GeoNames place, not a namesake
    h, w = world.ls.shape
    la = pixel_centres(h, -90.0, 90.0, descending=True)[:, None]
    lo = pixel_centres(w, -180.0, 180.0)[None, :]
    near = km_from(la, lo, lat, lon) < 150.0
    got = world.ls[near & (world.ls > 0)].astype(np.float64).sum()
    # every listed place within 100 km lies wholly inside 150 km; none beyond 220 km reaches it
    inner, outer = cities.pop[d < 100.0].sum(), cities.pop[d < 220.0].sum()
    assert 0.9 * inner < got < 1.15 * outer + 1e6, (city, got, inner, outer)
    assert got > cities.pop[itself]


def test_every_city_person_is_on_land(world: World) -> None:
    cities = earth.earth_cities()
    total = world.ls[world.ls > 0].astype(np.float64).sum()
    assert total > 0.97 * cities.pop.sum()  # cities are placed on land (islets too small to see aside)
    assert (world.ls[world.ls != LANDSCAN_NODATA] == 0).mean() > 0.2  # deserts and ice are empty


def test_land_cover_is_water_on_sea_and_plausible_by_latitude(world: World) -> None:
    lc = world.lc
    h, w = lc.shape
    lat = pixel_centres(h, -90.0, 90.0, descending=True)[:, None] * np.ones((1, w))
    lon = np.ones((h, 1)) * pixel_centres(w, -180.0, 180.0)[None, :]
    np.testing.assert_array_equal(lc == 210, ~earth.land_grid(h, w))
    forest = np.isin(lc, FOREST)
    assert not forest[lat < -65].any()  # Antarctica
    greenland = (lat > 70) & (lat < 80) & (lon > -45) & (lon < -30)
    assert ((lc[greenland] == 220) | (lc[greenland] == 210)).all()
    assert not (lc[np.abs(lat) < 20] == 220).any()  # no ice near the equator
    sahara = (lat > 20) & (lat < 28) & (lon > 0) & (lon < 25)
    assert np.isin(lc[sahara], (200, 201, 202)).mean() > 0.6
    amazon = (lat > -8) & (lat < 0) & (lon > -70) & (lon < -55) & (lc != 210)
    cropland = np.isin(lc[amazon], (10, 11, 12, 20, 30, 40)).mean()
    assert np.isin(lc[amazon], FOREST).mean() > max(0.4, cropland)  # rainforest, farmed near its towns
    tokyo = (np.abs(lat - 35.7) < 0.3) & (np.abs(lon - 139.7) < 0.3)
    assert (lc[tokyo] == 190).any()  # urban where people are


def test_images_show_a_density_that_rises_with_the_population_bucket(world: World) -> None:
    """Earth's photos show people per km2 (stretched), so a bucket's cue does not depend on the resolution."""
    assert earth.scene_population(np.array([earth.SCENE_PIVOT_DENSITY]))[0] == pytest.approx(
        earth.SCENE_PIVOT_PEOPLE
    )
    ratio = earth.scene_population(np.array([2.0 * earth.SCENE_PIVOT_DENSITY]))[0] / earth.SCENE_PIVOT_PEOPLE
    assert ratio == pytest.approx(2.0**earth.SCENE_CONTRAST)
    lat, lon = earth.sample_earth_geotags(world.ls, 3000, "flickr", stream_rng(0, "scene"))
    a = world.attributes(lat, lon)
    row_km2 = pixel_km2(*world.ls.shape)[Grid(*world.ls.shape).pixel_of(lat, lon)[0]]
    np.testing.assert_allclose(a.shown_population(), earth.scene_population(a.pop / row_km2))
    # a 4x finer population raster (people per cell / 16) shows the same places about alike
    fine = earth.build_earth_world(spec_from_config(earth_config(90, 16, 16)))
    fa = fine.attributes(lat, lon)
    both = (a.pop > 0) & (fa.pop > 0)
    assert np.median(fa.pop[both]) < np.median(a.pop[both]) / 4  # cells hold far fewer people...
    density = np.log10(fa.shown_population()[both] / a.shown_population()[both]) / earth.SCENE_CONTRAST
    assert abs(np.median(density)) < 0.5  # ...their densities, what the photos show, within half a decade
    # the cue rises with the population bucket the predictor is asked for (edges as the relabel stage)
    pos = a.pop[a.pop > 0]
    edges = np.linspace(np.log10(pos.min()), np.log10(a.pop.max()), 5)[1:4]
    bucket = np.where(a.pop > 0, np.searchsorted(edges, np.log10(np.maximum(a.pop, 1e-9)), side="right"), 0)
    shown = np.log10(a.shown_population() + 1)
    med = [np.median(shown[bucket == b]) for b in range(4) if (bucket == b).any()]
    assert med == sorted(med) and med[-1] - med[0] > 3


def hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_the_world_is_the_same_bytes_from_its_seed(tmp_path: Path) -> None:
    sets = {"im2gps3k": {"n": 5, "style": "flickr"}, "sv": {"n": 5, "style": "streetview"}}
    cfg = earth_config(18, 2, 4, n_train=20, n_shards=1, image_size=16, testsets=sets)
    cfg["inputs"] = {
        "landscan": "demo/landscan.tif",
        "landcover": "demo/landcover.nc",
        "train": {"shards_dir": "demo/shards", "metadata": "demo/meta.csv"},
        "testsets": {n: {"images": f"demo/{n}/images", "metadata": f"demo/{n}/meta.csv"} for n in sets},
    }
    for run in ("a", "b"):
        generate_world(cfg, {k: tmp_path / run / v for k, v in output_paths(cfg).items()})
    a, b = hashes(tmp_path / "a"), hashes(tmp_path / "b")
    assert len(a) > 10
    assert a == b


@pytest.fixture(scope="module")
def geotags(world: World) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        style: earth.sample_earth_geotags(world.ls, n, style, stream_rng(0, "test", style))
        for style, n in (("flickr", 20000), ("streetview", 4000))
    }


def share(lat: np.ndarray, lon: np.ndarray, box: tuple[float, float, float, float]) -> float:
    return float(((lat > box[0]) & (lat < box[1]) & (lon > box[2]) & (lon < box[3])).mean())


def test_geotags_are_on_land_and_skewed_like_flickrs(world: World, geotags: dict[str, Any]) -> None:
    lat, lon = geotags["flickr"]
    g = Grid(*world.ls.shape)
    assert (world.ls[g.pixel_of(lat, lon)] != LANDSCAN_NODATA).all()
    europe, africa = share(lat, lon, (35, 70, -10, 40)), share(lat, lon, (-35, 15, -18, 50))
    assert europe > 0.25 and africa < 0.08  # Africa has a sixth of mankind and few Flickr photos
    assert share(lat, lon, (30, 46, 129, 146)) > 0.05  # Japan
    assert share(lat, lon, (55, 80, 60, 180)) < 0.01  # Siberia
    sv_lat, sv_lon = geotags["streetview"]
    assert (np.abs(sv_lat) < 66).all()
    pop = world.attributes
    assert np.median(pop(sv_lat, sv_lon).pop) < 0.5 * np.median(pop(lat, lon).pop)  # rural, off the cities
    assert (pop(lat, lon).lc_code == 190).mean() > 2 * (pop(sv_lat, sv_lon).lc_code == 190).mean()


def vertices(cell: int) -> np.ndarray:
    c = s2sphere.Cell(s2sphere.CellId(cell))
    ll = [s2sphere.LatLng.from_point(c.get_vertex(k)) for k in range(4)]
    return np.array([[v.lat().degrees, v.lng().degrees] for v in ll])


def side_of_antimeridian(v: np.ndarray) -> str:
    """``west``/``east`` for a cell with a vertex on lon 180 (by its other vertices), else ``""``."""
    on = np.isclose(np.abs(v[:, 1]), 180.0)
    if not on.any() or on.all() or np.abs(v[:, 0]).max() > 89.999:
        return ""
    return "west" if (v[~on, 1] > 0).all() else "east" if (v[~on, 1] < 0).all() else ""


def test_partition_meets_the_antimeridian_poles_and_islands(geotags: dict[str, Any]) -> None:
    lat, lon = geotags["flickr"]
    part = build_partition(s2.latlng_to_leaf(lat, lon), lat, lon, 5, 100, 2, 30, "fine")
    verts = [vertices(int(c)) for c in part.cells]
    sides = [side_of_antimeridian(v) for v in verts]
    # S2 cells of level >= 1 never straddle lon 180: cells meet it from both sides (NZ, Kamchatka / Chukotka)
    assert "west" in sides and "east" in sides
    assert max(np.abs(v[:, 0]).max() for v in verts) > 80.0  # a cell reaching the polar rows
    hawaii = (part.lat_mean > 18) & (part.lat_mean < 23) & (part.lon_mean > -161) & (part.lon_mean < -154)
    assert hawaii.any()  # an island cell, alone in the Pacific
    grid = Grid(90, 180)
    labels = s2mask.rasterize_partition(part, grid)
    table = s2mask.absorption_table(part, labels, grid)
    assert len(table) > 0  # European city cells are smaller than a 2-degree pixel
    # the rasterisation at the antimeridian and polar rows is s2sphere's
    by_id = {int(c): k for k, c in enumerate(part.cells)}
    levels = sorted({int(x) for x in s2.level(part.cells)})
    rows = [0, 1, 2, 87, 88, 89] + list(range(20, 70, 7))
    for r in rows:
        for c in [0, 1, 178, 179] + ([] if r not in (0, 89) else list(range(0, 180, 9))):
            la, lo = float(grid.lat_centers()[r]), float(grid.lon_centers()[c])
            leaf = s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(la, lo))
            want = next((by_id[leaf.parent(lv).id()] for lv in levels if leaf.parent(lv).id() in by_id), -1)
            assert labels[r, c] == want, (r, c)


@pytest.mark.slow
def test_whole_workflow_runs_on_the_tiny_earth(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    run = run_snakemake(
        workdir, "all", "--cores", "2", "--configfile", str(TINY_CONFIG), str(TINY_EARTH), timeout=1800
    ).check()
    print(f"tiny earth workflow: {run.seconds:.0f} s")  # measured, reported in docs/DECISIONS.md
    assert (workdir / "results" / "figures" / "rva.pdf").read_bytes().startswith(b"%PDF")
    table = pd.read_csv(workdir / "results" / "tables" / "im2gps3k_original.csv")
    assert len(table) > 0
    meta = pd.read_csv(workdir / "results" / "demo" / "mp16" / "metadata.csv")
    assert share(meta["LAT"].to_numpy(), meta["LON"].to_numpy(), (35, 70, -10, 40)) > 0.2  # Europe
    # drawn on land pixels of a ~2-degree raster: a few coastal points fall in the sea of the 1 km mask
    assert earth.land_at(meta["LAT"].to_numpy(), meta["LON"].to_numpy()).mean() > 0.8
