"""The map explorer's data (geoens.reports.explorer): the numbers it shows are the run's, its regions are
the search plans', and ``geoens search`` / ``geoens explore`` report bad input clearly.

The page itself is driven in a real browser by tests/test_explorer_browser.py.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cluster.workflow import TINY_CONFIG
from geoens.apps.cli import build_parser
from geoens.core.grid import Grid
from geoens.reports.explorer import build_explorer, pick_sample
from geoens.reports.explorer_regions import N_LEVELS, REGION_ROW, LevelScale

TESTSETS = ("im2gps3k", "streetview")


def read_global(path: Path) -> Any:
    """The JSON a data script assigns (``window.X = {...};`` or ``X["key"] = {...};``)."""
    last = path.read_text(encoding="utf-8").strip().splitlines()[-1]
    return json.loads(last.split(" = ", 1)[1].rstrip(";"))


def png_array(uri: str) -> np.ndarray:
    """Pixels of a ``data:image/png;base64,...`` URI."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


# --------------------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------------------
def test_level_scale_rounds_areas_up_so_a_drawn_pixel_is_inside_the_region() -> None:
    scale = LevelScale(1.0, 5.1e8)
    areas = np.array([0.5, 1.0, 3.7, 1234.5, 9.9e6, 5.1e8])
    lev = scale.level_of(areas)
    assert lev.min() >= 1 and lev.max() <= N_LEVELS
    bound = scale.area_of(lev)
    assert np.all(bound >= areas * (1 - 1e-12))
    # one level below would not hold the area (except at the bottom level)
    below = scale.area_of(np.maximum(lev.astype(int) - 1, 1))
    assert np.all((below < areas) | (lev == 1))
    assert scale.level_of(np.array([np.inf]))[0] == 0, "never-proposed atoms get level 0"


def test_sample_takes_every_photo_or_the_failures_first() -> None:
    worst = np.arange(100, dtype=np.float64)
    assert pick_sample(worst[:10], 20, seed=0).tolist() == list(range(10))
    s = pick_sample(worst, 20, seed=0)
    assert s.size == 20 and np.unique(s).size == 20
    assert set(range(95, 100)) <= set(s.tolist()), "the 5 largest areas (a quarter of 20) are in the sample"
    assert pick_sample(worst, 20, seed=0).tolist() == s.tolist()


def test_explore_without_a_run_names_the_missing_table(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"eval/<testset>/per_image\.parquet: no evaluated test set"):
        build_explorer(tmp_path / "results", tmp_path / "out")
    with pytest.raises(ValueError, match="sample must be >= 0"):
        build_explorer(tmp_path / "results", tmp_path / "out", sample=-1)
    assert not (tmp_path / "out").exists(), "nothing half-written"


# --------------------------------------------------------------------------------------------------
# On a tiny run
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow  # the tiny workflow run (fixture tiny_explorer)
def test_points_and_panel_numbers_are_the_per_image_tables(tiny_explorer: Path) -> None:
    res = tiny_explorer / "results"
    ex = res / "explorer"
    assert (ex / "index.html").is_file() and (ex / "vendor" / "leaflet" / "leaflet.js").is_file()
    run = read_global(ex / "data" / "run.js")
    assert [t["name"] for t in run["testsets"]] == list(TESTSETS)
    for ts in TESTSETS:
        per_image = pd.read_parquet(res / "eval" / ts / "per_image.parquet")
        labels = pd.read_parquet(res / "labels" / "testsets" / f"{ts}.parquet").set_index("image_id")
        summ = read_global(ex / "data" / f"summary_{ts}.js")
        assert sorted(summ["ids"]) == sorted(per_image["image_id"].unique())
        i = len(summ["ids"]) // 2
        pid = summ["ids"][i]
        assert summ["lat"][i] == pytest.approx(labels.loc[pid, "lat"], abs=1e-4)
        rows = per_image[per_image["image_id"] == pid].set_index("method")
        for key, col in summ["log_area"].items():
            a = rows.loc[key.split("|")[1], "area_km2"]
            assert (col[i] is None) == bool(np.isnan(a))
            if col[i] is not None:
                assert col[i] == round(100 * np.log10(a))
        detail = read_global(ex / "data" / "detail" / ts / f"{summ['detail'][i]}.js")
        assert detail["id"] == pid and detail["image"] and (ex / detail["image"]).is_file()
        for r in detail["rows"]:
            want = rows.loc[r["method"]]
            for got, col in ((r["area_km2"], "area_km2"), (r["gcd_km"], "gcd_km")):
                assert (got is None and np.isnan(want[col])) or got == pytest.approx(want[col], rel=1e-6)
        # the curves' table numbers are the results table's (percent there, fractions here)
        table = pd.read_csv(res / "tables" / f"{ts}_original.csv").set_index("method")
        for key, caps in run["curves"][ts]["caps"].items():
            method = key.split("|")[1]
            cols = ["rva_1km", "rva_25km", "rva_200km", "rva_750km", "rva_2500km"]
            want_caps = table.loc[method, cols].to_numpy(np.float64) / 100
            got = np.array([np.nan if v is None else v for v in caps], dtype=np.float64)
            np.testing.assert_allclose(got, want_caps, atol=1e-4, equal_nan=True)


@pytest.mark.slow  # the tiny workflow run (fixture tiny_explorer)
def test_region_at_the_area_to_hit_contains_the_truth(tiny_explorer: Path) -> None:
    res = tiny_explorer / "results"
    ex = res / "explorer"
    run = read_global(ex / "data" / "run.js")
    scale = LevelScale(run["scale"]["lo_km2"], run["scale"]["hi_km2"])
    rm = png_array(run["region_map"]).astype(np.int64)
    atom_of_pixel = 65536 * rm[..., 0] + 256 * rm[..., 1] + rm[..., 2]
    grid = Grid(*atom_of_pixel.shape)  # the tiny grid is narrower than the explorer's: no downsampling
    summ = read_global(ex / "data" / "summary_im2gps3k.js")
    checked = 0
    for i, k in enumerate(summ["detail"]):
        d = read_global(ex / "data" / "detail" / "im2gps3k" / f"{k}.js")
        r, c = grid.pixel_of(summ["lat"][i], summ["lon"][i])
        for row in d["rows"]:
            key = f"{row['base']}|{row['method']}"
            if key not in d["regions"] or row["area_km2"] is None or row["zero_prob"]:
                continue
            lv = png_array(d["regions"][key]).reshape(-1)
            level = int(lv[atom_of_pixel[int(r), int(c)]])
            # drawn at the budget of its area to hit, and at no budget one level smaller
            assert level == int(scale.level_of(np.array([row["area_km2"]]))[0]), (d["id"], key)
            assert lv.size % REGION_ROW == 0
            checked += 1
    assert checked > 20


@pytest.mark.slow  # the tiny workflow run (fixture tiny_explorer)
def test_calibrated_regions_are_offered_at_each_level(tiny_explorer: Path) -> None:
    ex = tiny_explorer / "results" / "explorer"
    cal = json.loads((tiny_explorer / "results" / "calibration" / "geoclip_ls_lc.json").read_text())
    d = read_global(ex / "data" / "detail" / "im2gps3k" / "0.js")
    got = d["cal"]["geoclip|GeoCLIP+LS+LC"]
    assert sorted(got["adaptive"]) == sorted(f"{lv:g}" for lv in cal["levels"])
    areas = [got["adaptive"][f"{lv:g}"] for lv in sorted(cal["levels"])]
    assert areas == sorted(areas), "a higher coverage never gives a smaller region"


@pytest.mark.slow  # the tiny workflow run (fixture tiny_explorer)
def test_region_weighted_to_the_sets_mix_is_the_one_search_draws(tiny_explorer: Path) -> None:
    """The panel's "weighted to this set's mix" region has the area `geoens search --mix <set>` prints."""
    ex = tiny_explorer / "results" / "explorer"
    d = read_global(ex / "data" / "detail" / "im2gps3k" / "0.js")
    got = d["cal"]["geoclip|GeoCLIP+LS+LC"]
    weighted = got["adaptive weighted LS"]
    assert sorted(weighted) == sorted(got["adaptive"])
    photo = tiny_explorer / "results" / "demo" / "testsets" / "im2gps3k" / "images" / d["id"]
    run = _search(
        tiny_explorer, str(photo), "--coverage", "0.9", "--mix", "im2gps3k", "--base", "geoclip",
        "--attributes", "ls,lc", "--out", "s_mix",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    printed = float(run.stdout.split("adaptive region ", 1)[1].split(" km^2", 1)[0])
    assert weighted["0.9"] == pytest.approx(printed, rel=1e-3)
    # the weighting is not a no-op here: the set's mix differs from val's and moves some threshold
    assert any(weighted[lv] != got["adaptive"][lv] for lv in weighted)


def _search(tiny: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "geoens.apps.cli", "search", *args, "--config", str(TINY_CONFIG)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, cwd=tiny, capture_output=True, text=True, env=env)


@pytest.mark.slow  # the tiny workflow run (fixture tiny_explorer)
def test_search_names_a_directory_and_a_budget_below_the_first_rank_group(tiny_explorer: Path) -> None:
    images = tiny_explorer / "results" / "demo" / "testsets" / "im2gps3k" / "images"
    photo = str(sorted(images.glob("*.jpg"))[0])
    parser = build_parser()
    cwd = os.getcwd()
    os.chdir(tiny_explorer)
    try:
        args = parser.parse_args(["search", str(images), "--budget-km2", "1e6", "--config", str(TINY_CONFIG)])
        with pytest.raises(
            IsADirectoryError, match=r"images is a directory, not a photo: give the photo files"
        ):
            args.func(args)
        args = parser.parse_args(
            ["search", photo, "--budget-km2", "1", "--config", str(TINY_CONFIG), "--out", "s"]
        )
        with pytest.raises(
            ValueError, match=r"--budget-km2 1 is smaller than the most likely rank group \("
        ) as e:
            args.func(args)
    finally:
        os.chdir(cwd)
    smallest = str(e.value).rsplit("--budget-km2 ", 1)[1]
    ok = _search(tiny_explorer, photo, "--budget-km2", smallest, "--out", "s", "--html")
    assert ok.returncode == 0, ok.stderr
    assert " 1 region group(s)" in ok.stdout, "the smallest budget named returns the first rank group"
    viewer = read_global(tiny_explorer / "s" / "viewer" / "data" / "summary_search.js")
    assert viewer["ids"] == [Path(photo).name]
    assert (tiny_explorer / "s" / "viewer" / "index.html").is_file()
    both = _search(tiny_explorer, str(images), photo, "--budget-km2", "1", "--out", "s")
    assert both.returncode == 2
    assert f"{images}: is a directory, not a photo; skipped" in both.stderr


@pytest.mark.slow  # the tiny workflow run (fixture tiny_explorer)
def test_external_models_in_the_eval_folder_are_shown_too(tiny_explorer: Path, tmp_path: Path) -> None:
    res = tiny_explorer / "results"
    mine = tmp_path / "results"
    mine.mkdir()
    for part in ("atoms", "masks", "labels", "predictions", "calibration"):
        (mine / part).symlink_to(res / part)
    for ts in TESTSETS:
        (mine / "eval" / ts).mkdir(parents=True)
        per_image = pd.read_parquet(res / "eval" / ts / "per_image.parquet")
        per_image.to_parquet(mine / "eval" / ts / "per_image.parquet")
        ext = per_image[per_image["method"] == "GeoCLIP"].assign(base="mymodel", method="MyModel")
        ext["area_km2"] = ext["area_km2"] * 2
        ext = ext.drop(columns=["top1_lat", "top1_lon", "ls_bucket"])  # filled: no top-1, the truth's bucket
        ext.to_parquet(mine / "eval" / ts / "external_mymodel.parquet")
    build_explorer(mine, tmp_path / "ex", sample=5)
    run = read_global(tmp_path / "ex" / "data" / "run.js")
    assert "mymodel|MyModel" in run["testsets"][0]["methods"]
    assert "mymodel|MyModel" in run["curves"]["im2gps3k"]["caps"]
    summ = read_global(tmp_path / "ex" / "data" / "summary_im2gps3k.js")
    assert sum(k >= 0 for k in summ["detail"]) == 5
    got = summ["log_area"]["mymodel|MyModel"]
    ref = summ["log_area"]["geoclip|GeoCLIP"]
    pairs = [(a, b) for a, b in zip(got, ref, strict=True) if a is not None and b is not None]
    assert pairs and all(abs(a - b - 30) <= 1 for a, b in pairs), "twice the area: 100 log10 2 more"
    d = read_global(tmp_path / "ex" / "data" / "detail" / "im2gps3k" / "0.js")
    mine_rows = [r for r in d["rows"] if r["base"] == "mymodel"]
    assert len(mine_rows) == 1 and mine_rows[0]["top1"] == [None, None] and mine_rows[0]["gcd_km"] is not None
    assert "mymodel|MyModel" not in d["regions"], "no predictions of the external model: no region"
    bad = pd.DataFrame({"image_id": ["x"], "base": ["b"]})
    bad.to_parquet(mine / "eval" / "im2gps3k" / "external_bad.parquet")
    with pytest.raises(ValueError, match=r"external_bad\.parquet: missing per-image column\(s\)"):
        build_explorer(mine, tmp_path / "ex2")
