"""End to end: the whole workflow on the tiny demo world, run by Snakemake in a temporary copy.

One complete run per module (fixture ``tiny``); a second, independent run checks determinism. Error
paths check that a bad config or a missing input stops the run before any job, naming the key.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from cluster.workflow import REPO, TINY_CONFIG, copy_workflow, run_snakemake

pytestmark = pytest.mark.slow

TESTSETS = ("im2gps3k", "streetview")


def _run_all(workdir: Path) -> None:
    run_snakemake(workdir, "all", "--cores", "2", "--configfile", str(TINY_CONFIG), timeout=1800).check()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("e2e") / "wf")
    _run_all(workdir)
    return workdir


def test_all_outputs_are_made(tiny: Path) -> None:
    for name in ("rva.pdf", "rva.png", "buckets.pdf", *(f"probmap_{t}.png" for t in TESTSETS)):
        path = tiny / "results" / "figures" / name
        assert path.stat().st_size > 1000, name
    assert (tiny / "results" / "figures" / "rva.pdf").read_bytes().startswith(b"%PDF")
    for t in TESTSETS:
        for kind in ("original", "balanced"):
            for ext in ("csv", "md", "tex"):
                assert (tiny / "results" / "tables" / f"{t}_{kind}.{ext}").stat().st_size > 0
    # every long stage logged, every rule was benchmarked
    assert any((tiny / "logs" / "train").glob("train_*.log"))
    assert any((tiny / "benchmarks" / "masks").glob("*.tsv"))
    # nothing half-written is left behind
    assert not list((tiny / "results").rglob(".*.tmp*"))


def test_tables_have_the_papers_layout_and_sane_values(tiny: Path) -> None:
    table = pd.read_csv(tiny / "results" / "tables" / "im2gps3k_original.csv")
    methods = set(table["method"])
    for base in ("GeoEst.", "GeoCLIP"):
        for suffix in ("", "+LS", "+LS urban prior", "+LC", "+LS+LC"):
            assert base + suffix in methods
    rva = ["rva_1km", "rva_25km", "rva_200km", "rva_750km", "rva_2500km"]
    ens = table[~table["method"].str.endswith("(cell)")]
    assert ((ens[rva] >= 0) & (ens[rva] <= 100)).all().all()
    # recall can only grow with the area budget
    assert (ens[rva].diff(axis=1).iloc[:, 1:] >= 0).all().all()
    # the ~470 km demo pixels cannot localise within 1 km
    assert (ens["rva_1km"] == 0).all()
    assert (table["n"] == 40).all()


def test_per_image_results_cover_every_test_image(tiny: Path) -> None:
    per_image = pd.read_parquet(tiny / "results" / "eval" / "im2gps3k" / "per_image.parquet")
    meta = pd.read_csv(tiny / "results" / "demo" / "testsets" / "im2gps3k" / "metadata.csv")
    ens = per_image[~per_image["method"].str.endswith("(cell)")]
    assert ens.groupby("method")["image_id"].nunique().eq(len(meta)).all()
    sphere = 4 * 3.141592653589793 * 6371.0088**2
    assert (ens["area_km2"] > 0).all() and (ens["area_km2"] <= sphere * (1 + 1e-9)).all()


def test_same_config_and_seed_give_the_same_tables(tiny: Path, tmp_path: Path) -> None:
    other = copy_workflow(tmp_path / "wf2")
    _run_all(other)
    for t in TESTSETS:
        a = pd.read_parquet(tiny / "results" / "eval" / t / "per_image.parquet")
        b = pd.read_parquet(other / "results" / "eval" / t / "per_image.parquet")
        pd.testing.assert_frame_equal(a, b)
        for kind in ("original", "balanced"):
            name = f"{t}_{kind}.csv"
            assert (tiny / "results" / "tables" / name).read_bytes() == (
                other / "results" / "tables" / name
            ).read_bytes()


def test_report_has_the_figures_with_captions(tiny: Path) -> None:
    run_snakemake(
        tiny, "all", "--cores", "1", "--configfile", str(TINY_CONFIG), "--report", "report.html"
    ).check()
    html = (tiny / "report.html").read_text(errors="replace")
    assert "rva.pdf" in html and "buckets.pdf" in html


def test_bad_config_stops_before_any_job(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    cfg = yaml.safe_load((REPO / TINY_CONFIG).read_text())
    cfg["train"]["models"]["ls"]["epochs"] = "many"
    (workdir / "bad.yaml").write_text(yaml.safe_dump(cfg))
    run = run_snakemake(workdir, "all", "--cores", "1", "--configfile", "bad.yaml")
    assert run.returncode != 0
    assert "epochs" in run.output and "many" in run.output
    assert not (workdir / "results").exists()


def test_missing_real_input_is_named_before_any_job(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    cfg = yaml.safe_load((REPO / TINY_CONFIG).read_text())
    cfg["demo"]["enabled"] = False
    cfg["inputs"]["landscan"] = "data/landscan-missing.tif"
    (workdir / "real.yaml").write_text(yaml.safe_dump(cfg))
    run = run_snakemake(workdir, "all", "--cores", "1", "--configfile", "real.yaml")
    assert run.returncode != 0
    assert "inputs.landscan = data/landscan-missing.tif" in run.output
    assert not (workdir / "results").exists()


def test_search_command_proposes_regions_within_budget_that_contain_the_truth(tiny: Path) -> None:
    import json
    import subprocess
    import sys

    import numpy as np
    import rasterio

    from geoens.core.grid import Grid

    meta = pd.read_csv(tiny / "results" / "demo" / "testsets" / "im2gps3k" / "metadata.csv")
    per_image = pd.read_parquet(tiny / "results" / "eval" / "im2gps3k" / "per_image.parquet")
    rows = per_image[(per_image["method"] == "GeoCLIP+LS+LC") & ~per_image["zero_prob"]]
    row = rows.sort_values("area_km2").iloc[len(rows) // 2]
    truth = meta.set_index("IMG_ID").loc[row["image_id"]]
    image = tiny / "results" / "demo" / "testsets" / "im2gps3k" / "images" / row["image_id"]
    # The image's RvA area as the budget: the truth must be inside (the CLI re-predicts the photo alone, so
    # allow float32 batch-size noise in the probabilities).
    budget = float(row["area_km2"]) * (1 + 1e-6)
    proc = subprocess.run(
        [sys.executable, "-m", "geoens.apps.cli", "search", str(image), "--budget-km2", repr(budget),
         "--config", str(TINY_CONFIG), "--base", "geoclip", "--attributes", "ls,lc", "--out", "search"],
        cwd=tiny, capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    stem = Path(row["image_id"]).stem
    features = json.loads((tiny / "search" / f"{stem}.geojson").read_text())["features"]
    assert features
    with rasterio.open(tiny / "search" / f"{stem}.tif") as ds:
        ranks = ds.read(1)
    grid = Grid(*ranks.shape)
    r, c = grid.pixel_of(truth["LAT"], truth["LON"])
    assert ranks[int(r), int(c)] > 0, "the ground truth lies outside the proposed regions"
    selected = float((grid.pixel_areas() * (ranks > 0)).sum())
    assert selected <= budget * (1 + 1e-9)
    assert np.isclose(selected, row["area_km2"], rtol=1e-6)


def test_search_command_rejects_missing_image(tiny: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "geoens.apps.cli", "search", "nope.jpg", "--budget-km2", "1e6",
         "--config", str(TINY_CONFIG)],
        cwd=tiny, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "image(s) not found: nope.jpg" in proc.stderr


def test_search_command_reports_each_bad_photo_budget_or_path_in_one_line(tiny: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    images = tiny / "results" / "demo" / "testsets" / "im2gps3k" / "images"
    good = str(sorted(images.glob("*.jpg"))[0])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(Path(good).read_bytes()[:40])  # a photo cut short: cannot be decoded
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def search(*args: str, config: Path = TINY_CONFIG) -> subprocess.CompletedProcess[str]:
        cmd = [
            sys.executable,
            "-m",
            "geoens.apps.cli",
            "search",
            *args,
            "--config",
            str(config),
            "--out",
            str(out),
        ]
        return subprocess.run(cmd, cwd=tiny, capture_output=True, text=True, env=env)

    budget = ("--budget-km2", "1e6")
    cases = {
        # name: (arguments, expected exit status, the one line on stderr)
        "undecodable": ((str(bad), *budget), 1, f"{bad}: cannot decode the photo; skipped"),
        "negative budget": ((good, "--budget-km2", "-5"), 2, "--budget-km2 must be a positive area"),
        "nan budget": ((good, "--budget-km2", "nan"), 2, "--budget-km2 must be a positive area"),
        "no results": ((good, *budget, "--results", "nowhere"), 2, "nowhere/atoms/atoms.parquet is missing"),
        "bad attribute": ((good, *budget, "--attributes", "ls,xx"), 2, "unknown families ['xx']"),
        "a folder": ((str(images), *budget), 2, "is a directory"),
    }
    for name, (args, status, line) in cases.items():
        proc = search(*args)
        assert proc.returncode == status, (name, proc.stderr)
        assert line in proc.stderr, (name, proc.stderr)
        assert "Traceback" not in proc.stderr, (name, proc.stderr)
    # bad photos among good ones: the good one is searched, each bad one named, exit 0
    proc = search(str(bad), good, "missing.jpg", *budget)
    assert proc.returncode == 0, proc.stderr
    assert f"{bad}: cannot decode the photo; skipped" in proc.stderr
    assert "missing.jpg: no such photo file; skipped" in proc.stderr
    assert (out / f"{Path(good).stem}.geojson").stat().st_size > 0
    # a config that is not valid
    (tmp_path / "bad.yaml").write_text("grid: {height: tall}\n")
    proc = search(good, *budget, config=tmp_path / "bad.yaml")
    assert proc.returncode == 2 and "bad.yaml" in proc.stderr and "Traceback" not in proc.stderr
