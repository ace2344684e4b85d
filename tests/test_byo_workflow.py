"""External models in the workflow (issue 21 item 2, DESIGN section 11): config checks, the own-model export,
and a real Snakemake run on tests/data/tiny.yaml where the run's own GeoEst. and GeoCLIP predictions, written
out in the contract, come back as external models (self-consistency) and a changed predictions file reruns
only its model's jobs.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from cluster.workflow import REPO, TINY_CONFIG, copy_workflow, file_mtimes, planned_jobs, run_snakemake
from geoens.core.config import ConfigError, check_inputs_exist, validate_config
from geoens.core.constants import EXPORT_DIR, GCD_RADIUS_KM, METHOD_VARIANTS
from geoens.core.grid import Grid
from geoens.data.predictions import read_weighted_points, write_point_predictions
from geoens.data.predspec import PointPredictions
from geoens.evaluation.calibrate import method_slugs
from geoens.evaluation.external_workflow import external_spec, top_k_points
from geoens.evaluation.methods import ordered_bases
from geoens.evaluation.testset import read_probs
from geoens.geo.partitions import read_partition_csv
from geoens.geo.rasters import read_label_raster
from geoens.reports.tables import with_external

TESTSETS = ("im2gps3k", "streetview")


def _tiny() -> dict:
    cfg: dict = yaml.safe_load((REPO / TINY_CONFIG).read_text())
    return cfg


def _ext(kind: str = "cells", **extra: object) -> dict:
    node = {"kind": kind, "predictions": {ts: f"preds/{ts}.parquet" for ts in TESTSETS}}
    node.update(extra)
    return node


# --- config ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("node", "match"),
    [
        (
            _ext(predictions={"im2gps3k": "a.parquet", "yfcc4k": "b.parquet"}),
            r"models\.external\.mine\.predictions\.yfcc4k': no test set 'yfcc4k'",
        ),
        (
            _ext(predictions={"val": "v.parquet"}),
            r"models\.external\.mine\.predictions': no predictions file",
        ),
        (_ext("point"), r"models\.external\.mine\.kappa': kappa: fit needs a val predictions file"),
        (_ext(units="grads"), r"models\.external\.mine\.units"),
        (_ext(kind="polygons"), r"models\.external\.mine\.kind"),
        (_ext(kappa=-1.0), r"models\.external\.mine\.kappa"),
    ],
)
def test_bad_external_model_names_the_key(node: dict, match: str) -> None:
    cfg = _tiny()
    cfg["models"] = {"external": {"mine": node}}
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)


def test_a_built_in_name_is_not_an_external_model() -> None:
    cfg = _tiny()
    cfg["models"] = {"external": {"geoest": _ext()}}
    with pytest.raises(ConfigError, match=r"models\.external"):
        validate_config(cfg)


def test_point_model_with_val_or_given_kappa_is_valid() -> None:
    cfg = _tiny()
    with_val = _ext("point")
    with_val["predictions"]["val"] = "preds/val.parquet"
    cfg["models"] = {"external": {"a": with_val, "b": _ext("point", kappa=50.0)}}
    out = validate_config(cfg)
    assert out["models"]["external"]["a"]["kappa"] == "fit"
    assert external_spec("a", out["models"]["external"]["a"]).kappa is None  # fitted on val
    assert external_spec("b", out["models"]["external"]["b"]).kappa == 50.0
    assert out["models"]["external"]["a"]["units"] == "degrees"


def test_missing_predictions_file_is_named_but_the_runs_own_export_is_not(tmp_path: Path) -> None:
    cfg = _tiny()
    node = _ext(
        predictions={"im2gps3k": "preds/im2gps3k.parquet", "streetview": "results/export/sv/x.parquet"}
    )
    cfg["models"] = {"external": {"mine": node}}
    cfg = validate_config(cfg)
    with pytest.raises(ConfigError, match=r"models\.external\.mine\.predictions\.im2gps3k = preds/im2gps3k"):
        check_inputs_exist(cfg, base=tmp_path)
    (tmp_path / "preds").mkdir()
    (tmp_path / "preds" / "im2gps3k.parquet").write_bytes(b"x")
    check_inputs_exist(cfg, base=tmp_path)  # results/export/...: written by rule export_predictions


# --- the export's gallery form and the table order --------------------------------------------------------
def test_top_k_points_are_the_k_most_probable_classes_renormalised(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(9), size=5).astype(np.float32)
    lat, lon = rng.uniform(-80, 80, 9), rng.uniform(-170, 170, 9)
    pts = top_k_points([f"i{k}" for k in range(5)], probs, lat, lon, 3)
    for row in range(5):
        sl = slice(pts.offsets[row], pts.offsets[row + 1])
        best = sorted(range(9), key=lambda j: -probs[row, j])[:3]
        assert list(pts.lat[sl]) == list(lat[best]) and list(pts.lon[sl]) == list(lon[best])
        expect = probs[row, best].astype(np.float64) / probs[row, best].astype(np.float64).sum()
        np.testing.assert_allclose(pts.weight[sl], expect, rtol=1e-12)
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_k_points(["a"], probs[:1], lat, lon, 0)


def test_bases_are_ordered_built_in_first_then_external_by_name() -> None:
    assert ordered_bases(["zeta", "geoclip", "alpha", "geoest"]) == ["geoest", "geoclip", "alpha", "zeta"]


def test_with_external_rejects_rows_of_another_model(tmp_path: Path) -> None:
    df = pd.DataFrame({"image_id": ["a"], "base": ["geoest"], "method": ["GeoEst."]})
    path = tmp_path / "external_mine.parquet"
    df.to_parquet(path)
    with pytest.raises(ValueError, match=r"external_mine\.parquet: rows of base model\(s\) \['geoest'\]"):
        with_external(df, {"mine": path})


# --- a real run: the run's own predictions fed back as external models ----------------------------------
TARGETS = [
    *(f"results/tables/{ts}_original.csv" for ts in TESTSETS),
    "results/figures/rva.pdf",
    "results/tables/im2gps3k_coverage.csv",
]
#: The run's own predictions in the contract (rule export_predictions), fed back under these names.
SELF = {
    "geoest_cells": ("cells", "geoest.parquet"),
    "geoclip_cells": ("cells", "geoclip.parquet"),
    "geoclip_points": ("points", "geoclip_points.parquet"),
}
BUILT_IN = {
    "geoest_cells": "geoest",
    "geoclip_cells": "geoclip",
    "geoclip_points": "geoclip",
    "geoest_own_partition": "geoest",
}
#: GeoEst.'s export as a model with a partition of its own: the run's fine CSV, rasterised again into atoms.
OWN_PARTITION = {
    "kind": "cells",
    "partition": "results/partitions/fine.csv",
    "predictions": {ts: f"results/export/{ts}/geoest.parquet" for ts in TESTSETS},
}


def _self_models() -> dict:
    return {
        name: {"kind": kind, "predictions": {ts: f"results/export/{ts}/{file}" for ts in TESTSETS}}
        for name, (kind, file) in SELF.items()
    }


class ByoRun:
    """A completed tiny run with external models, in a temporary copy of the repository."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.config = _tiny()
        self.config["models"] = {"external": _self_models()}

    def write_config(self, external: dict | None = None) -> Path:
        cfg = copy.deepcopy(self.config)
        cfg["models"]["external"].update(external or {})
        path = self.workdir / "tests" / "data" / "byo.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def args(self, external: dict | None = None, *targets: str) -> list[str]:
        # targets first: --configfile takes several values
        return [*TARGETS, *targets, "--cores", "2", "--configfile", str(self.write_config(external))]

    def per_image(self, testset: str, name: str | None = None) -> pd.DataFrame:
        leaf = "per_image.parquet" if name is None else f"external_{name}.parquet"
        return pd.read_parquet(self.workdir / "results" / "eval" / testset / leaf)


def _write_point_model(wd: Path) -> dict:
    """A ``point`` model made from the exported GeoEst. cells: each image's most probable cell's mean
    location, on both test sets and val (its kappa is fitted there)."""
    fine = read_partition_csv(wd / "results" / "partitions" / "fine.csv")
    files = {}
    for ds in (*TESTSETS, "val"):
        ids, probs = read_probs(wd / EXPORT_DIR / ds / "geoest.parquet")
        top = probs.argmax(axis=1)
        files[ds] = f"user/point_{ds}.parquet"
        lat, lon = fine.lat_mean[top].astype(np.float64), fine.lon_mean[top].astype(np.float64)
        write_point_predictions(wd / files[ds], PointPredictions(ids, lat, lon))
    return {"kind": "point", "predictions": files}


@pytest.fixture(scope="module")
def byo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ByoRun]:
    if not (REPO / TINY_CONFIG).exists():
        pytest.skip(f"{TINY_CONFIG} not written yet")
    run = ByoRun(copy_workflow(tmp_path_factory.mktemp("byo") / "wf"))
    run_snakemake(run.workdir, *run.args(None, f"{EXPORT_DIR}/val/geoest.parquet"), timeout=1800).check()
    run.config["models"]["external"]["geoest_point"] = _write_point_model(run.workdir)
    run.config["models"]["external"]["geoest_own_partition"] = OWN_PARTITION
    run_snakemake(run.workdir, *run.args(), timeout=1800).check()
    yield run


def _by_suffix(df: pd.DataFrame, base_display: str) -> pd.DataFrame:
    """Rows keyed by (method suffix, image): the method name with the base's display name cut off."""
    out = df.copy()
    out["suffix"] = [m[len(base_display) :] for m in out["method"]]
    return out.set_index(["suffix", "image_id"]).sort_index()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["geoest_cells", "geoclip_cells", "geoest_own_partition"])
def test_own_cells_fed_back_give_the_same_areas(byo_run: ByoRun, name: str) -> None:
    built = {"geoest": "GeoEst.", "geoclip": "GeoCLIP"}[BUILT_IN[name]]
    for ts in TESTSETS:
        own = byo_run.per_image(ts)
        ref = _by_suffix(own[own["base"] == BUILT_IN[name]], built)
        ext = _by_suffix(byo_run.per_image(ts, name), name)
        assert set(ext["base"]) == {name}
        assert list(ext.index) == list(ref.index)  # every method, every image
        assert {s for s, _ in ext.index} == {s for s, _, _ in METHOD_VARIANTS} | {" (cell)"}
        np.testing.assert_allclose(ext["area_km2"], ref["area_km2"], rtol=1e-9, equal_nan=True)
        for col in ("zero_prob", "ls_bucket"):
            assert (ext[col] == ref[col]).all(), col
        for col in ("top1_lat", "top1_lon", "gcd_km"):
            np.testing.assert_allclose(ext[col], ref[col], rtol=1e-9, atol=1e-9, equal_nan=True)


@pytest.mark.slow
def test_own_cells_fed_back_give_the_same_table_rows(byo_run: ByoRun) -> None:
    for ts in TESTSETS:
        table = pd.read_csv(byo_run.workdir / "results" / "tables" / f"{ts}_original.csv")
        external = sorted([*SELF, "geoest_point", "geoest_own_partition"])
        assert list(dict.fromkeys(table["base"])) == ["geoest", "geoclip", *external]
        numbers = [c for c in table.columns if c not in ("base", "method", "label")]
        for name, built in (
            ("geoest_cells", "geoest"),
            ("geoclip_cells", "geoclip"),
            ("geoest_own_partition", "geoest"),
        ):
            a = table[table["base"] == built][numbers].reset_index(drop=True)
            b = table[table["base"] == name][numbers].reset_index(drop=True)
            pd.testing.assert_frame_equal(a, b, rtol=1e-9)
        md = (byo_run.workdir / "results" / "tables" / f"{ts}_original.md").read_text()
        assert "| geoclip_points |" in md and "| geoest_point (distance) |" in md


def _points_brute_force(wd: Path, ts: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The exported top-k points binned by hand: each point's weight to the S2 mask label of its pixel.

    Returns ``(ids, cells probabilities, whether each image's points all lie in their own cell's pixels)``.
    """
    fine = read_partition_csv(wd / "results" / "partitions" / "fine.csv")
    labels, _ = read_label_raster(wd / "results" / "masks" / "s2_fine.tif")
    grid = Grid(labels.shape[0], labels.shape[1])
    pts = read_weighted_points(wd / "results" / "export" / ts / "geoclip_points.parquet", external_spec("p", {
        "kind": "points", "predictions": {}}))  # fmt: skip
    own = {(la, lo): c for c, (la, lo) in enumerate(zip(fine.lat_mean, fine.lon_mean, strict=True))}
    probs = np.zeros((len(pts.ids), fine.lat_mean.size))
    in_own = np.ones(len(pts.ids), bool)
    for i in range(len(pts.ids)):
        for j in range(pts.offsets[i], pts.offsets[i + 1]):
            r, c = grid.pixel_of(pts.lat[j], pts.lon[j])
            label = int(labels[int(r), int(c)])
            in_own[i] &= label == own[(pts.lat[j], pts.lon[j])]
            if label >= 0:
                probs[i, label] += pts.weight[j]
    return pts.ids, probs, in_own


@pytest.mark.slow
def test_geoclip_points_form_against_its_cells_form(byo_run: ByoRun) -> None:
    """GeoCLIP's top-k gallery points are binned into the cells of the S2 mask pixels holding them (checked
    point by point). Where each point lies in its own cell's pixels they are the k most probable cells with
    the rest set to 0, so the area of the base model alone can only shrink, or the truth's cell was not among
    them (a zero-probability miss; a truth in no cell is one in both forms). The recall of both forms is
    printed (`pytest -s`) for the report."""
    wd = byo_run.workdir
    for ts in TESTSETS:
        ids, expect, in_own = _points_brute_force(wd, ts)
        got_ids, got = read_probs(wd / "results" / "external" / "geoclip_points" / f"{ts}.parquet")
        assert got_ids == ids
        np.testing.assert_allclose(got, expect, atol=1e-6)
        cells = _by_suffix(byo_run.per_image(ts, "geoclip_cells"), "geoclip_cells").loc[""]
        pts = _by_suffix(byo_run.per_image(ts, "geoclip_points"), "geoclip_points").loc[""]
        assert list(pts.index) == list(cells.index)
        # a truth in no fine cell's pixels has P = 0 in both forms
        assert (pts["zero_prob"] | ~cells["zero_prob"]).all()
        own = pd.Series(in_own, index=ids).loc[pts.index].to_numpy()
        hit = own & ~pts["zero_prob"].to_numpy()  # none on the tiny grid: the binning check above carries
        assert (pts["area_km2"].to_numpy()[hit] <= cells["area_km2"].to_numpy()[hit] * (1 + 1e-9)).all()
        table = pd.read_csv(wd / "results" / "tables" / f"{ts}_original.csv")
        rva = [c for c in table.columns if c.startswith("rva_") and c.endswith("km")]
        rows = table.set_index("method").loc[["geoclip_cells", "geoclip_points"], rva]
        print(f"\n{ts}: GeoCLIP cells vs top-k points (RvA %, base model alone)\n{rows.round(1)}")
        print(
            f"{ts}: zero-probability misses of the points form: {int(pts['zero_prob'].sum())} of {len(pts)}"
        )


@pytest.mark.slow
def test_point_model_kappa_density_and_distance_rows(byo_run: ByoRun) -> None:
    """kappa fitted on every val image; the vMF density is ensembled like any base (every method); the exact
    distance-ranking row has the cap of radius its error as area, so its RvA at a cap area equals its GCD
    accuracy at that radius in the table (DESIGN 11)."""
    wd = byo_run.workdir
    fit = json.loads((wd / "results" / "external" / "geoest_point" / "kappa.json").read_text())
    assert fit["kappa"] > 0 and fit["n_fit"] == fit["n_val"] == fit["n_predicted"] > 0
    for ts in TESTSETS:
        df = byo_run.per_image(ts, "geoest_point")
        methods = [f"geoest_point{s}" for s, _, _ in METHOD_VARIANTS]
        # no own top-1 row: a vMF density's argmax cell is not the model's answer; the distance row is
        assert list(dict.fromkeys(df["method"])) == [*methods, "geoest_point (distance)"]
        dist = df[df["method"] == "geoest_point (distance)"]
        cap = 2 * np.pi * GCD_RADIUS_KM**2 * (1 - np.cos(dist["gcd_km"].to_numpy() / GCD_RADIUS_KM))
        np.testing.assert_allclose(dist["area_km2"], cap, rtol=1e-9)
        own = byo_run.per_image(ts)
        lsb = own.drop_duplicates("image_id").set_index("image_id")["ls_bucket"]
        assert (dist.set_index("image_id")["ls_bucket"] == lsb.loc[dist["image_id"]]).all()
        table = pd.read_csv(wd / "results" / "tables" / f"{ts}_original.csv").set_index("method")
        row = table.loc["geoest_point (distance)"]
        for r in ("1", "25", "200", "750", "2500"):
            assert row[f"rva_{r}km"] == row[f"gcd_{r}km"], r


@pytest.mark.slow
def test_a_model_with_val_is_calibrated_like_the_built_in_ones(byo_run: ByoRun) -> None:
    wd = byo_run.workdir
    for slug in method_slugs(["geoest_point"]):
        rec = json.loads((wd / "results" / "calibration" / f"{slug}.json").read_text())
        assert rec["base"] == "geoest_point" and rec["slug"] == slug and rec["n"] > 0
    cov = pd.read_csv(wd / "results" / "tables" / "im2gps3k_coverage.csv")
    # only the model with a val file is calibrated
    assert list(dict.fromkeys(cov["base"])) == ["geoest", "geoclip", "geoest_point"]
    tempered = cov[cov["method"] == "geoest_point+LS+LC (tempered)"]
    assert set(tempered["mode"]) == {"fixed", "adaptive", "fixed per bucket", "adaptive per bucket"}


@pytest.mark.slow
def test_changing_one_predictions_file_reruns_only_that_model(byo_run: ByoRun) -> None:
    wd = byo_run.workdir
    user = {}
    for ts in TESTSETS:
        dest = wd / "user" / f"{ts}.parquet"
        dest.parent.mkdir(exist_ok=True)
        shutil.copy2(wd / "results" / "export" / ts / "geoest.parquet", dest)
        user[ts] = f"user/{ts}.parquet"
    mine = {"mine": {"kind": "cells", "predictions": user}}
    assert planned_jobs(wd, *byo_run.args(mine)) == {
        "external_cells": 2, "evaluate_external": 2, "tables": 2, "figure_rva": 1,
    }  # fmt: skip
    run_snakemake(wd, *byo_run.args(mine)).check()
    assert planned_jobs(wd, *byo_run.args(mine)) == {}
    before = file_mtimes(wd)
    # a changed file: the same predictions with the rows in reverse order, newer than every output
    changed = pq.read_table(wd / user["im2gps3k"])
    pq.write_table(changed.take(list(range(changed.num_rows - 1, -1, -1))), wd / user["im2gps3k"])
    later = max(p.stat().st_mtime for p in (wd / "results" / "eval").rglob("*.parquet")) + 5
    os.utime(wd / user["im2gps3k"], (later, later))
    plan = planned_jobs(wd, *byo_run.args(mine))
    assert plan == {"external_cells": 1, "evaluate_external": 1, "tables": 1, "figure_rva": 1}, plan
    run_snakemake(wd, *byo_run.args(mine)).check()
    rewritten = {p for p, t in file_mtimes(wd).items() if before.get(p) != t}
    assert rewritten == {
        "results/external/mine/im2gps3k.parquet",
        "results/eval/im2gps3k/external_mine.parquet",
        *(f"results/tables/im2gps3k_original.{e}" for e in ("csv", "md", "tex")),
        *(f"results/tables/im2gps3k_balanced.{e}" for e in ("csv", "md", "tex")),
        "results/figures/rva.pdf",
        "results/figures/rva.png",
    }
    # the model removed again: its jobs go, nothing else reruns but the tables and figure that listed it
    assert planned_jobs(wd, *byo_run.args()) == {"tables": 2, "figure_rva": 1}


def test_with_external_needs_every_image_and_leaves_out_extra_ones(tmp_path: Path) -> None:
    own = pd.DataFrame({"image_id": ["a", "b"], "base": "geoest", "method": "GeoEst."})
    path = tmp_path / "external_mine.parquet"
    pd.DataFrame({"image_id": ["a", "z"], "base": "mine", "method": "mine"}).to_parquet(path)
    with pytest.raises(ValueError, match=r"1 of 2 test images have no prediction of 'mine' \(e\.g\. \['b'\]"):
        with_external(own, {"mine": path})
    pd.DataFrame({"image_id": ["b", "a", "z"], "base": "mine", "method": "mine"}).to_parquet(path)
    out = with_external(own, {"mine": path})
    assert list(out["image_id"]) == ["a", "b", "b", "a"]
    assert list(out["base"]) == ["geoest", "geoest", "mine", "mine"]
