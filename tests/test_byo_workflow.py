"""External models in the workflow (issue 21 item 2, DESIGN section 11): config checks, the own-model export,
and a real Snakemake run on tests/data/tiny.yaml where the run's own GeoEst. and GeoCLIP predictions, written
out in the contract, come back as external models (self-consistency) and a changed predictions file reruns
only its model's jobs.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cluster.workflow import REPO, TINY_CONFIG, copy_workflow, file_mtimes, planned_jobs, run_snakemake
from geoens.core.config import ConfigError, check_inputs_exist, validate_config
from geoens.evaluation.external_workflow import external_spec, top_k_points
from geoens.evaluation.methods import METHOD_VARIANTS, ordered_bases
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
TARGETS = [*(f"results/tables/{ts}_original.csv" for ts in TESTSETS), "results/figures/rva.pdf"]
#: The run's own predictions in the contract (rule export_predictions), fed back under these names.
SELF = {
    "geoest_cells": ("cells", "geoest.parquet"),
    "geoclip_cells": ("cells", "geoclip.parquet"),
    "geoclip_points": ("points", "geoclip_points.parquet"),
}
BUILT_IN = {"geoest_cells": "geoest", "geoclip_cells": "geoclip", "geoclip_points": "geoclip"}


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

    def args(self, external: dict | None = None) -> list[str]:
        return [*TARGETS, "--cores", "2", "--configfile", str(self.write_config(external))]

    def per_image(self, testset: str, name: str | None = None) -> pd.DataFrame:
        leaf = "per_image.parquet" if name is None else f"external_{name}.parquet"
        return pd.read_parquet(self.workdir / "results" / "eval" / testset / leaf)


@pytest.fixture(scope="module")
def byo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ByoRun]:
    if not (REPO / TINY_CONFIG).exists():
        pytest.skip(f"{TINY_CONFIG} not written yet")
    run = ByoRun(copy_workflow(tmp_path_factory.mktemp("byo") / "wf"))
    run_snakemake(run.workdir, *run.args(), timeout=1800).check()
    yield run


def _by_suffix(df: pd.DataFrame, base_display: str) -> pd.DataFrame:
    """Rows keyed by (method suffix, image): the method name with the base's display name cut off."""
    out = df.copy()
    out["suffix"] = [m[len(base_display) :] for m in out["method"]]
    return out.set_index(["suffix", "image_id"]).sort_index()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["geoest_cells", "geoclip_cells"])
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
        assert list(dict.fromkeys(table["base"])) == ["geoest", "geoclip", *sorted(SELF)]
        numbers = [c for c in table.columns if c not in ("base", "method", "label")]
        for name, built in (("geoest_cells", "geoest"), ("geoclip_cells", "geoclip")):
            a = table[table["base"] == built][numbers].reset_index(drop=True)
            b = table[table["base"] == name][numbers].reset_index(drop=True)
            pd.testing.assert_frame_equal(a, b, rtol=1e-9)
        md = (byo_run.workdir / "results" / "tables" / f"{ts}_original.md").read_text()
        assert "geoclip_points+LS+LC" in md


@pytest.mark.slow
def test_geoclip_points_form_against_its_cells_form(byo_run: ByoRun) -> None:
    """The top-k points put the k most probable cells' mass back: where the truth is among them the area of
    the base model alone can only shrink (the other cells drop to 0); elsewhere it is a zero-probability miss.
    The difference in recall is printed (`pytest -s`) for the report."""
    for ts in TESTSETS:
        cells = _by_suffix(byo_run.per_image(ts, "geoclip_cells"), "geoclip_cells").loc[""]
        pts = _by_suffix(byo_run.per_image(ts, "geoclip_points"), "geoclip_points").loc[""]
        assert list(pts.index) == list(cells.index)
        hit = ~pts["zero_prob"].to_numpy()
        assert (pts["area_km2"].to_numpy()[hit] <= cells["area_km2"].to_numpy()[hit] * (1 + 1e-9)).all()
        assert hit.any() and not cells["zero_prob"].any()
        table = pd.read_csv(byo_run.workdir / "results" / "tables" / f"{ts}_original.csv")
        rva = [c for c in table.columns if c.startswith("rva_") and c.endswith("km")]
        rows = table.set_index("method").loc[["geoclip_cells", "geoclip_points"], rva]
        print(f"\n{ts}: GeoCLIP cells vs top-k points (RvA %, base model alone)\n{(100 * rows).round(1)}")
        print(f"{ts}: top-k misses (truth outside the k cells): {int((~hit).sum())} of {hit.size}")


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
    later = (wd / user["im2gps3k"]).stat().st_mtime + 5
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
