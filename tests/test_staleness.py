"""Reruns of only the stale stages, on the real workflow with tests/data/tiny.yaml in a temporary copy.

The complete run happens once per module (fixture ``tiny_run``). Each test then changes one thing (a
config parameter of one stage, or an input raster's mtime) and checks that ``snakemake --dry-run``
plans exactly that stage and its descendants; one change is also carried out, and the files of the
untouched stages must keep their modification times. Every test restores what it changed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import rasterio
import yaml

from cluster.workflow import (
    REPO,
    TINY_CONFIG,
    copy_workflow,
    file_mtimes,
    planned_jobs,
    run_snakemake,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (REPO / TINY_CONFIG).exists(), reason=f"{TINY_CONFIG} not written yet"),
]

TARGET = "results/figures/rva.pdf"
TESTSETS = 2  # im2gps3k, streetview in tiny.yaml
BASE_MODELS = 3  # ls, lc, geoest (train.smk); geoclip has its own rules


@dataclass
class TinyRun:
    """A completed tiny workflow in a temporary copy of the repository."""

    workdir: Path
    config: dict

    def args(self, config_path: Path) -> list[str]:
        """Command-line arguments for a run of TARGET with the given config file."""
        return [TARGET, "--cores", "2", "--configfile", str(config_path)]

    def plan(self, changes: dict | None = None, *extra: str) -> dict[str, int]:
        """``{rule: jobs}`` a dry run would execute, with ``changes`` merged into the tiny config."""
        return planned_jobs(self.workdir, *self.args(self.write_config(changes)), *extra)

    def write_config(self, changes: dict | None) -> Path:
        """Write the tiny config with ``changes`` (nested dict) merged in; return its path."""
        cfg = copy.deepcopy(self.config)
        _merge(cfg, changes or {})
        path = self.workdir / "tests" / "data" / "changed.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path


def _merge(base: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyRun]:
    workdir = copy_workflow(tmp_path_factory.mktemp("stale") / "wf")
    config = yaml.safe_load((workdir / TINY_CONFIG).read_text())
    run = TinyRun(workdir, config)
    run_snakemake(workdir, *run.args(workdir / TINY_CONFIG), timeout=1800).check()
    assert (workdir / TARGET).stat().st_size > 0
    yield run


def test_complete_run_leaves_nothing_to_do(tiny_run: TinyRun) -> None:
    assert tiny_run.plan() == {}


def test_figure_parameter_reruns_only_the_figure(tiny_run: TinyRun) -> None:
    # evaluate.bootstrap is read by the figure (and table) rules only: the per-image evaluation upstream
    # (rule evaluate, the expensive Algorithms 1-3) must not rerun
    bootstrap = tiny_run.config["evaluate"]["bootstrap"]
    changes = {"evaluate": {"bootstrap": bootstrap + 7}}
    plan = tiny_run.plan(changes)
    assert plan == {"figure_rva": 1}, (
        f"{plan}: rule evaluate must list only the evaluate keys it reads (batch_size, chunk_elements) "
        "in its params, not the whole params_of('evaluate')"
    )

    before = file_mtimes(tiny_run.workdir)
    rerun = run_snakemake(tiny_run.workdir, *tiny_run.args(tiny_run.write_config(changes))).check()
    after = file_mtimes(tiny_run.workdir)
    rewritten = {path for path in before if after.get(path) != before[path]}
    assert rewritten == {"results/figures/rva.pdf", "results/figures/rva.png"}, rerun.output[-3000:]
    # with the changed config in place nothing is stale; going back makes the figure stale again
    assert tiny_run.plan(changes) == {}
    assert tiny_run.plan() == {"figure_rva": 1}
    run_snakemake(tiny_run.workdir, *tiny_run.args(tiny_run.write_config(None))).check()
    assert tiny_run.plan() == {}


def test_evaluation_parameter_reruns_evaluation_and_the_figure(tiny_run: TinyRun) -> None:
    batch_size = tiny_run.config["evaluate"].get("batch_size", 2048)
    plan = tiny_run.plan({"evaluate": {"batch_size": batch_size + 1}})
    assert plan == {"evaluate": TESTSETS, "figure_rva": 1}


def test_training_parameter_reruns_that_model_and_its_descendants(tiny_run: TinyRun) -> None:
    epochs = tiny_run.config["train"]["models"]["lc"]["epochs"]
    plan = tiny_run.plan({"train": {"models": {"lc": {"epochs": epochs + 1}}}})
    # one model retrained, its predictions on each test set, then evaluation: not the other models,
    # not GeoCLIP, not labels or masks
    assert plan == {"train": 1, "predict": TESTSETS, "evaluate": TESTSETS, "figure_rva": 1}


def test_geoclip_parameter_reruns_the_geoclip_branch_only(tiny_run: TinyRun) -> None:
    negatives = tiny_run.config["geoclip"]["gallery_negatives"]
    plan = tiny_run.plan({"geoclip": {"gallery_negatives": negatives * 2}})
    assert plan == {"geoclip_tower": 1, "geoclip_predict": TESTSETS, "evaluate": TESTSETS, "figure_rva": 1}


def test_partition_parameter_reruns_everything_built_on_the_partitions(tiny_run: TinyRun) -> None:
    tau_max = tiny_run.config["partitions"]["levels"]["fine"]["tau_max"]
    plan = tiny_run.plan({"partitions": {"levels": {"fine": {"tau_max": tau_max + 3}}}})
    # the demo world, the shard index and the land-cover mask do not depend on the partitions
    assert not {"demo_world", "shard_index", "mask_lc"} & set(plan), plan
    assert plan == {
        "partitions": 1,
        "relabel_train": 1,
        "relabel_testset": TESTSETS,
        "mask_s2": 1,
        "mask_ls": 1,  # reads the LS bucket edges that relabel_train writes
        "atoms": 1,
        "geoclip_cells": 1,
        "geoclip_tower": 1,
        "geoclip_predict": TESTSETS,
        "train": BASE_MODELS,
        "predict": BASE_MODELS * TESTSETS,
        "evaluate": TESTSETS,
        "figure_rva": 1,
    }


# Downstream of the rasters: both are read by the labels (each image's LS value and LC class) and by
# their own mask; everything from the labels on follows. Not affected: the demo world, the partitions,
# the S2 mask, GeoCLIP's cell embeddings and the shard index.
RASTER_DESCENDANTS = {
    "relabel_train": 1,
    "relabel_testset": TESTSETS,
    "mask_ls": 1,  # also reads the LS bucket edges that relabel_train writes
    "atoms": 1,
    "geoclip_tower": 1,
    "geoclip_predict": TESTSETS,
    "train": BASE_MODELS,
    "predict": BASE_MODELS * TESTSETS,
    "evaluate": TESTSETS,
    "figure_rva": 1,
}
RASTER_UNAFFECTED = {"demo_world", "partitions", "mask_s2", "geoclip_cells", "shard_index"}


def test_touching_an_input_raster_reruns_from_the_masks_on(tiny_run: TinyRun) -> None:
    raster = tiny_run.workdir / tiny_run.config["inputs"]["landcover"]
    stat = raster.stat()
    try:
        os.utime(raster)  # "touch": newer than everything built from it, same bytes
        # Snakemake compares checksums of inputs below --max-checksum-file-size (1 MB): a touched tiny
        # raster with the same bytes changes nothing ...
        assert tiny_run.plan() == {}
        # ... while a real-size raster (GBs, never checksummed) is stale when newer than the outputs
        plan = tiny_run.plan(None, "--max-checksum-file-size", "1")
    finally:
        os.utime(raster, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert not RASTER_UNAFFECTED & set(plan), plan
    assert plan == {"mask_lc": 1, **RASTER_DESCENDANTS}
    assert tiny_run.plan(None, "--max-checksum-file-size", "1") == {}


def test_changing_an_input_raster_reruns_from_the_masks_on(tiny_run: TinyRun) -> None:
    raster = tiny_run.workdir / tiny_run.config["inputs"]["landscan"]
    original, stat = raster.read_bytes(), raster.stat()
    try:
        with rasterio.open(raster, "r+") as dst:
            band = dst.read(1)
            band[0, 0] = band[0, 0] + 1 if band[0, 0] != dst.nodata else 1
            dst.write(band, 1)
        plan = tiny_run.plan()
    finally:
        raster.write_bytes(original)
        os.utime(raster, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert not RASTER_UNAFFECTED & set(plan), plan
    assert "mask_lc" not in plan, plan
    assert plan == RASTER_DESCENDANTS
    assert tiny_run.plan() == {}


# Folder inputs (inputs.train.shards_dir, inputs.testsets.<name>.images): Snakemake sees only the folder's
# own mtime; the rules that read a folder carry its fingerprint (names, sizes, mtimes) as a param.
# every rule below the training labels, and the decoded-image cache of the training images
SHARD_DESCENDANTS = {"shard_index": 1, "image_cache": 1, **RASTER_DESCENDANTS}
ONE_TESTSET = {
    "relabel_testset": 1,
    "predict": BASE_MODELS,
    "geoclip_predict": 1,
    "evaluate": 1,
    "figure_rva": 1,
}


@contextlib.contextmanager
def _restored(folder: Path) -> Iterator[None]:
    """Put back every file of ``folder`` (bytes and mtimes) and the folder's own mtime afterwards."""
    files = {p: (p.read_bytes(), p.stat()) for p in folder.rglob("*") if p.is_file()}
    folder_stat = folder.stat()
    try:
        yield
    finally:
        for p in set(folder.rglob("*")) - set(files):
            p.unlink()
        for p, (data, st) in files.items():
            p.write_bytes(data)
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.utime(folder, ns=(folder_stat.st_atime_ns, folder_stat.st_mtime_ns))


def test_replacing_a_shard_reruns_everything_that_reads_the_training_images(tiny_run: TinyRun) -> None:
    import msgpack

    shards = tiny_run.workdir / tiny_run.config["inputs"]["train"]["shards_dir"]
    shard = sorted(shards.glob("*.msgpack"))[-1]
    with _restored(shards):
        records = list(msgpack.Unpacker(io.BytesIO(shard.read_bytes()), raw=False))
        records[0]["image"] = records[1]["image"]  # a new version of the shard: one image replaced
        shard.write_bytes(b"".join(msgpack.packb(r) for r in records))
        plan = tiny_run.plan()
    assert plan == SHARD_DESCENDANTS
    assert tiny_run.plan() == {}  # the original shard back: nothing to be done


def test_fixing_or_adding_a_test_image_reruns_that_test_set_only(tiny_run: TinyRun) -> None:
    images = tiny_run.workdir / tiny_run.config["inputs"]["testsets"]["im2gps3k"]["images"]
    first = sorted(images.glob("*.jpg"))[0]
    with _restored(images):
        first.write_bytes(first.read_bytes() + b"\0")  # fixed in place (same name)
        fixed = tiny_run.plan()
    with _restored(images):
        (images / "new_photo.jpg").write_bytes(first.read_bytes())  # added
        added = tiny_run.plan()
    assert fixed == ONE_TESTSET
    assert added == ONE_TESTSET
    assert tiny_run.plan() == {}


def test_land_cover_of_fill_values_only_stops_before_any_training_job(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    import shutil

    import netCDF4

    # a user's data folder: the tiny world's inputs, with an ESA-CCI-layout land cover whose lccs_class
    # holds only netCDF's default fill value (-127, read as code 129)
    workdir = copy_workflow(tmp_path / "wf")
    shutil.copytree(tiny_run.workdir / "results" / "demo", workdir / "data")
    lc = workdir / "data" / "landcover.nc"
    with netCDF4.Dataset(lc, "r+") as nc:
        var = nc.variables["lccs_class"]
        var.set_auto_maskandscale(False)
        var[:] = -127
    cfg = copy.deepcopy(tiny_run.config)
    cfg["demo"]["enabled"] = False
    inputs = cfg["inputs"]
    for key in ("landscan", "landcover"):
        inputs[key] = inputs[key].replace("results/demo", "data")
    for entry in [inputs["train"], *inputs["testsets"].values()]:
        for key, value in entry.items():
            entry[key] = value.replace("results/demo", "data")
    (workdir / "user.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    run = run_snakemake(workdir, TARGET, "--cores", "2", "--configfile", "user.yaml")
    assert run.returncode != 0
    # the mask stage names the file and the reason; the relabel stage, which every training job waits
    # for, stops too: no training job starts
    messages = (
        "data/landcover.nc: none of the 165,888 pixels holds a land-cover class",
        "geotags of mp16: lc7 is 'none'",
    )
    assert any(m in run.output for m in messages), run.output[-4000:]
    assert "rule train:" not in run.output
    assert not list((workdir / "results" / "models").glob("*/model.pt"))


def test_lint_is_clean(tiny_run: TinyRun) -> None:
    run = run_snakemake(tiny_run.workdir, "--lint", "--configfile", str(TINY_CONFIG))
    # (input functions belong in rules/common.smk: a rules file that mixes rules and functions is a lint)
    assert run.returncode == 0 and "Lints for" not in run.output, run.output[-4000:]
