"""The calibration rules end to end on the tiny demo world: artifacts, staleness, ``search --coverage``.

One run of the calibration targets per module in a temporary copy of the workflow; each staleness test
changes one config key and checks the rules a dry run would plan (only calibration and what follows).
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cluster.workflow import REPO, TINY_CONFIG, copy_workflow, planned_jobs, run_snakemake

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (REPO / TINY_CONFIG).exists(), reason=f"{TINY_CONFIG} not written yet"),
]

TESTSETS = ("im2gps3k", "streetview")
TARGETS = ["results/figures/coverage.pdf", *(f"results/tables/{t}_tempered.md" for t in TESTSETS)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("cal") / "wf")
    run_snakemake(workdir, *TARGETS, "--cores", "2", "--configfile", str(TINY_CONFIG), timeout=2400).check()
    return workdir


def _plan(workdir: Path, changes: dict) -> dict[str, int]:
    cfg = yaml.safe_load((workdir / TINY_CONFIG).read_text())
    cfg = copy.deepcopy(cfg)
    for key, value in changes.items():
        cfg.setdefault(key, {}).update(value)
    path = workdir / "tests" / "data" / "changed.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return planned_jobs(workdir, *TARGETS, "--cores", "2", "--configfile", str(path))


def test_calibration_artifacts(tiny: Path) -> None:
    cal = json.loads((tiny / "results" / "calibration" / "geoclip_ls_lc.json").read_text())
    assert cal["method"] == "GeoCLIP+LS+LC" and cal["levels"] == [0.5, 0.8, 0.9, 0.95]
    assert set(cal["thresholds"]) == {"fixed", "adaptive"}
    assert set(cal["thresholds"]["adaptive"]) == {"all", "lowest", "low", "medium", "high"}
    val = pd.read_parquet(tiny / "results" / "calibration" / "scores" / "val.parquet")
    sub = val[val["method"] == "GeoCLIP+LS+LC"]
    assert cal["n"] == len(sub) == 40  # the tiny world's val split
    # the 50% threshold is the ceil(41 * 0.5) = 21st smallest mass at the truth
    assert cal["thresholds"]["adaptive"]["all"]["0.5"] == sorted(sub["mass_hit"])[20]
    # 95% of 40 images: ceil(41 * 0.95) = 39 <= 40 is still finite
    assert cal["thresholds"]["fixed"]["all"]["0.95"] == sorted(sub["area_hit"])[38]
    tempered = json.loads((tiny / "results" / "calibration" / "tempered.json").read_text())
    for base in ("geoest", "geoclip"):
        w = tempered[base]["weights"]
        assert set(w) == {"s2", "ls", "lc"} and all(v >= 0 for v in w.values())
        assert tempered[base]["mean_log_density"] >= tempered[base]["mean_log_density_product"] - 1e-9
    cap = json.loads((tiny / "results" / "calibration" / "geoclip_cap.json").read_text())
    assert set(cap["thresholds"]) == {"cap"}
    table = pd.read_csv(tiny / "results" / "tables" / "im2gps3k_coverage.csv")
    pick = (table["method"] == "GeoCLIP+LS+LC") & (table["mode"] == "adaptive") & (table["level"] == 0.9)
    row = table[pick]
    assert len(row) == 1 and row["n"].iloc[0] == 40
    assert 0.0 <= row["coverage_lo"].iloc[0] <= row["coverage"].iloc[0] <= row["coverage_hi"].iloc[0] <= 1.0
    temp = pd.read_csv(tiny / "results" / "tables" / "streetview_tempered.csv")
    assert len(temp) == 10  # 2 bases x 5 caps
    assert (tiny / "results" / "figures" / "coverage.pdf").read_bytes().startswith(b"%PDF")
    assert "Tempered vs plain product" in (tiny / "results" / "tables" / "im2gps3k_tempered.md").read_text()


def test_shift_artifacts(tiny: Path) -> None:
    rec = json.loads((tiny / "results" / "calibration" / "streetview" / "shift.json").read_text())
    assert rec["n_val"] == 40 and rec["n_test"] == 40
    for est in ("bbse", "em"):
        shares = rec["ls"][est]["share"]
        assert set(shares) == set(rec["ls"]["names"]) and math.isclose(sum(shares.values()), 1.0)
    assert len(rec["covariate"]["val"]) == 40 and len(rec["covariate"]["test"]) == 40
    table = pd.read_csv(tiny / "results" / "tables" / "streetview_coverage.csv")
    modes = set(table[table["method"] == "GeoCLIP+LS+LC"]["mode"])
    for mode in ("weighted LS", "weighted LS+LC", "weighted covariate", "weighted true mix (oracle)"):
        assert {f"fixed {mode}", f"adaptive {mode}"} <= modes
    md = (tiny / "results" / "tables" / "streetview_coverage.md").read_text()
    assert "## Estimated vs true mix of streetview" in md


def test_changing_a_testsets_predictions_reruns_its_shift_estimate(tiny: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cal = tiny / "results" / "calibration"
    before = {t: (cal / t / "shift.json").stat().st_mtime_ns for t in TESTSETS}
    old = json.loads((cal / "streetview" / "shift.json").read_text())
    # the LS predictor now ranks another bucket first for photo 0 (with certainty)
    pred = tiny / "results" / "predictions" / "streetview" / "ls.parquet"
    table = pq.read_table(pred)
    probs = table.column("probs").to_pylist()
    top = max(range(4), key=probs[0].__getitem__)
    probs[0] = [1.0 if j == (top + 1) % 4 else 0.0 for j in range(4)]
    col = table.schema.get_field_index("probs")
    pq.write_table(
        table.set_column(col, "probs", pa.array(probs, type=table.schema.field("probs").type)), pred
    )
    plan = planned_jobs(tiny, *TARGETS, "--cores", "2", "--configfile", str(TINY_CONFIG))
    assert plan == {"shift": 1, "coverage": 1, "coverage_table": 1, "figure_coverage": 1}
    run_snakemake(tiny, *TARGETS, "--cores", "2", "--configfile", str(TINY_CONFIG), timeout=600).check()
    assert (cal / "streetview" / "shift.json").stat().st_mtime_ns > before["streetview"]
    assert (cal / "im2gps3k" / "shift.json").stat().st_mtime_ns == before["im2gps3k"]
    new = json.loads((cal / "streetview" / "shift.json").read_text())
    first = str(table.column("image_id")[0])
    assert new["covariate"]["test"][first] != old["covariate"]["test"][first]  # the new outputs were read


def test_complete_run_leaves_nothing_to_do(tiny: Path) -> None:
    assert planned_jobs(tiny, *TARGETS, "--cores", "2", "--configfile", str(TINY_CONFIG)) == {}


def test_changing_coverage_levels_reruns_only_calibration_and_what_follows(tiny: Path) -> None:
    follows = {"calibrate": 1, "coverage": 2, "coverage_table": 2, "figure_coverage": 1}
    assert _plan(tiny, {"calibrate": {"coverages": [0.8, 0.9]}}) == follows
    # the calibration subset also changes the shift estimates' val photos
    assert _plan(tiny, {"calibrate": {"fraction": 0.5}}) == {**follows, "shift": 2}
    # the tempered fit feeds the val scores too
    assert _plan(tiny, {"calibrate": {"tempered_max_images": 20}}) == {
        "tempered_fit": 1,
        "conformal_scores": 1,
        "shift": 2,
        **follows,
    }
    # the shift settings rerun the estimates and the regions, not the thresholds
    shifted = {"shift": 2, "coverage": 2, "coverage_table": 2, "figure_coverage": 1}
    assert _plan(tiny, {"calibrate": {"shift_min_tuple": 3}}) == shifted
    assert _plan(tiny, {"calibrate": {"shift_bootstrap": 11}}) == shifted
    # the bootstrap is read by the tables only
    assert _plan(tiny, {"evaluate": {"bootstrap": 7}}) == {"coverage_table": 2, "figure_coverage": 1}


def test_search_coverage_region_contains_the_truth_as_calibrated(tiny: Path) -> None:
    import rasterio

    from geoens.core.grid import Grid

    regions = pd.read_parquet(tiny / "results" / "calibration" / "im2gps3k" / "regions.parquet")
    sel = regions[
        (regions["method"] == "GeoCLIP+LS+LC") & (regions["mode"] == "adaptive") & (regions["level"] == 0.9)
    ]
    scores = pd.read_parquet(tiny / "results" / "calibration" / "im2gps3k" / "scores.parquet")
    sc = scores[scores["method"] == "GeoCLIP+LS+LC"].set_index("image_id")
    thr = float(sel["threshold"].iloc[0])
    # an image well inside its region (the CLI re-predicts the photo alone: float32 batch noise)
    margin = sc.loc[sel["image_id"], "mass_hit"].to_numpy() < thr - 0.02
    row = sel[margin].iloc[0]
    folder = tiny / "results" / "demo" / "testsets" / "im2gps3k"
    meta = pd.read_csv(folder / "metadata.csv").set_index("IMG_ID")
    image = folder / "images" / row["image_id"]
    proc = subprocess.run(
        [sys.executable, "-m", "geoens.apps.cli", "search", str(image), "--coverage", "0.9", "--config",
         str(TINY_CONFIG), "--base", "geoclip", "--attributes", "ls,lc", "--out", "cov"],
        cwd=tiny, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "calibrated for 90% coverage on 40 validation images" in proc.stdout
    stem = tiny / "cov" / Path(row["image_id"]).stem
    for ext in ("geojson", "gpkg", "tif", "png"):
        assert Path(f"{stem}.{ext}").stat().st_size > 0, ext
    with rasterio.open(f"{stem}.tif") as ds:
        ranks = ds.read(1)
        assert ds.driver == "GTiff" and ds.crs.to_epsg() == 4326
    grid = Grid(*ranks.shape)
    truth = meta.loc[row["image_id"]]
    r, c = grid.pixel_of(truth["LAT"], truth["LON"])
    assert ranks[int(r), int(c)] > 0, "the truth lies outside the calibrated region"
    area = float((grid.pixel_areas() * (ranks > 0)).sum())
    printed = float(proc.stdout.split(" region ")[1].split(" km^2")[0])
    assert math.isclose(area, printed, rel_tol=1e-3)
    bad = subprocess.run(
        [sys.executable, "-m", "geoens.apps.cli", "search", str(image), "--coverage", "0.7", "--config",
         str(TINY_CONFIG), "--base", "geoclip", "--attributes", "ls,lc", "--out", "cov"],
        cwd=tiny, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert bad.returncode == 2 and "coverage 0.7 was not calibrated" in bad.stderr
