"""Tests of the synthetic demo world (geoens.demo, rule demo_world)."""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import rasterio
import yaml
from PIL import Image

from geoens.core.config import ConfigError, validate_config
from geoens.core.constants import LANDSCAN_NODATA
from geoens.core.grid import Grid
from geoens.data import shards
from geoens.demo import generate as demo_generate
from geoens.demo import images as demo_images
from geoens.demo import spec as demo_spec
from geoens.demo import world as demo_world
from geoens.demo import writers as demo_writers

REPO = Path(__file__).resolve().parents[1]


def small_config(root: Path, seed: int = 0, lc_format: str = "netcdf") -> dict[str, Any]:
    ext = "nc" if lc_format == "netcdf" else "tif"
    raw = {
        "seed": seed,
        "grid": {"height": 18, "width": 36},
        "demo": {
            "enabled": True,
            "ls_factor": 4,
            "lc_factor": 6,
            "lc_format": lc_format,
            "n_train": 300,
            "n_shards": 3,
            "image_size": 32,
            "testsets": {
                "im2gps3k": {"n": 80, "style": "flickr"},
                "streetview": {"n": 80, "style": "streetview"},
            },
        },
        "inputs": {
            "landscan": str(root / "landscan.tif"),
            "landcover": str(root / f"landcover.{ext}"),
            "train": {
                "name": "mp16",
                "shards_dir": str(root / "mp16/shards"),
                "metadata": str(root / "mp16/metadata.csv"),
            },
            "testsets": {
                name: {
                    "images": str(root / f"testsets/{name}/images"),
                    "metadata": str(root / f"testsets/{name}/metadata.csv"),
                }
                for name in ("im2gps3k", "streetview")
            },
        },
    }
    return validate_config(raw)


def generate(root: Path, **kw: Any) -> tuple[dict[str, Any], dict[str, Path]]:
    cfg = small_config(root, **kw)
    out = demo_spec.output_paths(cfg)
    demo_generate.generate_world(cfg, out)
    return cfg, out


def read_meta(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def band(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Path]]:
    return generate(tmp_path_factory.mktemp("world0"))


def test_deterministic_same_seed_and_different_seed(world, tmp_path):
    cfg0, out0 = world
    _, out1 = generate(tmp_path / "again")
    _, out2 = generate(tmp_path / "other", seed=1)
    for key in ("landscan", "landcover"):
        assert digest(band(out0[key])) == digest(band(out1[key])), key
        assert digest(band(out0[key])) != digest(band(out2[key])), key
    for key in ("train_metadata", "im2gps3k_metadata", "streetview_metadata"):
        assert out0[key].read_bytes() == out1[key].read_bytes(), key
        assert out0[key].read_bytes() != out2[key].read_bytes(), key
    shards0 = sorted(out0["train_shards"].glob("*.msgpack"))
    shards1 = sorted(out1["train_shards"].glob("*.msgpack"))
    assert [p.read_bytes() for p in shards0] == [p.read_bytes() for p in shards1]
    ims0 = sorted(out0["streetview_images"].iterdir())
    ims1 = sorted(out1["streetview_images"].iterdir())
    assert [p.name for p in ims0] == [p.name for p in ims1]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(ims0, ims1, strict=True))


def test_landscan_geotiff_format(world):
    cfg, out = world
    spec = demo_spec.spec_from_config(cfg)
    with rasterio.open(out["landscan"]) as src:
        assert src.crs.to_epsg() == 4326
        assert tuple(src.bounds) == pytest.approx((-180.0, -90.0, 180.0, 90.0))
        assert src.dtypes[0] == "int32"
        assert src.nodata == LANDSCAN_NODATA
        assert src.shape == spec.ls_shape == (72, 144)
        assert src.overviews(1) == []
        ls = src.read(1)
    valid = ls != LANDSCAN_NODATA
    assert ls[valid].min() >= 0
    # water ~71% of the sphere's area; most land near-empty; heavy tail
    w = np.cos(np.deg2rad(Grid(*spec.ls_shape).lat_centers()))[:, None] * np.ones_like(ls, float)
    assert w[~valid].sum() / w.sum() == pytest.approx(1 - demo_world.LAND_FRACTION, abs=0.02)
    vals = ls[valid]
    assert np.mean(vals < 100) > 0.5
    assert vals.max() > 100 * max(np.median(vals), 1)


def test_netcdf_landcover_reads_back_as_uint8_codes(world):
    import netCDF4

    cfg, out = world
    spec = demo_spec.spec_from_config(cfg)
    expected = demo_world.World.build(spec).lc
    assert (expected > 127).any() and (expected == 210).any()
    with rasterio.open(out["landcover"]) as src:
        assert src.dtypes[0] == "uint8"
        assert src.crs.to_epsg() == 4326
        assert tuple(src.bounds) == pytest.approx((-180.0, -90.0, 180.0, 90.0))
        assert src.shape == spec.lc_shape == (108, 216)
        got = src.read(1)
    np.testing.assert_array_equal(got, expected)
    # the trap is really there: int8 storage with negative values for codes > 127
    with netCDF4.Dataset(out["landcover"]) as ds:
        v = ds["lccs_class"]
        v.set_auto_maskandscale(False)
        assert v.dtype == np.int8 and v.getncattr("_Unsigned") == "true"
        assert v.dimensions == ("time", "lat", "lon")
        raw = v[0]
        assert (raw < 0).any()
        np.testing.assert_array_equal(np.asarray(raw).view(np.uint8), expected)
        assert ds["lat"][0] > ds["lat"][-1]  # north first, as ESA's
        flags = np.asarray(v.flag_values).view(np.uint8)
        assert set(np.unique(expected)) <= set(flags.tolist())
        assert len(v.flag_meanings.split()) == len(flags)


def test_landcover_codes_and_consistency_with_landscan(world):
    cfg, out = world
    ls, lc = band(out["landscan"]), band(out["landcover"])
    codes = set(np.unique(lc).tolist())
    assert codes <= set(demo_writers.LCCS_NAMES) - {0}
    assert {11, 61, 121, 151, 201} & codes, "regional subclasses are used"
    assert all(demo_world.TO_CLASS[c] >= 0 for c in codes)
    lc_grid = Grid(*lc.shape)
    lat_c, lon_c = np.meshgrid(lc_grid.lat_centers(), lc_grid.lon_centers(), indexing="ij")
    r, c = Grid(*ls.shape).pixel_of(lat_c, lon_c)
    ls_up = ls[r, c]  # population of the population pixel containing each land cover pixel centre
    np.testing.assert_array_equal(lc == 210, ls_up == LANDSCAN_NODATA)
    urban = lc == 190
    assert urban.any()
    assert np.median(ls_up[urban]) > 100 * max(np.median(ls_up[(~urban) & (ls_up >= 0)]), 1)
    # snow and ice only at high latitudes
    lat = Grid(*lc.shape).lat_centers()[:, None] * np.ones(lc.shape)
    assert np.abs(lat[lc == 220]).min() > 55


def test_geotiff_landcover_option(tmp_path):
    cfg, out = generate(tmp_path, lc_format="geotiff")
    with rasterio.open(out["landcover"]) as src:
        assert src.driver == "GTiff" and src.dtypes[0] == "uint8" and src.nodata == 0
        assert src.crs.to_epsg() == 4326
        got = src.read(1)
    np.testing.assert_array_equal(got, demo_world.World.build(demo_spec.spec_from_config(cfg)).lc)


def test_shards_decode_and_match_metadata(world):
    cfg, out = world
    files = sorted(out["train_shards"].glob("shard-*.msgpack"))
    assert [p.name for p in files] == ["shard-000.msgpack", "shard-001.msgpack", "shard-002.msgpack"]
    ids = []
    for img_id, data in shards.read_shards(out["train_shards"]):
        im = Image.open(io.BytesIO(data))
        assert im.format == "JPEG" and im.size == (32, 32) and im.mode == "RGB"
        im.load()
        ids.append(img_id)
    assert len(ids) == len(set(ids)) == 300
    meta = read_meta(out["train_metadata"])
    assert list(meta[0]) == ["IMG_ID", "LAT", "LON"]
    assert {r["IMG_ID"] for r in meta} == set(ids)
    assert len(meta) == 300
    # raw stream: plain msgpack maps one after another
    with open(files[0], "rb") as fh:
        first = next(iter(msgpack.Unpacker(fh, raw=False)))
    assert set(first) == {"id", "image"} and isinstance(first["image"], bytes)


def test_read_shards_rejects_bad_record(tmp_path):
    bad = tmp_path / "shard-000.msgpack"
    bad.write_bytes(msgpack.packb({"id": "x"}) + msgpack.packb([1, 2]))
    with pytest.raises(ValueError, match=r"shard-000\.msgpack: record 0"):
        list(shards.read_shards(tmp_path))


def test_metadata_ranges_and_test_images(world):
    cfg, out = world
    for key in ("train_metadata", "im2gps3k_metadata", "streetview_metadata"):
        meta = read_meta(out[key])
        lat = np.array([float(r["LAT"]) for r in meta])
        lon = np.array([float(r["LON"]) for r in meta])
        assert np.all(np.abs(lat) <= 90) and np.all((lon >= -180) & (lon <= 180)), key
    for name in ("im2gps3k", "streetview"):
        meta = read_meta(out[f"{name}_metadata"])
        assert len(meta) == 80
        names = sorted(p.name for p in out[f"{name}_images"].iterdir())
        assert names == sorted(r["IMG_ID"] for r in meta)
        assert all(n.endswith(".jpg") for n in names)
        im = Image.open(out[f"{name}_images"] / names[0])
        assert im.format == "JPEG" and im.size == (32, 32)


def _points_pop(out: dict[str, Path], key: str) -> np.ndarray:
    meta = read_meta(out[key])
    lat = np.array([float(r["LAT"]) for r in meta])
    lon = np.array([float(r["LON"]) for r in meta])
    ls = band(out["landscan"])
    r, c = Grid(*ls.shape).pixel_of(lat, lon)
    return ls[r, c].astype(float)


def test_training_geotags_follow_population(world):
    cfg, out = world
    pop = _points_pop(out, "train_metadata")
    assert np.all(pop >= 0), "training geotags lie on land"
    ls = band(out["landscan"])
    land = ls[ls != LANDSCAN_NODATA].astype(float)
    w = np.cos(np.deg2rad(Grid(*ls.shape).lat_centers()))[:, None] * np.ones(ls.shape)
    land_w = w[ls != LANDSCAN_NODATA]
    uniform_mean = np.sum(land_w * np.log10(land + 1)) / land_w.sum()
    assert np.mean(np.log10(pop + 1)) > uniform_mean + 1.5


def test_streetview_more_rural_than_flickr(world):
    cfg, out = world
    sv, fl = _points_pop(out, "streetview_metadata"), _points_pop(out, "im2gps3k_metadata")
    assert np.median(sv) * 10 < np.median(fl)
    lc = band(out["landcover"])

    def urban_share(key: str) -> float:
        meta = read_meta(out[key])
        r, c = Grid(*lc.shape).pixel_of([float(m["LAT"]) for m in meta], [float(m["LON"]) for m in meta])
        return float(np.mean(lc[r, c] == 190))

    assert urban_share("streetview_metadata") < urban_share("im2gps3k_metadata")


def test_contact_sheets_written(world):
    cfg, out = world
    for key in ("train_contact_sheet", "im2gps3k_contact_sheet", "streetview_contact_sheet"):
        im = Image.open(out[key])
        assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 400
        assert np.asarray(im).std() > 10  # not blank


def test_attributes_visible_with_confusion():
    """A nearest-centroid classifier on 8x8 thumbnails beats the majority rate by far, but is not perfect."""
    fields = demo_world.WorldFields.from_seed(3)
    codes = np.array([10, 50, 70, 130, 180, 190, 200], np.uint8)
    n_per = 80
    rng = np.random.default_rng(0)
    lc = np.repeat(codes, n_per)
    inputs = demo_world.RenderInputs(
        lc, np.full(lc.size, 50.0), rng.uniform(-50, 60, lc.size), rng.uniform(-180, 180, lc.size)
    )
    imgs = demo_images.render_images(inputs, 32, "flickr", seed=5, fields=fields).astype(np.float32)
    feats = imgs.reshape(len(lc), 8, 4, 8, 4, 3).mean(axis=(2, 4)).reshape(len(lc), -1)
    y = np.repeat(np.arange(7), n_per)
    train = (np.arange(len(lc)) % n_per) < n_per // 2
    cent = np.stack([feats[train & (y == k)].mean(0) for k in range(7)])
    pred = np.argmin(((feats[~train, None, :] - cent[None]) ** 2).sum(-1), axis=1)
    acc = np.mean(pred == y[~train])
    assert 0.45 < acc < 0.99, acc


def test_buildings_follow_population():
    fields = demo_world.WorldFields.from_seed(0)
    n = 200
    lc = np.full(n, 130, np.uint8)
    lat, lon = np.zeros(n), np.linspace(-170, 170, n)
    rural = demo_images.render_images(
        demo_world.RenderInputs(lc, np.full(n, 1.0), lat, lon), 32, "flickr", 1, fields
    )
    city = demo_images.render_images(
        demo_world.RenderInputs(lc, np.full(n, 2e5), lat, lon), 32, "flickr", 1, fields
    )

    def greyness(a: np.ndarray) -> float:  # buildings are grey: low channel spread
        return float(np.mean(a.astype(float).std(axis=-1) < 12))

    assert greyness(city) > greyness(rural) + 0.05


def test_farmsteads_mark_sparsely_populated_land():
    fields = demo_world.WorldFields.from_seed(0)
    n = 200
    lc = np.full(n, 130, np.uint8)
    lat, lon = np.zeros(n), np.linspace(-170, 170, n)

    def roofs(pop: float) -> float:  # share of images with red-brown roof pixels
        img = demo_images.render_images(
            demo_world.RenderInputs(lc, np.full(n, pop), lat, lon), 64, "flickr", 1, fields
        )
        a = img.astype(int)
        red = (a[..., 0] - a[..., 1] > 45) & (a[..., 0] - a[..., 2] > 55) & (a[..., 1] < 100)  # roof colour
        return float(np.mean(red.sum(axis=(1, 2)) >= 6))  # a few pixels: noise alone

    empty, sparse = roofs(1.0), roofs(300.0)
    assert empty < 0.1 and sparse > empty + 0.5, (empty, sparse)


def test_write_sample_dataset(tmp_path):
    rows = demo_generate.write_sample_dataset(tmp_path / "s", n=12, seed=2, image_size=24)
    assert len(rows) == 12
    meta = read_meta(tmp_path / "s" / "metadata.csv")
    assert [r["IMG_ID"] for r in meta] == [r["IMG_ID"] for r in rows]
    for r in rows:
        assert Image.open(tmp_path / "s" / "images" / r["IMG_ID"]).size == (24, 24)


def test_config_errors_name_the_key(tmp_path):
    cfg = small_config(tmp_path)
    bad = copy.deepcopy(cfg)
    bad["demo"]["testsets"]["streetview"]["style"] = "drone"
    with pytest.raises(ConfigError, match=r"demo\.testsets\.streetview\.style"):
        demo_spec.spec_from_config(bad)
    bad = copy.deepcopy(cfg)
    del bad["demo"]["testsets"]["im2gps3k"]
    with pytest.raises(ConfigError, match=r"demo\.testsets"):
        demo_spec.output_paths(bad)
    bad = copy.deepcopy(cfg)
    bad["demo"]["lc_format"] = "geotiff"
    with pytest.raises(ConfigError, match=r"inputs\.landcover"):
        demo_spec.output_paths(bad)
    out = demo_spec.output_paths(cfg)
    del out["streetview_images"]
    with pytest.raises(ConfigError, match="streetview_images"):
        demo_generate.generate_world(cfg, out)


@pytest.mark.slow
def test_snakemake_demo_rule(tmp_path):
    """Run the demo_world rule through the real Snakefile with tests/data/tiny.yaml in a temp copy.

    Includes of stages not written yet are stubbed with empty files in the copy (the rule must not need them).
    """
    work = tmp_path / "wf"
    work.mkdir()
    for item in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / item, work / item)
    for item in ("rules", "workflow_scripts", "envs"):
        shutil.copytree(REPO / item, work / item)
    for line in (REPO / "Snakefile").read_text().splitlines():
        if line.startswith("include:"):
            inc = work / line.split('"')[1]
            if not inc.exists():
                inc.write_text("")
    tiny = REPO / "tests/data/tiny.yaml"
    cfg = validate_config(yaml.safe_load(tiny.read_text()))
    targets = [str(p) for p in demo_spec.output_paths(cfg).values()]
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    # targets first: --configfile takes several values
    cmd = [snakemake, *targets, "--cores", "1", "-s", "Snakefile", "--configfile", str(tiny)]
    res = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    for t in targets:
        assert (work / t).exists(), t
    assert (work / "logs/demo/demo_world.log").exists()
    assert (work / "benchmarks/demo/demo_world.tsv").exists()
    with rasterio.open(work / "results/demo/landcover.nc") as src:
        assert src.dtypes[0] == "uint8" and src.shape == (288, 576)
    assert len(read_meta(work / "results/demo/mp16/metadata.csv")) == 400
    again = subprocess.run([*cmd, "-n"], cwd=work, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "Nothing to be done" in (again.stdout + again.stderr)
