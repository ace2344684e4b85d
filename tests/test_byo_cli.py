"""`geoens rva`: the command on a tiny generated results folder, its outputs, and its one-line errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _rva_world import make_world, write_inputs
from fakes import write_partition_csv
from geoens.apps.cli import main
from geoens.core.grid import Grid
from geoens.data.predictions import PointPredictions, write_point_predictions
from geoens.evaluation.external import sample_vmf
from geoens.evaluation.testset import evaluate_testset, read_probs
from geoens.geo import s2
from geoens.geo.rasters import write_label_raster


def _results(tmp_path: Path) -> tuple[Path, dict[str, Path], Path]:
    """A results folder in the workflow's layout for a random world, and a truth CSV of its test images."""
    world = make_world(seed=6, h=12)
    paths = write_inputs(world, tmp_path / "inputs", n_images=15)
    res = tmp_path / "results"
    for src, dst in [("atoms", "atoms/atoms.parquet"), ("atom_index", "atoms/atom_index.tif"),
                     ("absorption", "masks/s2_absorption.parquet"), ("fine", "partitions/fine.csv"),
                     ("ls", "predictions/t/ls.parquet"), ("lc", "predictions/t/lc.parquet")]:  # fmt: skip
        (res / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(paths[src], res / dst)
    lab = pd.read_parquet(paths["labels"])
    truth = tmp_path / "truth.csv"
    lab.rename(columns={"image_id": "IMG_ID", "lat": "LAT", "lon": "LON"}).to_csv(truth, index=False)
    return res, paths, truth


def test_cells_scored_by_the_command_equal_the_built_in_evaluation(tmp_path: Path) -> None:
    res, paths, truth = _results(tmp_path)
    mine = tmp_path / "MyNet.parquet"
    shutil.copy(paths["geoclip"], mine)
    out = tmp_path / "out"
    argv = [str(mine), "--truth", str(truth), "--kind", "cells", "--results", str(res), "--testset", "t"]
    assert main(["rva", *argv, "--no-country", "--out", str(out)]) == 0
    got = pd.read_parquet(out / "per_image.parquet")
    ref = evaluate_testset(paths["atoms"], paths["atom_index"], paths["absorption"], paths["labels"],
                           paths["fine"], {m: paths[m] for m in ("ls", "lc", "geoclip")})  # fmt: skip
    ref = ref[ref["base"] == "geoclip"]
    for suffix in ("", "+LS", "+LS urban prior", "+LC", "+LS+LC", " (cell)"):
        a = got[got["method"] == "MyNet" + suffix].set_index("image_id")
        b = ref[ref["method"] == "GeoCLIP" + suffix].set_index("image_id").loc[a.index]
        assert len(a) == 15
        np.testing.assert_allclose(a["area_km2"], b["area_km2"], rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(a["gcd_km"], b["gcd_km"], rtol=1e-12, equal_nan=True)
    table = pd.read_csv(out / "table.csv")
    assert table["model"].tolist() == ["MyNet", "MyNet+LS", "MyNet+LS urban prior", "MyNet+LC", "MyNet+LS+LC"]
    assert (out / "rva.pdf").stat().st_size > 0 and (out / "table.tex").read_text().count(r"\\") >= 6


def test_points_without_a_prediction_are_counted_in_the_summary(tmp_path: Path) -> None:
    res, paths, truth = _results(tmp_path)
    ids, _ = read_probs(paths["geoclip"])
    f = tmp_path / "llm.parquet"
    write_point_predictions(f, PointPredictions(ids[:10] + ["ghost"], np.zeros(11), np.zeros(11)))
    out = tmp_path / "o"
    assert main(["rva", str(f), "--truth", str(truth), "--no-country", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())["models"][0]
    assert (s["n_matched"], s["n_missing_predictions"], s["n_not_in_truth"]) == (10, 5, 1)
    assert s["not_in_truth_examples"] == ["ghost"]
    per = pd.read_parquet(out / "per_image.parquet")
    assert len(per) == 15 and int(per["zero_prob"].sum()) == 5
    assert pd.read_csv(out / "table.csv")["n_missing"].iloc[0] == 5


def test_a_partition_alone_is_scored_without_a_results_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No results folder: a cells model is scored on its own S2 partition rasterised on a --grid-rows grid,
    its areas equal to a brute-force raster reference (Algorithms 1 and 3 pixel by pixel)."""
    rng = np.random.default_rng(12)
    level1 = [c for f in range(6) for c in s2.children(np.uint64((2 * f + 1) << 60))]
    tokens = s2.id_to_token(np.array(level1, np.uint64))
    lat_c, lon_c = s2.cell_center_latlng(np.array(level1, np.uint64))
    rows = [
        f"{k},{t},10,{a:.6f},{o:.6f}" for k, (t, a, o) in enumerate(zip(tokens, lat_c, lon_c, strict=True))
    ]
    part = write_partition_csv(tmp_path / "cells24.csv", rows)
    n, h = 40, 18
    ids = [f"p{k}" for k in range(n)]
    tlat, tlon = rng.uniform(-89, 89, n), rng.uniform(-180, 180, n)
    pd.DataFrame({"IMG_ID": ids, "LAT": tlat, "LON": tlon}).to_csv(tmp_path / "truth.csv", index=False)
    probs = rng.dirichlet(np.full(24, 0.4), size=n)
    probs[probs < 0.02] = 0.0  # some truths in a cell of probability 0: misses
    probs /= probs.sum(axis=1, keepdims=True)
    pq.write_table(pa.table({"image_id": ids, "probs": probs.tolist()}), tmp_path / "MyNet.parquet")
    out = tmp_path / "out"
    argv = [str(tmp_path / "MyNet.parquet"), "--truth", str(tmp_path / "truth.csv"), "--kind", "cells"]
    argv += ["--partition", str(part), "--grid-rows", str(h), "--no-country"]
    assert main(["rva", *argv, "--out", str(out)]) == 0
    got = pd.read_parquet(out / "per_image.parquet")
    assert set(got["method"]) == {"MyNet", "MyNet (cell)"}  # the base alone: no LS/LC without a run
    got = got[got["method"] == "MyNet"].set_index("image_id").loc[ids]
    # brute force on the same grid: each pixel's cell (its centre's leaf within the cell's range)
    grid = Grid(h, 2 * h, earth_radius_km=6371.0)
    leaves = s2.grid_leaves(grid.lat_centers(), grid.lon_centers())
    ids64 = np.array(level1, np.uint64)
    owner = np.full(leaves.shape, -1)
    for k, c in enumerate(ids64):
        owner[(leaves >= s2.range_min(c)) & (leaves <= s2.range_max(c))] = k
    assert (owner >= 0).all()
    area = grid.pixel_areas() * np.ones((1, 2 * h))
    cell_area = np.bincount(owner.ravel(), weights=area.ravel(), minlength=24)
    r = np.floor((90 - tlat) / (180 / h)).astype(int)
    c = np.floor((tlon + 180) / (360 / (2 * h))).astype(int)
    for k in range(n):
        dens = probs[k][owner] / cell_area[owner]
        g = dens[r[k], c[k]]
        if g == 0:
            assert got["zero_prob"].iloc[k]
        else:
            assert not got["zero_prob"].iloc[k]
            assert got["area_km2"].iloc[k] == pytest.approx(area[dens >= g].sum(), rel=1e-9)
    assert 0 < int(got["zero_prob"].sum()) < n
    assert pd.read_csv(out / "table.csv")["model"].tolist() == ["MyNet"]
    note = (out / "table.md").read_text()
    assert (
        f"RvA by Alg. 3 on cells24.csv rasterised at {h} x {2 * h}" in note and "distance ranking" not in note
    )
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["partition"], summary["grid_rows"], summary["results"]) == (str(part), h, None)
    cases = [
        (["--grid-rows", "1"], r"--grid-rows must be at least 2"),
        (["--grid-rows", "12", "--results", str(tmp_path)], r"--grid-rows sets the grid of a --partition"),
        (["--partition", str(tmp_path / "truth.csv")], r"truth.csv: .*(hex_id|class_label)"),
        (["--val", "v.parquet", "v.csv"], r"--val fits the kappa of a point model; --kind cells has none"),
    ]
    for extra, msg in cases:
        assert main(["rva", *argv, *extra, "--out", str(tmp_path / "x")]) == 2
        assert re.search(msg, capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


def test_a_truth_csv_with_other_column_names_is_read_by_declaring_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """OSV-5M's test CSV names its columns id, latitude, longitude: declared, the scores are the same."""
    _, paths, truth = _results(tmp_path)
    ids, _ = read_probs(paths["geoclip"])
    rng = np.random.default_rng(3)
    f = tmp_path / "llm.parquet"
    write_point_predictions(f, PointPredictions(ids, rng.uniform(-60, 60, len(ids)),
                                                rng.uniform(-180, 180, len(ids))))  # fmt: skip
    t = pd.read_csv(truth)
    osv = tmp_path / "osv_test.csv"
    t.rename(columns={"IMG_ID": "id", "LAT": "latitude", "LON": "longitude"}).assign(
        country="xx",
        LAT=0.0,  # a column named like the default must not be taken when another is declared
    ).iloc[:, ::-1].to_csv(osv, index=False)
    base = ["rva", str(f), "--no-country"]
    assert main([*base, "--truth", str(truth), "--out", str(tmp_path / "a")]) == 0
    mapping = "image_id=id,lat=latitude,lon=longitude"
    assert main([*base, "--truth", str(osv), "--truth-columns", mapping, "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    a, b = tmp_path / "a", tmp_path / "b"
    per_a, per_b = pd.read_parquet(a / "per_image.parquet"), pd.read_parquet(b / "per_image.parquet")
    pd.testing.assert_frame_equal(per_a, per_b)
    # the tables differ only in their title (the truth file's name)
    assert (a / "table.md").read_text().split("\n")[1:] == (b / "table.md").read_text().split("\n")[1:]
    # a swapped mapping: the rows whose longitude is not a latitude are dropped, counted and named
    swapped = "image_id=id,lat=longitude,lon=latitude"
    assert main([*base, "--truth", str(osv), "--truth-columns", swapped, "--out", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    dropped = json.loads((tmp_path / "c" / "summary.json").read_text())["truth_rows_dropped"]
    n_out = int((t["LON"].abs() > 90).sum())
    assert n_out > 0 and dropped["rows_bad"] == n_out
    assert dropped["bad_by_reason"]["lat_out_of_range"] == n_out
    assert (
        f"{n_out} truth row(s) dropped (lat_out_of_range={n_out}" in (tmp_path / "c" / "table.md").read_text()
    )
    assert json.loads((a / "summary.json").read_text())["truth_rows_dropped"]["rows_bad"] == 0
    cases = [
        ([], r"osv_test.csv: missing column 'IMG_ID' .*name yours with --truth-columns image_id=\.\.\.,lat="),
        (["--truth-columns", "image_id=id,lat=lat_gt,lon=longitude"],
         r"osv_test.csv: missing column 'lat_gt' \(mapped to LAT\)"),
        (["--truth-columns", "image_id=id,latitude=latitude"],
         r"--truth-columns: unknown key\(s\) \['latitude'\]"),
        (["--truth-columns", "image_id=id,lat=latitude,lon=latitude"],
         r"osv_test.csv: one file column serves two of IMG_ID, LAT, LON"),
        (["--truth-columns", "lat"], r"--truth-columns: 'lat' is not name=column"),
    ]  # fmt: skip
    for extra, msg in cases:
        assert main([*base, "--truth", str(osv), *extra, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("geoens: error:"), err
        assert re.search(msg, err), (msg, err)
    assert not (tmp_path / "x").exists()


def test_bad_commands_fail_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res, paths, truth = _results(tmp_path)
    gc = str(paths["geoclip"])
    bad = tmp_path / "bad.parquet"
    write_point_predictions(bad, PointPredictions(["a"], np.array([95.0]), np.array([0.0])))
    cases = [
        ([str(bad), "--truth", str(truth), "--kind", "points"], r"--kind points needs --results"),
        ([str(bad), "--truth", str(truth)], r"bad.parquet: 1 latitude\(s\) impossible in degrees"),
        ([str(bad), str(bad), "--truth", str(truth), "--name", "x"], r"--name names one predictions file"),
        ([str(bad), "--truth", str(truth), "--testset", "t"], r"--testset names the LS/LC predictions"),
        ([str(bad), "--truth", str(truth), "--kind", "cells", "--results", str(tmp_path / "nowhere")],
         r"nowhere/atoms/atoms.parquet is missing"),
        ([gc, "--truth", str(truth), "--kind", "point", "--results", str(res)],
         r"geoclip.parquet: a 'point' model on the grid needs kappa"),
        ([gc, "--truth", str(truth), "--kind", "point", "--results", str(res), "--kappa", "5"],
         r"geoclip.parquet: no column for 'lat'"),
        ([str(bad), "--truth", str(truth), "--partition", "nowhere.csv"],
         r"--partition with a point model reads each point as a vMF density .*give --kappa or --val"),
        ([str(bad), "--truth", str(truth), "--results", str(res), "--kappa", "3", "--val", "a", "b"],
         r"--val fits kappa: do not also give --kappa"),
        ([str(bad), "--truth", str(truth), "--columns", "lat=a,lon=b,lat=c"],
         r"--columns: 'lat' is given twice"),
    ]  # fmt: skip
    for argv, msg in cases:
        assert main(["rva", *argv, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("geoens: error:"), err
        assert re.search(msg, err), (msg, err)
    assert not (tmp_path / "x").exists()


def test_points_are_binned_into_a_user_partition(tmp_path: Path) -> None:
    res, paths, truth = _results(tmp_path)
    world = make_world(seed=6, h=12)
    (res / "masks").mkdir(exist_ok=True)
    write_label_raster(res / "masks" / "ls.tif", world.labels["ls"].astype(np.int8), world.grid, ["a"] * 4)
    write_label_raster(res / "masks" / "lc.tif", world.labels["lc"].astype(np.int8), world.grid, ["a"] * 7)
    ring = [[[w, -90], [w + 180, -90], [w + 180, 90], [w, 90], [w, -90]] for w in (-180, 0)]
    feats = [
        {"type": "Feature", "properties": {"half": k}, "geometry": {"type": "Polygon", "coordinates": [r]}}
        for k, r in enumerate(ring)
    ]
    halves = {"type": "FeatureCollection", "features": feats}
    (tmp_path / "halves.geojson").write_text(json.dumps(halves))
    lab = pd.read_csv(truth)
    pts = tmp_path / "west.parquet"
    n = len(lab)
    cols = {"image_id": lab["IMG_ID"], "lat": [[10.0, -20.0]] * n, "lon": [[-100.0, -50.0]] * n}
    pq.write_table(pa.table(cols | {"weight": [[0.5, 0.5]] * n}), pts)
    out = tmp_path / "o"
    argv = [str(pts), "--truth", str(truth), "--kind", "points", "--results", str(res), "--no-country"]
    argv += ["--partition", str(tmp_path / "halves.geojson"), "--partition-label", "half"]
    assert main(["rva", *argv, "--out", str(out)]) == 0
    per = pd.read_parquet(out / "per_image.parquet").set_index("image_id")
    per = per[per["method"] == "west"].loc[lab["IMG_ID"]]
    west = (lab["LON"] < 0).to_numpy()
    half = world.grid.total_area() / 2
    np.testing.assert_allclose(per["area_km2"][west], half, rtol=1e-12)
    assert per["zero_prob"][~west].all() and not per["zero_prob"][west].any()
    # without a results folder the same partition alone, on a grid of its own: the same base rows
    alone = tmp_path / "alone"
    argv = [str(pts), "--truth", str(truth), "--kind", "points", "--no-country", "--grid-rows", "12"]
    argv += ["--partition", str(tmp_path / "halves.geojson"), "--partition-label", "half"]
    assert main(["rva", *argv, "--radius-km", repr(world.grid.earth_radius_km), "--out", str(alone)]) == 0
    per2 = pd.read_parquet(alone / "per_image.parquet").set_index("image_id")
    per2 = per2[per2["method"] == "west"].loc[lab["IMG_ID"]]
    np.testing.assert_allclose(per2["area_km2"], per["area_km2"], rtol=1e-12)
    assert (per2["zero_prob"] == per["zero_prob"]).all()


def test_kappa_of_a_point_model_is_fitted_on_val(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res, paths, truth = _results(tmp_path)
    rng = np.random.default_rng(8)
    n = 600
    vt = pd.DataFrame({"IMG_ID": [f"v{k}" for k in range(n)], "LAT": rng.uniform(-70, 70, n),
                       "LON": rng.uniform(-180, 180, n)})  # fmt: skip
    vt.to_csv(tmp_path / "val.csv", index=False)
    plat, plon = sample_vmf(vt["LAT"], vt["LON"], 30.0, rng)
    write_point_predictions(tmp_path / "val.parquet", PointPredictions(vt["IMG_ID"].tolist(), plat, plon))
    lab = pd.read_csv(truth)
    test = tmp_path / "test.parquet"
    ids = lab["IMG_ID"].tolist()
    write_point_predictions(test, PointPredictions(ids, lab["LAT"].to_numpy(), lab["LON"].to_numpy()))
    out = tmp_path / "o"
    argv = [str(test), "--truth", str(truth), "--results", str(res), "--testset", "t", "--no-country"]
    argv += ["--val", str(tmp_path / "val.parquet"), str(tmp_path / "val.csv")]
    assert main(["rva", *argv, "--out", str(out)]) == 0
    kappa = json.loads((out / "summary.json").read_text())["kappa"]
    assert kappa == pytest.approx(30.0, rel=0.15)
    assert "vMF density (kappa" in (out / "table.md").read_text()
    assert main(["rva", str(test), "--truth", str(truth), "--val", "a", "b", "--out", str(out)]) == 2
    assert "a point as a vMF density (--kappa, --val) needs --results" in capsys.readouterr().err
