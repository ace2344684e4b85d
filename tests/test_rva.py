"""Algorithms 1-3 on atoms against a brute-force raster implementation, metrics, balanced sets, GCD."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _rva_world import make_world, random_probs, raster_reference, write_inputs
from geoens.core.constants import (
    CAP_AREAS_KM2,
    EARTH_RADIUS_KM,
    GCD_RADIUS_KM,
    GCD_THRESHOLDS_KM,
    cap_area_km2,
)
from geoens.core.grid import haversine_km
from geoens.evaluation.evaluator import Evaluator
from geoens.evaluation.methods import (
    Method,
    absorb,
    all_methods,
    family_scores,
    method_order,
    normalise_probs,
    scores_t,
)
from geoens.evaluation.metrics import (
    balanced_sample,
    bootstrap_ci,
    bootstrap_weights,
    curve_alphas,
    gcd_accuracy,
    recall_at,
)
from geoens.evaluation.rva import MethodResult, evaluate_groups_dense, group_atoms, group_scores_t
from geoens.evaluation.testset import PER_IMAGE_COLUMNS, evaluate_testset, read_probs
from geoens.geo.atoms import atoms_from_rasters, read_atoms
from geoens.geo.lookup import PixelLookup

PEER = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "peers" / "GeoEstimation"


def _evaluator(world, chunk_elements: int = 50) -> Evaluator:
    return Evaluator(
        world.atoms,
        {"s2": world.n_cells, "ls": 4, "lc": 7},
        PixelLookup(world.atom_index, world.grid),
        world.total,
        world.absorption,
        chunk_elements=chunk_elements,
    )


def _compare(world, n_images: int, seed: int, ties: bool, exact: bool) -> None:
    rng = np.random.default_rng(seed)
    probs = {
        "s2": random_probs(rng, n_images, world.n_cells, ties),
        "ls": random_probs(rng, n_images, 4, ties),
        "lc": random_probs(rng, n_images, 7, ties),
    }
    g = world.grid
    rows = rng.integers(0, g.height, n_images)
    cols = rng.integers(0, g.width, n_images)
    gt_atom = world.atom_index[rows, cols].astype(np.int64)
    ev = _evaluator(world)
    sc = ev.scores(probs)
    n_zero = 0
    for method in all_methods(["geoest"]):
        res = ev.evaluate(method, sc, gt_atom)
        groups = ev.groups(method.families)
        for i in range(n_images):
            area, zero, lat, lon, P = raster_reference(
                world, method, {f: p[i] for f, p in probs.items()}, (rows[i], cols[i])
            )
            n_zero += zero
            assert res.zero_prob[i] == zero, (method.name, i)
            assert res.area[i] == pytest.approx(area, rel=1e-9), (method.name, i)
            if exact:  # integer pixel areas: P painted from atoms equals the raster P bit for bit
                one = {f: s[:, i : i + 1] for f, s in sc.items()}
                if method.urban_prior:
                    one["ls"] = ev.urban_scores(1)
                Pg = group_scores_t(groups, one)[:, 0]
                painted = Pg[groups.of_atom[world.atom_index]]
                assert np.array_equal(painted, P), method.name
                assert res.area[i] == area
            if np.isnan(lat):
                assert np.isnan(res.top1_lat[i])
            else:
                assert res.top1_lat[i] == pytest.approx(lat, abs=1e-7), (method.name, i)
                assert res.top1_lon[i] == pytest.approx(lon, abs=1e-7), (method.name, i)
    assert n_zero > 0  # zero-probability ground truths were exercised


def test_atoms_equal_raster_reference_random_grid() -> None:
    world = make_world(seed=0, h=12)
    _compare(world, n_images=25, seed=3, ties=False, exact=False)


def test_atoms_equal_raster_reference_with_exact_ties() -> None:
    world = make_world(seed=1, h=12, integer_areas=True)
    _compare(world, n_images=25, seed=4, ties=True, exact=True)


def test_atoms_equal_raster_reference_other_world() -> None:
    world = make_world(seed=5, h=16, n_cells=60)
    _compare(world, n_images=10, seed=6, ties=False, exact=False)


def test_group_areas_and_class_areas_match_raster() -> None:
    world = make_world(seed=2)
    for f, n in (("s2", world.n_cells), ("ls", 4), ("lc", 7)):
        lab = world.labels[f]
        ok = lab >= 0
        ref = np.bincount(lab[ok], weights=world.area[ok], minlength=n)
        np.testing.assert_allclose(world.atoms.class_areas(f, n), ref, rtol=1e-12)
    g = group_atoms(world.atoms, ("s2",), {"s2": world.n_cells})
    assert g.n == np.unique(world.labels["s2"]).size
    assert g.area.sum() == pytest.approx(world.total, rel=1e-12)


def test_top1_centroid_inside_and_fallback_both_used() -> None:
    world = make_world(seed=7, h=12)
    rng = np.random.default_rng(0)
    n = 40
    probs = {
        "s2": random_probs(rng, n, world.n_cells),
        "ls": random_probs(rng, n, 4),
        "lc": random_probs(rng, n, 7),
    }
    ev = _evaluator(world, chunk_elements=10_000)
    sc = ev.scores(probs)
    gt = np.zeros(n, np.int64)
    res = ev.evaluate(all_methods(["geoest"])[4], sc, gt)
    # every top-1 lies in a pixel whose atom has the highest P
    m = all_methods(["geoest"])[4]
    groups = ev.groups(m.families)
    P = group_scores_t(groups, sc)
    top_atoms = ev.lookup.atom_at(res.top1_lat, res.top1_lon)
    assert np.all(P[groups.of_atom[top_atoms], np.arange(n)] == P.max(axis=0))
    r, c = world.grid.pixel_of(res.top1_lat, res.top1_lon)
    clat, clon = world.grid.pixel_center(r, c)
    centres = np.isclose(clat, res.top1_lat) & np.isclose(clon, res.top1_lon)  # fallback: a pixel centre
    assert centres.any() and (~centres).any()


def test_reference_atom_builder_matches_masks_stage() -> None:
    world = make_world(seed=3, h=12)  # atoms from geoens.geo.atoms.build_atoms
    mine, index = atoms_from_rasters(world.labels, world.area, world.grid)
    assert mine.n == world.atoms.n
    assert np.array_equal(index, world.atom_index)
    for f in ("s2", "ls", "lc"):
        assert np.array_equal(mine.labels[f], world.atoms.labels[f])
    np.testing.assert_allclose(mine.area, world.atoms.area, rtol=1e-12)
    np.testing.assert_allclose(mine.sxyz, world.atoms.sxyz, rtol=1e-9, atol=1e-6)


def test_cap_areas() -> None:
    # areas are measured with the area radius (DESIGN 2), like every pixel area, not the GCD radius
    R = EARTH_RADIUS_KM
    assert cap_area_km2(2500.0) != pytest.approx(cap_area_km2(2500.0, GCD_RADIUS_KM), rel=1e-9)
    for r, a in zip(GCD_THRESHOLDS_KM, CAP_AREAS_KM2, strict=True):
        assert a == pytest.approx(2 * math.pi * R**2 * (1 - math.cos(r / R)), rel=1e-12)
    # the paper's rounded values (its 2.0e7 is pi r^2 = 1.96e7; the cap is 1.94e7)
    np.testing.assert_allclose(CAP_AREAS_KM2, [3.1, 2.0e3, 1.3e5, 1.8e6, 2.0e7], rtol=0.035)
    assert [float(f"{a:.2e}") for a in CAP_AREAS_KM2] == [3.14, 1.96e3, 1.26e5, 1.77e6, 1.94e7]


def _read_geoest_results(path: Path) -> pd.DataFrame:
    lines = []
    with open(path) as fh:
        for line in fh:
            if not line.strip():
                break
            lines.append(line)
    from io import StringIO

    return pd.read_csv(StringIO("".join(lines)))


@pytest.mark.skipif(not (PEER / "results/im2gps3k/base_M-fstar.csv").exists(), reason="peer data absent")
def test_gcd_accuracy_matches_geoestimation_published() -> None:
    df = _read_geoest_results(PEER / "results/im2gps3k/base_M-fstar.csv")
    assert len(df) == 2997
    d = haversine_km(df["gt_lat"], df["gt_long"], df["predicted_lat"], df["predicted_long"], GCD_RADIUS_KM)
    np.testing.assert_allclose(d, df["great_circle_distance"], atol=0.006)
    acc = np.round(100 * gcd_accuracy(d), 2)
    np.testing.assert_array_equal(acc, [9.74, 27.03, 35.64, 49.15, 66.00])


def test_recall_at_and_curve() -> None:
    areas = np.array([1.0, 10.0, 10.0, np.inf, np.nan])
    np.testing.assert_allclose(recall_at(areas, [0.5, 1.0, 10.0, 1e9]), [0, 0.2, 0.6, 0.6])
    al = curve_alphas(50)
    assert al[0] == 1.0 and al[-1] == pytest.approx(4 * math.pi * 6371.0088**2)


def test_urban_prior_caps_recall_at_urban_share() -> None:
    world = make_world(seed=9, h=12)
    rng = np.random.default_rng(1)
    n = 200
    probs = {
        "s2": random_probs(rng, n, world.n_cells),
        "ls": random_probs(rng, n, 4),
        "lc": random_probs(rng, n, 7),
    }
    probs["s2"] = (probs["s2"] + 0.01).astype(np.float32)  # every cell has some probability
    g = world.grid
    rows, cols = rng.integers(0, g.height, n), rng.integers(0, g.width, n)
    gt = world.atom_index[rows, cols].astype(np.int64)
    ev = _evaluator(world, chunk_elements=100_000)
    sc = ev.scores(probs)
    urban_m = [m for m in all_methods(["geoest"]) if m.urban_prior][0]
    res = ev.evaluate(urban_m, sc, gt, top1=False)
    ls_gt = world.atoms.labels["ls"][gt]
    s2_gt = world.atoms.labels["s2"][gt]
    urban = np.isin(ls_gt, [2, 3])
    share = urban.mean()
    assert 0 < share < 1
    assert np.array_equal(~res.zero_prob, urban & (s2_gt >= 0))
    rec = recall_at(res.area, [world.total * 0.999])[0]
    assert rec <= share
    assert rec == pytest.approx((urban & (s2_gt >= 0)).mean())


def test_balanced_sample_equal_counts_and_seeded() -> None:
    rng = np.random.default_rng(0)
    b = rng.choice([-1, 0, 1, 2, 3], p=[0.05, 0.1, 0.2, 0.45, 0.2], size=1000)
    idx, counts = balanced_sample(b, seed=3)
    assert counts == [int((b == k).sum()) for k in range(4)]
    m = min(counts)
    assert [int((b[idx] == k).sum()) for k in range(4)] == [m] * 4
    assert np.all(b[idx] >= 0) and len(set(idx.tolist())) == idx.size
    idx2, _ = balanced_sample(b, seed=3)
    idx3, _ = balanced_sample(b, seed=4)
    assert np.array_equal(idx, idx2) and not np.array_equal(idx, idx3)


def test_bootstrap_ci_contains_mean_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    hits = rng.random((300, 3)) < [0.2, 0.5, 0.9]
    w = bootstrap_weights(300, 200, seed=1)
    lo, hi = bootstrap_ci(hits, w)
    mean = hits.mean(axis=0)
    assert np.all(lo <= mean) and np.all(mean <= hi) and np.all(hi - lo < 0.2)
    lo2, hi2 = bootstrap_ci(hits, bootstrap_weights(300, 200, seed=1))
    assert np.array_equal(lo, lo2) and np.array_equal(hi, hi2)


def test_evaluate_testset_end_to_end(tmp_path: Path) -> None:
    world = make_world(seed=11, h=12)
    paths = write_inputs(world, tmp_path, n_images=60)
    preds = {m: paths[m] for m in ("ls", "lc", "geoest", "geoclip")}
    df = evaluate_testset(
        paths["atoms"], paths["atom_index"], paths["absorption"], paths["labels"], paths["fine"], preds,
        earth_radius_km=world.grid.earth_radius_km, batch_size=25, chunk_elements=200,
    )  # fmt: skip
    assert list(df.columns) == list(PER_IMAGE_COLUMNS)
    assert len(df) == 60 * 12
    assert list(dict.fromkeys(df["method"])) == method_order()
    own = df[df["method"] == "GeoEst. (cell)"]
    assert own["area_km2"].isna().all() and own["gcd_km"].notna().all()
    # the first image's +LS area equals the raster reference
    lab = pd.read_parquet(paths["labels"])
    ids, p_s2 = read_probs(paths["geoest"])
    probs = {"s2": p_s2[0], "ls": read_probs(paths["ls"])[1][0], "lc": read_probs(paths["lc"])[1][0]}
    r, c = world.grid.pixel_of(lab["lat"][0], lab["lon"][0])
    m = all_methods(["geoest"])[1]
    area, zero, *_ = raster_reference(world, m, probs, (int(r), int(c)))
    got = df[(df["method"] == m.name) & (df["image_id"] == ids[0])]["area_km2"].iloc[0]
    assert got == pytest.approx(world.total if zero else area, rel=1e-9)
    assert df["ls_bucket"].dtype == np.int8


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    world = make_world(seed=12)
    paths = write_inputs(world, tmp_path, n_images=5, bases=("geoest",))
    df = pd.read_parquet(paths["atoms"]).drop(columns=["sz"])
    bad = tmp_path / "bad_atoms.parquet"
    df.to_parquet(bad)
    with pytest.raises(ValueError, match="bad_atoms.parquet: missing column"):
        read_atoms(bad)
    ragged = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"image_id": ["a", "b"], "probs": [[0.5, 0.5], [1.0]]}), ragged)
    with pytest.raises(ValueError, match="ragged.parquet: probs of row 1"):
        read_probs(ragged)
    with pytest.raises(ValueError, match="image b"):
        normalise_probs([[0.5, 0.5], [0.0, 0.0]], ids=["a", "b"])
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"image_id": ["img0000"], "probs": [[0.5, 0.5]]}), wrong)
    with pytest.raises(ValueError, match="wrong.parquet: 2 classes"):
        evaluate_testset(
            paths["atoms"], paths["atom_index"], paths["absorption"], paths["labels"], paths["fine"],
            {"ls": paths["ls"], "lc": paths["lc"], "geoest": wrong},
        )  # fmt: skip


def _all_results(world, probs, gt, **kw) -> dict[str, MethodResult]:
    ev = Evaluator(
        world.atoms, {"s2": world.n_cells, "ls": 4, "lc": 7}, PixelLookup(world.atom_index, world.grid),
        world.total, world.absorption, **kw,
    )  # fmt: skip
    sc = ev.scores(probs)
    return {
        m.name: r
        for m, r in zip(ev_methods(), ev.evaluate_many(ev_methods(), sc, gt, threads=2), strict=True)
    }


def ev_methods() -> list[Method]:
    return all_methods(["geoest"])


@pytest.mark.parametrize(("integer_areas", "ties"), [(False, False), (True, True)])
def test_threshold_form_equals_dense_and_torch(integer_areas: bool, ties: bool) -> None:
    """The numpy threshold form, the previous dense form and the torch backend give the same results."""
    pytest.importorskip("torch")
    world = make_world(seed=21, h=12, integer_areas=integer_areas)
    rng = np.random.default_rng(5)
    n = 30
    probs = {
        "s2": random_probs(rng, n, world.n_cells, ties),
        "ls": random_probs(rng, n, 4, ties),
        "lc": random_probs(rng, n, 7, ties),
    }
    probs["lc"][:3] = np.eye(7, dtype=np.float32)[[0, 3, 6]]  # one-hot: most atoms at P = 0
    gt = world.atom_index[rng.integers(0, 12, n), rng.integers(0, 24, n)].astype(np.int64)
    fast = _all_results(world, probs, gt)
    torch_res = _all_results(world, probs, gt, backend="torch", device="cpu", chunk_elements=100)
    ev = _evaluator(world)
    sc = ev.scores(probs)
    n_zero = 0
    for m in ev_methods():
        one = {f: sc[f] for f in m.families}
        if m.urban_prior:
            one["ls"] = ev.urban_scores(n)
        dense = evaluate_groups_dense(ev.groups(m.families), one, gt, world.total, ev.lookup)
        for other in (dense, torch_res[m.name]):
            r = fast[m.name]
            assert np.array_equal(r.zero_prob, other.zero_prob), m.name
            if integer_areas:
                assert np.array_equal(r.area, other.area), m.name
            else:
                np.testing.assert_allclose(r.area, other.area, rtol=1e-12, err_msg=m.name)
            np.testing.assert_allclose(r.top1_lat, other.top1_lat, atol=1e-9, err_msg=m.name)
            np.testing.assert_allclose(r.top1_lon, other.top1_lon, atol=1e-9, err_msg=m.name)
        n_zero += int(fast[m.name].zero_prob.sum())
    assert n_zero > 0


def test_s_threshold_is_exact() -> None:
    """``f(s) >= thr`` exactly when ``s >= t``, also for tiny, huge and sub-normal values."""
    from geoens.evaluation.rva_fast import s_threshold

    rng = np.random.default_rng(0)
    a = 10.0 ** rng.uniform(-300, 300, 400)
    b = 10.0 ** rng.uniform(-20, 20, 400)
    thr = 10.0 ** rng.uniform(-310, 300, 400)
    a[:5] = 0.0
    t = s_threshold(thr, [a, b])
    assert np.all(np.isinf(t[:5]))
    for k in range(5, 400):
        ak, bk = a[k], b[k]
        if np.isfinite(t[k]):
            assert (t[k] * ak) * bk >= thr[k], k
            assert t[k] == 0 or (np.nextafter(t[k], 0) * ak) * bk < thr[k], k
        else:
            assert (np.finfo(np.float64).max * ak) * bk < thr[k], k


def test_fused_scores_equal_the_three_steps() -> None:
    world = make_world(seed=4, h=12)
    rng = np.random.default_rng(2)
    p = random_probs(rng, 20, world.n_cells, ties=True)
    area = world.atoms.class_areas("s2", world.n_cells)
    ref = family_scores(absorb(normalise_probs(p), *world.absorption), area).T
    assert np.array_equal(scores_t(p, area, world.absorption, "s2"), ref)
    with pytest.raises(ValueError, match="s2 predictions: image b: probabilities must be finite"):
        scores_t([[0.5] * world.n_cells, [np.nan] * world.n_cells], area, None, "s2", ["a", "b"])
