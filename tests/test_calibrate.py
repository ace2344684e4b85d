"""Calibrated search regions (split conformal, DESIGN section 9) and the tempered ensemble.

Coverage is checked on exchangeable synthetic data over many seeds, the regions of ``geoens search
--coverage`` on a held-out synthetic set through real files, and the tempered fit on data drawn from a
known log-linear pool.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _rva_world import make_world, write_inputs
from geoens.apps.search import coverage_region, plan_coverage_search
from geoens.core.constants import cap_area_km2
from geoens.data.labeltable import read_label_points
from geoens.evaluation.calibrate import (
    LC_SCORE_COLUMNS,
    SCORE_COLUMNS,
    calibrate_scores,
    calibration_methods,
    open_dataset,
    score_dataset,
    threshold_of,
)
from geoens.evaluation.conformal import (
    cap_region_km2,
    conformal_quantile,
    hit_scores,
    region_areas,
    region_counts,
    upper_sets,
)
from geoens.evaluation.tempered import FitBatch, fit_weights, tempered_log_density
from geoens.evaluation.testset import read_probs


def _synthetic(rng: np.random.Generator, n: int, g: int, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``groups x images`` scores with exact ties and zeros, and truths drawn from a perturbed model."""
    if ties:
        P = rng.choice(np.array([0.0, 1.0, 2.0, 3.0, 8.0]), size=(g, n))
        P[0] += 1.0
    else:
        P = rng.gamma(0.3, size=(g, n))
    # truths drawn from a tempered version of P plus a uniform share: the model is miscalibrated, and
    # some truths fall on P = 0 groups
    q = (P + 0.05) ** 0.7
    q /= q.sum(axis=0)
    gt = np.array([rng.choice(g, p=q[:, i]) for i in range(n)])
    return P, gt


def test_conformal_quantile_index_and_infinity() -> None:
    s = np.arange(1.0, 11.0)  # n = 10
    assert conformal_quantile(s, 0.5) == 6.0  # ceil(11 * 0.5) = 6
    assert conformal_quantile(s, 0.9) == 10.0  # ceil(9.9) = 10
    assert conformal_quantile(s, 0.95) == math.inf  # ceil(10.45) = 11 > n
    assert conformal_quantile([], 0.5) == math.inf
    with pytest.raises(ValueError, match="coverage level must be in"):
        conformal_quantile(s, 1.0)
    with pytest.raises(ValueError, match="must not be NaN"):
        conformal_quantile([1.0, np.nan], 0.5)


def test_upper_sets_ties_and_zero_probability() -> None:
    area = np.array([1.0, 2.0, 4.0, 8.0])
    P = np.array([[3.0], [1.0], [3.0], [0.0]])  # groups 0 and 2 tie; group 3 has P = 0
    us = upper_sets(P, area)
    # upper set of the tie run {0, 2}: area 5; then {1}: 7; the P = 0 group: the whole (15), mass 1
    a_of = [hit_scores(us, P, np.array([k]))[0][0] for k in range(4)]
    assert a_of == [5.0, 7.0, 5.0, 15.0]  # ties share their upper set
    assert us.p_sorted[0].tolist() == [3.0, 3.0, 1.0, 0.0]
    rows = np.zeros(4, np.int64)
    assert us.mass_at(rows, np.arange(4))[2:].tolist() == [1.0, 1.0]  # exactly 1 from the last P > 0 on
    a, m, z = hit_scores(us, P, np.array([2]))
    assert (a[0], z[0]) == (5.0, False)
    a, m, z = hit_scores(us, P, np.array([3]))
    assert (a[0], m[0], z[0]) == (15.0, 1.0, True)  # counted as the whole sphere, never dropped
    # a budget inside the tie run takes none of it: whole upper sets only
    assert region_areas(us, "fixed", np.array([4.9]))[0] == 0.0
    assert region_areas(us, "fixed", np.array([6.0]))[0] == 5.0
    assert region_areas(us, "fixed", np.array([np.inf]))[0] == 15.0
    assert region_areas(us, "adaptive", np.array([0.9]))[0] == 5.0
    assert region_areas(us, "adaptive", np.array([1.0]))[0] == 15.0  # mass 1 includes the P = 0 group


@pytest.mark.parametrize("ties", [True, False])
def test_coverage_guarantee_on_exchangeable_data(ties: bool) -> None:
    # split conformal: for exchangeable calibration and test images, P(covered) >= level; the mean over
    # many seeds must not fall below the level by more than 3 standard errors
    levels = [0.5, 0.8, 0.9]
    n_seeds, n_cal, n_test, g = 150, 60, 80, 30
    area = np.random.default_rng(99).uniform(0.5, 2.0, g)
    cov = {(k, lv): [] for k in ("fixed", "adaptive") for lv in levels}
    for seed in range(n_seeds):
        rng = np.random.default_rng(seed)
        P, gt = _synthetic(rng, n_cal + n_test, g, ties)
        us = upper_sets(P, area)
        a, m, _ = hit_scores(us, P, gt)
        for kind, s in (("fixed", a), ("adaptive", m)):
            for lv in levels:
                q = conformal_quantile(s[:n_cal], lv)
                thr = np.full(n_test, q)
                # membership read from the region itself: the truth's sorted position is inside it
                c = region_counts(us, kind, np.concatenate([np.zeros(n_cal), thr]))[n_cal:]
                pos = np.argmax(us.order[n_cal:] == gt[n_cal:, None], axis=1)
                inside = pos < c
                assert np.array_equal(inside, s[n_cal:] <= q)
                cov[(kind, lv)].append(inside.mean())
    for (kind, lv), c in cov.items():
        c = np.asarray(c)
        se = c.std(ddof=1) / math.sqrt(c.size)
        assert c.mean() >= lv - 3 * se, (kind, lv, c.mean(), se)
        # and it is not trivially achieved by whole-sphere regions: coverage stays below 1
        assert c.mean() < 0.995, (kind, lv, c.mean())


def test_mondrian_thresholds_per_bucket() -> None:
    rng = np.random.default_rng(3)
    n = 400
    scores = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(n)],
            "base": "geoest",
            "method": "GeoEst.",
            "area_hit": rng.uniform(0, 1, n),
            "mass_hit": rng.uniform(0, 1, n),
            "gcd_km": np.nan,
            "zero_prob": False,
            "ls_pred": np.repeat([0, 1, 2, 3], n // 4).astype(np.int8),
            "ls_true": 0,
        }
    )
    scores.loc[scores["ls_pred"] == 3, "area_hit"] += 10.0  # bucket 3 is much harder
    cal = calibrate_scores(scores[list(SCORE_COLUMNS)], [0.9])["geoest"]
    assert cal["n"] == n and cal["n_per_bucket"] == {"lowest": 100, "low": 100, "medium": 100, "high": 100}
    glob = threshold_of(cal, "fixed", 0.9)
    high = threshold_of(cal, "fixed", 0.9, bucket=3)
    low = threshold_of(cal, "fixed", 0.9, bucket=0)
    assert high > glob > low and high > 10.0 > low
    sub = scores[scores["ls_pred"] == 3]["area_hit"]
    assert high == conformal_quantile(sub, 0.9)
    with pytest.raises(ValueError, match="coverage 0.8 was not calibrated"):
        threshold_of(cal, "fixed", 0.8)
    # a fraction calibrates on a seeded subset, the same for every call
    half = calibrate_scores(scores, [0.9], fraction=0.5, seed=4)["geoest"]
    assert half["n"] == n // 2 and half == calibrate_scores(scores, [0.9], fraction=0.5, seed=4)["geoest"]
    with pytest.raises(ValueError, match="calibrate.fraction must be in"):
        calibrate_scores(scores, [0.9], fraction=0.0)


def test_cap_region_area() -> None:
    assert cap_region_km2(np.array([25.0]))[0] == pytest.approx(cap_area_km2(25.0))
    whole = 4 * math.pi * 6371.0**2
    assert cap_region_km2(np.array([np.inf, 30000.0]))[0] == whole
    assert cap_region_km2(np.array([30000.0]))[0] == whole


def test_tempered_fit_recovers_known_weights() -> None:
    rng = np.random.default_rng(7)
    k, g, n = 3, 40, 4000
    true_w = np.array([0.6, 1.8, 0.0])
    area = rng.uniform(0.5, 2.0, g)
    logp = rng.normal(0.0, 1.0, size=(k, g, n))
    logp[2, :3, :] = -np.inf  # P_f = 0 on some groups: they stay 0 whatever the weights
    logq = tempered_log_density(logp, area, true_w)
    q = area[:, None] * np.exp(logq)
    assert np.allclose(q.sum(axis=0), 1.0)
    assert np.all(q[:3] == 0.0)
    cum = np.cumsum(q, axis=0)
    gt = (rng.random(n)[None, :] > cum).sum(axis=0)
    batches = [FitBatch(logp[:, :, s : s + 1000], gt[s : s + 1000]) for s in range(0, n, 1000)]
    fit = fit_weights(lambda: batches, area, ("s2", "ls", "lc"))
    assert fit.converged
    assert np.allclose(fit.weights, true_w, atol=0.08), fit
    assert fit.weights[2] >= 0.0
    assert fit.mean_log_density >= fit.mean_log_density_product
    assert fit.n_fit == n and fit.n_zero_prob == 0


def test_tempered_fit_counts_and_skips_zero_probability_truths() -> None:
    rng = np.random.default_rng(8)
    g, n = 10, 200
    area = np.ones(g)
    logp = rng.normal(size=(2, g, n))
    logp[0, 0, :] = -np.inf
    gt = rng.integers(0, g, n)
    gt[:15] = 0  # these truths have P = 0
    fit = fit_weights(lambda: [FitBatch(logp, gt)], area, ("s2", "ls"))
    assert (fit.n_fit, fit.n_zero_prob) == (
        n - 15 - int((gt[15:] == 0).sum()),
        15 + int((gt[15:] == 0).sum()),
    )
    with pytest.raises(ValueError, match="no fitting image"):
        fit_weights(lambda: [FitBatch(logp, np.zeros(n, np.int64))], area, ("s2", "ls"))
    with pytest.raises(ValueError, match="finite values >= 0"):
        tempered_log_density(logp, area, [1.0, -0.5])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], object]:
    world = make_world(seed=5, h=12)
    paths = write_inputs(world, tmp_path_factory.mktemp("cal"), n_images=600, seed=6, bases=("geoest",))
    return paths, world


def _dataset(paths: dict[str, Path], ids: list[str]):  # type: ignore[no-untyped-def]
    labels = read_label_points(paths["labels"])
    return open_dataset(
        paths["atoms"],
        paths["atom_index"],
        paths["absorption"],
        labels[labels["image_id"].isin(ids)],
        paths["fine"],
        {m: paths[m] for m in ("ls", "lc", "geoest")},
    )


def test_workflow_scores_and_coverage_region_contain_truth_as_calibrated(files, tmp_path: Path) -> None:
    paths, world = files
    ids = [f"img{k:04d}" for k in range(600)]
    cal_ids, test_ids = ids[:300], ids[300:]
    weights = {"geoest": [0.8, 1.2, 0.5]}
    cal_scores, none = score_dataset(_dataset(paths, cal_ids), weights)
    assert none is None and list(cal_scores.columns) == list(SCORE_COLUMNS + LC_SCORE_COLUMNS)
    names = {m.name for m in calibration_methods(["geoest"])}
    assert set(cal_scores["method"]) == names
    levels = [0.5, 0.8, 0.9]
    calibration = calibrate_scores(cal_scores, levels)
    test_scores, regions = score_dataset(_dataset(paths, test_ids), weights, calibration)
    assert regions is not None
    assert set(regions["mode"]) == {
        "fixed",
        "adaptive",
        "fixed per bucket",
        "adaptive per bucket",
        "cap",
        "cap per bucket",
    }
    # the workflow's coverage flag and the region of `geoens search --coverage` agree image by image, and
    # the held-out coverage is near the nominal level (binomial sampling error of 300 images)
    rec = calibration["geoest_ls_lc"]
    _, ls_p = read_probs(paths["ls"])
    _, lc_p = read_probs(paths["lc"])
    _, b_p = read_probs(paths["geoest"])
    labels = pd.read_parquet(paths["labels"]).set_index("image_id")
    from geoens.core.grid import Grid
    from geoens.evaluation.testset import read_absorption

    absorption = read_absorption(paths["absorption"])
    for lv in levels:
        sub = regions[
            (regions["method"] == "GeoEst.+LS+LC")
            & (regions["mode"] == "adaptive")
            & (regions["level"] == lv)
        ].set_index("image_id")
        inside = []
        for iid in test_ids[:120]:
            k = ids.index(iid)
            probs = {"s2": b_p[k], "ls": ls_p[k], "lc": lc_p[k]}
            reg, thr = coverage_region(
                world.atoms, world.atom_index, probs, rec, lv, "adaptive", None, absorption
            )
            assert thr == sub.loc[iid, "threshold"]
            r, c = world.grid.pixel_of(labels.loc[iid, "lat"], labels.loc[iid, "lon"])
            gt_atom = int(world.atom_index[int(r), int(c)])
            chosen = set(a for atoms in reg["atoms"] for a in atoms)
            inside.append(gt_atom in chosen)
            assert float(reg["area_km2"].sum()) == pytest.approx(sub.loc[iid, "region_km2"], rel=1e-9)
        assert np.array_equal(inside, sub.loc[test_ids[:120], "covered"].to_numpy())
        cov = sub["covered"].mean()
        assert cov >= lv - 3 * math.sqrt(lv * (1 - lv) / len(sub)), (lv, cov)
    assert isinstance(Grid, type)


def test_plan_coverage_search_writes_every_format(files, tmp_path: Path) -> None:
    import geopandas as gpd
    import rasterio

    from geoens.core.io import write_json

    paths, world = files
    ids = [f"img{k:04d}" for k in range(600)]
    scores, _ = score_dataset(_dataset(paths, ids[:300]), None)
    calibration = calibrate_scores(scores, [0.9])
    res = tmp_path / "results"
    for sub, key in (
        ("atoms/atoms.parquet", "atoms"),
        ("atoms/atom_index.tif", "atom_index"),
        ("masks/s2_absorption.parquet", "absorption"),
    ):
        (res / sub).parent.mkdir(parents=True, exist_ok=True)
        (res / sub).write_bytes(paths[key].read_bytes())
    write_json(res / "calibration" / "geoest_ls.json", calibration["geoest_ls"])
    _, ls_p = read_probs(paths["ls"])
    _, b_p = read_probs(paths["geoest"])
    out = plan_coverage_search(
        res,
        {"s2": b_p[400], "ls": ls_p[400]},
        "geoest",
        0.9,
        "adaptive-bucket",
        tmp_path / "o" / "photo",
        ls_probs=ls_p[400],
    )
    assert out["level"] == 0.9 and out["method"] == "GeoEst.+LS"
    # per bucket: the threshold, and the count printed, are those of the photo's predicted LS bucket
    bucket = ["lowest", "low", "medium", "high"][int(np.argmax(ls_p[400]))]
    assert out["group"] == bucket
    assert out["n_calibration"] == calibration["geoest_ls"]["n_per_bucket"][bucket]
    assert out["threshold"] == threshold_of(
        calibration["geoest_ls"], "adaptive", 0.9, int(np.argmax(ls_p[400]))
    )
    with rasterio.open(out["paths"]["tif"]) as src:
        ranks = src.read(1)
        assert src.crs.to_epsg() == 4326 and src.nodata == 0
    assert ranks.max() == len(out["regions"])
    gdf = gpd.read_file(out["paths"]["gpkg"], layer="region")
    assert len(gdf) == len(out["regions"]) and gdf.crs.to_epsg() == 4326
    assert out["paths"]["png"].stat().st_size > 0
    assert out["paths"]["geojson"].read_text().startswith('{"type":"FeatureCollection"')
    with pytest.raises(FileNotFoundError, match="geoest_lc.json is missing"):
        plan_coverage_search(res, {"s2": b_p[0], "lc": ls_p[0]}, "geoest", 0.9, "adaptive", tmp_path / "x")
    with pytest.raises(ValueError, match="coverage 0.8 was not calibrated"):
        plan_coverage_search(res, {"s2": b_p[0], "ls": ls_p[0]}, "geoest", 0.8, "adaptive", tmp_path / "x")


def test_coverage_and_tempered_tables() -> None:
    from geoens.core.constants import CAP_AREAS_KM2
    from geoens.reports.coverage import coverage_table, tempered_table

    rng = np.random.default_rng(11)
    n = 200
    ids = [f"i{k:03d}" for k in range(n)]
    covered = rng.random(n) < 0.9
    regions = pd.DataFrame(
        {
            "image_id": ids,
            "base": "geoest",
            "method": "GeoEst.+LS+LC",
            "mode": "adaptive",
            "level": 0.9,
            "threshold": 0.5,
            "region_km2": rng.uniform(1, 3, n),
            "covered": covered,
            "ls_pred": rng.integers(0, 4, n).astype(np.int8),
            "ls_true": np.repeat(np.arange(4), n // 4).astype(np.int8),
        }
    )
    t = coverage_table(regions, n_boot=200, seed=0)
    row = t.iloc[0]
    assert row["coverage"] == covered.mean() and row["coverage_lo"] <= row["coverage"] <= row["coverage_hi"]
    assert row["cov_true_high"] == covered[150:].mean() and row["n_true_high"] == 50
    assert row["mean_km2"] == pytest.approx(regions["region_km2"].mean())
    # tempered table: the tempered method hits the 2,500 km cap for 30 more images out of 200
    plain = np.full(n, 2 * CAP_AREAS_KM2[4])
    plain[:100] = CAP_AREAS_KM2[3]
    temp = plain.copy()
    temp[100:130] = CAP_AREAS_KM2[4]
    rows = [
        pd.DataFrame({"image_id": ids, "base": "geoest", "method": m, "area_hit": a, "mass_hit": 0.5,
                      "gcd_km": np.nan, "zero_prob": False, "ls_pred": 0, "ls_true": 0})
        for m, a in (("GeoEst.+LS+LC", plain), ("GeoEst.+LS+LC (tempered)", temp))
    ]  # fmt: skip
    tt = tempered_table(pd.concat(rows), n_boot=200, seed=0).set_index("radius_km")
    assert tt.loc[2500.0, "diff"] == pytest.approx(0.15) and tt.loc[2500.0, "diff_lo"] > 0
    assert tt.loc[750.0, "diff"] == 0.0 and tt.loc[750.0, "product"] == 0.5
