"""External geolocators against brute-force references on tiny generated grids (DESIGN 11).

Each kind's per-image areas equal the pixel-by-pixel raster reference of tests/_rva_world.py (relative 1e-9);
the cap equivalence RvA(cap area of r) == accuracy at r; kappa recovered from synthetic vMF draws.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _rva_world import make_world, random_probs, raster_reference
from geoens.core.grid import Grid, latlon_to_xyz
from geoens.data.predspec import PointPredictions, WeightedPoints
from geoens.evaluation.external import (
    fit_vmf_kappa,
    gallery_to_cells,
    grid_cap_areas,
    point_per_image,
    points_to_cells,
    sample_vmf,
    vmf_cell_probs,
    vmf_mean_resultant,
)
from geoens.evaluation.external_grid import (
    ExternalPartition,
    cell_directions,
    evaluate_external,
    external_atoms,
    point_cells,
    rasterize_external_partition,
)
from geoens.evaluation.methods import all_methods
from geoens.evaluation.metrics import recall_at
from geoens.evaluation.pointmetrics import accuracy_at, cap_budgets, point_cap_areas, point_summary
from geoens.geo.lookup import PixelLookup
from geoens.geo.partitions import PartitionError

N_IMG = 12


def _truth(rng: np.random.Generator, n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(n)],
            "lat": rng.uniform(-85, 85, n),
            "lon": rng.uniform(-180, 180, n),
        }
    )


def _attributes(rng: np.random.Generator, ids: list[str]) -> dict[str, tuple[pd.Series, np.ndarray]]:
    idx = pd.Series(np.arange(len(ids)), index=pd.Index(ids))
    return {"ls": (idx, random_probs(rng, len(ids), 4)), "lc": (idx, random_probs(rng, len(ids), 7))}


def _check_against_reference(world, part, atoms, index, truth, probs_by_image, attrs) -> None:  # type: ignore[no-untyped-def]
    lookup = PixelLookup(index, world.grid)
    ids = truth["image_id"].tolist()
    probs = np.stack([probs_by_image[i] for i in ids]).astype(np.float32)
    got, match = evaluate_external("MyNet", atoms, lookup, part, truth, ids, probs, attrs)
    assert match.n_missing == 0
    for m in all_methods(["MyNet"]):
        rows = got[got["method"] == m.name].set_index("image_id")
        assert len(rows) == len(ids)
        for k, i in enumerate(ids):
            r, c = world.grid.pixel_of(truth["lat"].iloc[k], truth["lon"].iloc[k])
            given = {"s2": probs[k], "ls": attrs["ls"][1][k], "lc": attrs["lc"][1][k]}
            area, zero, *_ = raster_reference(world, m, given, (int(r), int(c)))
            assert rows.loc[i, "area_km2"] == pytest.approx(area, rel=1e-9), (m.name, i)
            assert bool(rows.loc[i, "zero_prob"]) == zero


def test_points_and_samples_match_the_raster_reference() -> None:
    rng = np.random.default_rng(3)
    world = make_world(seed=5, h=12, n_cells=30)
    lookup = PixelLookup(world.atom_index, world.grid)
    part = ExternalPartition(world.labels["s2"].astype(np.int32), world.absorption, world.n_cells,
                             rng.uniform(-60, 60, 30), rng.uniform(-180, 180, 30))  # fmt: skip
    truth = _truth(rng, N_IMG)
    counts = rng.integers(1, 6, N_IMG)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    lat, lon = rng.uniform(-89, 89, offsets[-1]), rng.uniform(-180, 180, offsets[-1])
    for kind in ("points", "samples"):
        w = rng.random(offsets[-1]) if kind == "points" else 1.0 / np.repeat(counts, counts)
        w = w / np.repeat(np.add.reduceat(w, offsets[:-1]), counts)
        wp = WeightedPoints(truth["image_id"].tolist(), offsets, lat, lon, w)
        cells = point_cells(lat, lon, world.atoms, lookup)
        probs = points_to_cells(wp, cells, world.n_cells)
        brute = {}
        for k, i in enumerate(wp.ids):  # by hand: each point's weight to the label of its pixel
            p = np.zeros(world.n_cells)
            for j in range(offsets[k], offsets[k + 1]):
                r, c = world.grid.pixel_of(lat[j], lon[j])
                if world.labels["s2"][r, c] >= 0:
                    p[world.labels["s2"][r, c]] += w[j]
            brute[i] = p
        assert all(brute[i].sum() > 0 for i in wp.ids), "the seed gives every image a point in a cell"
        np.testing.assert_allclose(probs, np.stack([brute[i] for i in wp.ids]), atol=1e-6)
        attrs = _attributes(rng, wp.ids)
        _check_against_reference(world, part, world.atoms, world.atom_index, truth,
                                 dict(zip(wp.ids, probs, strict=True)), attrs)  # fmt: skip


def test_a_user_polygon_partition_is_one_more_family_of_atoms(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    world = make_world(seed=2, h=12)
    g = world.grid
    # 3 x 4 blocks of 60 x 90 degrees, plus a tiny polygon inside one pixel (absorbed); labels shuffled
    boxes = [(-90 + 60 * a, -180 + 90 * b, -30 + 60 * a, -90 + 90 * b) for a in range(3) for b in range(4)]
    boxes.append((10.2, 20.2, 10.4, 20.4))
    labels = rng.permutation(len(boxes))
    feats = [
        {"type": "Feature", "properties": {"zone": int(lab)},
         "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}}
        for (s, w, n, e), lab in zip(boxes, labels, strict=True)
    ]  # fmt: skip
    f = tmp_path / "zones.geojson"
    f.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    part = rasterize_external_partition(f, g, label_column="zone")
    lat_c, lon_c = g.lat_centers(), g.lon_centers()
    brute = np.full(g.shape, -1)
    for (s, w, n, e), lab in zip(boxes, labels, strict=True):
        inside = ((lat_c > s) & (lat_c < n))[:, None] & ((lon_c > w) & (lon_c < e))[None, :]
        brute[inside] = lab
    np.testing.assert_array_equal(part.labels, brute)
    tiny = int(labels[-1])
    r, c = g.pixel_of(10.3, 20.3)
    assert part.absorption[0].tolist() == [tiny] and part.absorption[1].tolist() == [brute[r, c]]
    atoms, index = external_atoms(part, world.labels["ls"], world.labels["lc"], g)
    w2 = dataclasses.replace(world, labels={**world.labels, "s2": brute}, n_cells=part.n_cells,
                             absorption=part.absorption)  # fmt: skip
    truth = _truth(rng, N_IMG)
    probs = random_probs(rng, N_IMG, part.n_cells)
    attrs = _attributes(rng, truth["image_id"].tolist())
    _check_against_reference(
        w2, part, atoms, index, truth, dict(zip(truth["image_id"], probs, strict=True)), attrs
    )
    with pytest.raises(PartitionError, match=r"zones.geojson: no label column 'label'"):
        rasterize_external_partition(f, g)


def test_missing_predictions_are_misses_in_every_method() -> None:
    rng = np.random.default_rng(1)
    world = make_world(seed=1, h=12)
    lookup = PixelLookup(world.atom_index, world.grid)
    part = ExternalPartition(world.labels["s2"].astype(np.int32), world.absorption, world.n_cells,
                             np.zeros(world.n_cells), np.zeros(world.n_cells))  # fmt: skip
    truth = _truth(rng, 5)
    ids = truth["image_id"].tolist()[:3] + ["stranger"]
    probs = random_probs(rng, 4, world.n_cells)
    got, match = evaluate_external("X", world.atoms, lookup, part, truth, ids, probs)
    assert (match.n_missing, match.n_extra) == (2, 1)
    b = got[got["method"] == "X"].set_index("image_id")
    assert len(b) == 5 and b.loc[["i3", "i4"], "zero_prob"].all()
    assert (b.loc[["i3", "i4"], "area_km2"] == world.grid.total_area()).all()
    assert set(got["method"]) == {"X", "X (cell)"}


def test_grid_cap_areas_equal_the_pixels_within_the_distance() -> None:
    rng = np.random.default_rng(0)
    for h in (12, 30):
        g = Grid(h, 2 * h)
        n = 40
        plat, plon = rng.uniform(-90, 90, n), rng.uniform(-180, 180, n)
        plat[:2] = [90.0, -89.99]  # a pole and near the other
        tlat, tlon = rng.uniform(-90, 90, n), rng.uniform(-180, 180, n)
        got = grid_cap_areas(plat, plon, tlat, tlon, g)
        xyz = latlon_to_xyz(
            g.lat_centers()[:, None] * np.ones((1, g.width)), np.ones((g.height, 1)) * g.lon_centers()
        )
        area = g.pixel_areas()
        for k in range(n):
            p, t = latlon_to_xyz(plat[k], plon[k]), latlon_to_xyz(tlat[k], tlon[k])
            cos_t = float(p @ t)
            brute = float(area[(xyz @ p) >= cos_t - 1e-13].sum())
            assert got[k] == pytest.approx(brute, rel=1e-9), (h, k)


def test_point_rva_at_the_cap_area_of_r_is_accuracy_at_r() -> None:
    rng = np.random.default_rng(4)
    radii = np.array([1.0, 25.0, 200.0, 750.0, 2500.0])
    # exactly at each radius (a hit both ways) and 1e-9 relative beyond it (a miss both ways); closer than
    # that, 1 - cos(d / R) cannot tell d from r in float64
    d = np.concatenate([rng.uniform(0, 20000, 500), radii, radii * (1 + 1e-9), [np.nan]])
    for radius in (6371.0, 6371.0088):
        areas = point_cap_areas(d, radius)
        np.testing.assert_array_equal(recall_at(areas, cap_budgets(radius)), accuracy_at(d))
    np.testing.assert_array_equal(accuracy_at([1.0, 0.5]), [1.0, 1.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(accuracy_at([1.0, 0.5], strict_less=True), [0.5, 1.0, 1.0, 1.0, 1.0])
    row = point_summary([0.0, 1492.7, np.nan], point_cap_areas([0.0, 1492.7, np.nan]), cap_budgets())
    assert row["geoguessr"] == pytest.approx((5000 + 5000 / math.e) / 3)
    assert (row["n_missing"], row["median_km"], row["mean_km"]) == (
        1,
        pytest.approx(746.35),
        pytest.approx(746.35),
    )


def test_point_per_image_scores_distance_ranking_and_counts_missing() -> None:
    truth = pd.DataFrame({"image_id": ["a", "b", "c"], "lat": [0.0, 10.0, 20.0], "lon": [0.0, 0.0, 0.0]})
    pred = PointPredictions(["b", "a", "zz"], np.array([10.0, 1.0, 5.0]), np.array([0.0, 0.0, 5.0]))
    per_image, match = point_per_image(pred, truth, "LLM", 6371.0)
    assert per_image["image_id"].tolist() == ["a", "b", "c"] and (match.n_missing, match.n_extra) == (1, 1)
    assert per_image["gcd_km"].iloc[0] == pytest.approx(6371.0 * math.radians(1.0))
    assert per_image["area_km2"].iloc[1] == 0.0 and per_image["zero_prob"].tolist() == [False, False, True]


def test_kappa_is_recovered_from_vmf_draws() -> None:
    rng = np.random.default_rng(11)
    n = 4000
    mlat, mlon = rng.uniform(-80, 80, n), rng.uniform(-180, 180, n)
    for kappa in (5.0, 300.0, 40000.0):
        lat, lon = sample_vmf(mlat, mlon, kappa, rng)
        cos = np.sum(latlon_to_xyz(lat, lon) * latlon_to_xyz(mlat, mlon), axis=1)
        c = 1.0 - 1.0 / kappa  # the draws follow the vMF law: P(cos >= c) = (e^k - e^(k c)) / (e^k - e^-k)
        want = -math.expm1(-kappa * (1 - c)) / -math.expm1(-2 * kappa)
        assert float(np.mean(cos >= c)) == pytest.approx(want, abs=0.03)
        fit = fit_vmf_kappa(mlat, mlon, lat, lon)
        assert fit == pytest.approx(kappa, rel=0.06), kappa
        assert vmf_mean_resultant(fit) == pytest.approx(float(np.mean(cos)), rel=1e-9)
    with pytest.raises(ValueError, match="mean cosine .* <= 0"):
        fit_vmf_kappa([0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [180.0, 170.0])


def test_vmf_cell_probs_and_smoothing_follow_the_kernel() -> None:
    world = make_world(seed=4, h=12)
    xyz, area = cell_directions(world.atoms, world.n_cells)
    assert (area[world.absorption[0]] == 0).all()
    lat, lon = np.array([12.0, -40.0]), np.array([33.0, 150.0])
    p = vmf_cell_probs(lat, lon, 20.0, xyz, area)
    y = latlon_to_xyz(lat, lon)
    brute = area[None, :] * np.exp(20.0 * (y @ xyz.T))
    brute[:, area == 0] = 0
    np.testing.assert_allclose(p, brute / brute.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-9)
    wp = WeightedPoints(["a"], np.array([0, 2]), lat, lon, np.array([0.25, 0.75]))
    s = points_to_cells(
        wp, np.zeros(2, np.int64), world.n_cells, smooth_kappa=20.0, cell_xyz=xyz, cell_area=area
    )
    np.testing.assert_allclose(s[0], 0.25 * p[0] + 0.75 * p[1], rtol=1e-5, atol=1e-9)


def test_a_gallery_softmax_gives_the_cells_of_its_points() -> None:
    rng = np.random.default_rng(2)
    n, g, c = 7, 300, 25
    cell = rng.integers(-1, c, g)
    wts = rng.dirichlet(np.ones(g), n).astype(np.float32)
    got = gallery_to_cells(wts, cell, c)
    want = np.zeros((n, c))
    for k in range(n):
        for j in range(g):
            if cell[j] >= 0:
                want[k, cell[j]] += wts[k, j]
    np.testing.assert_allclose(got, want / want.sum(axis=1, keepdims=True), rtol=1e-5)
    wp = WeightedPoints(
        [f"{k}" for k in range(n)],
        np.arange(n + 1) * g,
        np.zeros(n * g),
        np.zeros(n * g),
        wts.ravel().astype(np.float64),
    )
    via_points = points_to_cells(wp, np.tile(cell, n), c)
    np.testing.assert_allclose(got, via_points / via_points.sum(axis=1, keepdims=True), rtol=1e-5)


def test_a_user_s2_partition_with_a_bad_token_names_the_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "mycells.csv"
    f.write_text(
        "num_images: 3\nmin_concept_probability: ---\n"
        "class_label,hex_id,imgs_per_cell,latitude_mean,longitude_mean\n0,1,5,0,0\n1,zz9,5,0,0\n"
    )
    with pytest.raises(
        PartitionError, match=r"mycells.csv: line 5: hex_id is 'zz9', expected an S2 cell token"
    ):
        rasterize_external_partition(f, Grid(6, 12))
