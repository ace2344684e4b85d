"""Search regions for one image and an area budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio import features
from shapely.geometry import shape

from _rva_world import make_world, random_probs, raster_reference
from geoens.apps import search
from geoens.evaluation.methods import Method


@pytest.fixture(scope="module")
def case():
    world = make_world(seed=31, h=12)
    rng = np.random.default_rng(2)
    probs = {"s2": random_probs(rng, 1, world.n_cells)[0], "ls": random_probs(rng, 1, 4)[0]}
    return world, probs


def test_regions_ranked_within_budget_and_match_raster(case) -> None:
    world, probs = case
    budget = 0.3 * world.total
    reg = search.search_regions(world.atoms, world.atom_index, probs, budget, world.absorption)
    assert len(reg) > 0
    assert list(reg["rank"]) == list(range(1, len(reg) + 1))
    assert np.all(np.diff(reg["prob"]) < 0) and reg["cum_area_km2"].iloc[-1] <= budget
    # the next group would exceed the budget
    P = search.atom_scores(world.atoms, probs, world.absorption)
    nxt = P[(P > 0) & (reg["prob"].iloc[-1] > P)]
    if nxt.size:
        extra = world.atoms.area[nxt.max() == P].sum()
        assert reg["cum_area_km2"].iloc[-1] + extra > budget
    # equals the raster form: pixels with P >= the last selected P
    method = Method("geoest", "+LS", ("s2", "ls"))
    *_, Pr = raster_reference(world, method, {**probs, "lc": np.ones(7)}, (0, 0))
    sel = Pr >= reg["prob"].iloc[-1]
    ranks = search.rank_raster(reg, world.atom_index, world.atoms.n)
    assert np.array_equal(ranks > 0, sel)
    assert reg["cum_area_km2"].iloc[-1] == pytest.approx(world.area[sel].sum(), rel=1e-9)
    assert reg["n_pixels"].sum() == sel.sum()


def test_budget_equal_to_alg3_area_contains_ground_truth(case) -> None:
    world, probs = case
    method = Method("geoest", "+LS", ("s2", "ls"))
    for rc in [(2, 3), (6, 20), (10, 11)]:
        area, zero, *_ = raster_reference(world, method, {**probs, "lc": np.ones(7)}, rc)
        if zero:
            continue
        reg = search.search_regions(
            world.atoms, world.atom_index, probs, area * (1 + 1e-12), world.absorption
        )
        ranks = search.rank_raster(reg, world.atom_index, world.atoms.n)
        assert ranks[rc] > 0


def test_geotiff_and_geojson_round_trip(case, tmp_path: Path) -> None:
    world, probs = case
    reg = search.search_regions(world.atoms, world.atom_index, probs, 0.2 * world.total, world.absorption)
    ranks = search.rank_raster(reg, world.atom_index, world.atoms.n)
    search.write_geotiff(tmp_path / "plan.tif", ranks, world.grid)
    with rasterio.open(tmp_path / "plan.tif") as src:
        assert np.array_equal(src.read(1), ranks) and src.crs.to_epsg() == 4326
    search.write_geojson(tmp_path / "plan.geojson", reg, ranks, world.grid)
    fc = json.loads((tmp_path / "plan.geojson").read_text())
    assert [f["properties"]["rank"] for f in fc["features"]] == list(reg["rank"])
    shapes = [(shape(f["geometry"]), f["properties"]["rank"]) for f in fc["features"]]
    back = features.rasterize(shapes, out_shape=world.grid.shape, transform=world.grid.transform, fill=0)
    assert np.array_equal(back, ranks)


def test_bad_arguments(case) -> None:
    world, probs = case
    with pytest.raises(ValueError, match="budget_km2"):
        search.search_regions(world.atoms, None, probs, -1.0)
    with pytest.raises(ValueError, match="families"):
        search.search_regions(world.atoms, None, {"xx": [1.0]}, 1.0)
    with pytest.raises(ValueError, match="ls probabilities: 3 classes"):
        search.search_regions(world.atoms, None, {"s2": probs["s2"], "ls": [0.2, 0.3, 0.5]}, 1.0)


def test_plan_search_from_files(case, tmp_path: Path) -> None:
    from _rva_world import write_inputs

    world, probs = case
    paths = write_inputs(world, tmp_path / "in", n_images=3, bases=("geoest",))
    reg = search.plan_search(
        paths["atoms"], paths["atom_index"], paths["absorption"], probs, 0.25 * world.total,
        out_geojson=tmp_path / "p.geojson", out_tif=tmp_path / "p.tif",
    )  # fmt: skip
    direct = search.search_regions(world.atoms, world.atom_index, probs, 0.25 * world.total, world.absorption)
    assert list(reg["area_km2"]) == pytest.approx(list(direct["area_km2"]), rel=1e-12)
    assert (tmp_path / "p.geojson").stat().st_size > 0 and (tmp_path / "p.tif").stat().st_size > 0
