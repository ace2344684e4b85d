"""The rehearsal writes the real input layouts at config/paper.yaml's paths; bad real inputs are named.

Uses the session's small rehearsal (``--scale 20``, tests/conftest.py); the full-size run is
``make rehearsal`` (numbers in docs/rehearsal.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml

from cluster.workflow import REPO, run_snakemake
from geoens.core.config import effective_config, read_config_file
from geoens.core.constants import LANDSCAN_NODATA
from geoens.core.grid import Grid
from geoens.demo import rehearsal as rh
from geoens.geo.masks import make_lc_mask


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def test_rehearsal_config_differs_from_the_paper_only_in_the_training_budget(rehearsal: Path) -> None:
    paper = _flat(effective_config([REPO / "config" / "paper.yaml"]))
    mine = _flat(effective_config([rehearsal / "my.yaml"]))
    changed = {k for k in paper.keys() | mine.keys() if paper.get(k) != mine.get(k)}
    allowed_prefixes = (
        "train.device",
        "train.num_workers",
        "train.models.",
        "geoclip.image_tower",
        "geoclip.tower.",
    )
    budget_keys = {
        "backbone",
        "pretrained",
        "image_size",
        "epochs",
        "batch_size",
        "lr",
        "gpus",
        "max_train_images",
    }
    for key in changed:
        if key.startswith(("train.models.", "geoclip.tower.")):
            assert key.split(".")[-1] in budget_keys, key
        else:
            assert key.startswith(allowed_prefixes) or key.startswith("grid."), key  # grid: --scale only
    assert {k for k in changed if k.startswith("grid.")} == {"grid.height", "grid.width"}  # scale 20
    assert not any(k.startswith(("inputs.", "partitions.", "labels.", "evaluate.")) for k in changed)


def test_rehearsal_inputs_have_the_real_layouts(rehearsal: Path) -> None:
    paper = read_config_file(REPO / "config" / "paper.yaml")
    inp = paper["inputs"]
    with rasterio.open(rehearsal / inp["landscan"]) as ds:
        assert ds.dtypes[0] == "int32" and ds.nodata == LANDSCAN_NODATA
        assert ds.shape == (21600 // 20, 43200 // 20)
        assert ds.profile["compress"].lower() == "lzw" and not ds.profile.get("tiled", False)
        assert ds.crs.to_epsg() == 4326
        data = ds.read(1)
    assert (data == LANDSCAN_NODATA).any() and (data > 0).any()
    lc = rehearsal / inp["landcover"]
    lc_u = lc.with_name(lc.stem + "-ubyte.nc")
    with netCDF4.Dataset(lc) as a, netCDF4.Dataset(lc_u) as b:
        va, vb = a.variables["lccs_class"], b.variables["lccs_class"]
        assert (
            a.data_model == "NETCDF4_CLASSIC" and va.dtype == np.int8 and va.getncattr("_Unsigned") == "true"
        )
        assert b.data_model == "NETCDF4" and vb.dtype == np.uint8
        assert va.shape == vb.shape == (1, 64800 // 20, 129600 // 20)
        va.set_auto_maskandscale(False)
        vb.set_auto_maskandscale(False)
        rows = slice(1000, 1100)
        assert np.array_equal(va[0, rows, :].view(np.uint8), vb[0, rows, :])
    meta = pd.read_csv(rehearsal / inp["train"]["metadata"])
    assert list(meta.columns) == ["IMG_ID", "LAT", "LON"] and len(meta) == 3000
    fine = pd.read_csv(rehearsal / paper["partitions"]["csv"]["fine"], skiprows=2)
    assert len(fine) == 12893
    im = inp["testsets"]["im2gps3k"]
    assert (
        len(list((rehearsal / im["images"]).iterdir()))
        == len(pd.read_csv(rehearsal / im["metadata"]))
        == 2997
    )


def test_both_netcdf_encodings_give_the_same_lc_mask_byte_for_byte(rehearsal: Path, tmp_path: Path) -> None:
    paper = read_config_file(REPO / "config" / "paper.yaml")
    lc = rehearsal / paper["inputs"]["landcover"]
    grid = Grid(5400 // 20, 10800 // 20)
    make_lc_mask(lc, grid, tmp_path / "a.tif")
    make_lc_mask(lc.with_name(lc.stem + "-ubyte.nc"), grid, tmp_path / "b.tif")
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()


def test_rehearsal_refuses_a_scale_that_splits_pixels_and_names_missing_peers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--scale 3"):
        rh.RehearsalSpec(scale=3)
    with pytest.raises(FileNotFoundError, match=r"cells_50_5000\.csv.*--peers"):
        rh.peer_files(tmp_path)
    assert (
        rh.main([str(tmp_path / "r"), "--scale", "20", "--peers", str(tmp_path), "--workflow", str(REPO)])
        == 2
    )


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["crs", "shape"])
def test_a_wrong_landscan_is_named_on_the_real_path(rehearsal: Path, tmp_path: Path, fault: str) -> None:
    """Replace the rehearsal's LandScan with a wrong one: the first job reading it stops naming the file."""
    work = tmp_path / "r"
    shutil.copytree(rehearsal, work, symlinks=True, ignore=shutil.ignore_patterns(".snakemake", "results"))
    path = work / read_config_file(work / "my.yaml")["inputs"]["landscan"]
    with rasterio.open(path) as ds:
        profile, data = ds.profile, ds.read(1)
    if fault == "crs":
        profile.update(
            crs="EPSG:3857", transform=rasterio.transform.from_bounds(-2e7, -2e7, 2e7, 2e7, 2160, 1080)
        )
        expect = "CRS"
    else:
        data = data[:, :-7]
        profile.update(
            width=data.shape[1],
            transform=rasterio.transform.from_bounds(-180, -90, 180, 90, *data.shape[::-1]),
        )
        expect = "raster is 1080 x 2153 pixels; a global lat/lon raster has twice as many columns"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    run = run_snakemake(work, "results/masks/ls.tif", "--cores", "2", "--configfile", "my.yaml")
    assert run.returncode != 0
    assert path.name in run.output and expect in run.output, run.output[-3000:]
    assert yaml.safe_load((work / "my.yaml").read_text())["grid"]["height"] == 270
