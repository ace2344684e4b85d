"""Relabel stage: metadata, native-resolution sampling, LS edges, LC folding, split, urban cap, shards."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgpack
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio

from fakes import write_geotiff, write_lc_netcdf, write_metadata_csv, write_msgpack_shards
from geoens.core.constants import LANDSCAN_NODATA, LC_URBAN, lc_lookup_tables
from geoens.data import metadata as md
from geoens.data import shards as sh
from geoens.data.labeltable import LABEL_SCHEMA, read_label_table
from geoens.geo import buckets as bk
from geoens.geo import labels as lb
from geoens.geo import partitions as pt
from geoens.geo import s2

LS_H, LS_W = 90, 180  # LandScan-like native raster (2 degrees / 1 pixel ... any H x 2H)
LC_H, LC_W = 270, 540
LC_CODES = np.array(
    [0, 10, 11, 12, 20, 30, 40, 50, 60, 61, 62, 70, 71, 72, 80, 81, 82, 90, 100, 110, 120, 121, 122, 130, 140,
     150, 151, 152, 153, 160, 170, 180, 190, 200, 201, 202, 210, 220],
    dtype=np.uint8,
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# fixtures: small global rasters written by the real libraries
# ---------------------------------------------------------------------------------------------------


def _ls_array(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = (10 ** rng.uniform(0, 4.5, size=(LS_H, LS_W))).astype(np.int32)
    arr[rng.random((LS_H, LS_W)) < 0.15] = 0
    arr[rng.random((LS_H, LS_W)) < 0.2] = LANDSCAN_NODATA
    return arr


def _lc_array(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(LC_CODES, size=(LC_H, LC_W)).astype(np.uint8)


def write_ls_lc_geotiff(path: Path, arr: np.ndarray, nodata: float | None, tiled: bool = True) -> Path:
    """A global deflate GeoTIFF, tiled in 16 x 16 blocks or striped (3 rows per strip)."""
    kw = {"tiled": True, "blockxsize": 16, "blockysize": 16} if tiled else {"blockysize": 3}
    return write_geotiff(path, arr, nodata, compress="deflate", **kw)


def direct_lookup(arr: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """The reference: index the native array at DESIGN 2's pixel of each point, one point at a time."""
    h, w = arr.shape
    out = []
    for la, lo in zip(lat.tolist(), lon.tolist(), strict=True):
        r = min(int(np.floor((90.0 - la) * h / 180.0)), h - 1)
        c = int(np.floor((lo + 180.0) * w / 360.0)) % w
        out.append(arr[r, c])
    return np.array(out, dtype=arr.dtype)


def random_points(n: int, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lat = rng.uniform(-90, 90, n)
    lon = rng.uniform(-180, 180, n)
    # edges of the grid: poles, antimeridian, a pixel boundary
    lat[:6] = [90.0, -90.0, 0.0, 45.0, -89.999, 89.999]
    lon[:6] = [180.0, -180.0, 0.0, 179.9999, -0.0, 2.0]
    return lat, lon


@pytest.fixture()
def rasters(tmp_path: Path) -> dict[str, Path]:
    ls = _ls_array()
    lc = _lc_array()
    return {
        "ls": write_ls_lc_geotiff(tmp_path / "landscan.tif", ls, LANDSCAN_NODATA),
        "ls_striped": write_ls_lc_geotiff(
            tmp_path / "landscan_striped.tif", ls, LANDSCAN_NODATA, tiled=False
        ),
        "lc_tif": write_ls_lc_geotiff(tmp_path / "landcover.tif", lc, 0),
        "lc_nc": write_lc_netcdf(tmp_path / "landcover.nc", lc, time_dim=False, chunks=(32, 64)),
        "lc_nc_southup": write_lc_netcdf(
            tmp_path / "landcover_su.nc", lc, south_up=True, time_dim=False, chunks=(32, 64)
        ),
    }


# ---------------------------------------------------------------------------------------------------
# metadata
# ---------------------------------------------------------------------------------------------------


def test_read_metadata_counts_each_bad_reason(tmp_path: Path) -> None:
    rows = [
        "a.jpg,10.5,20.25",  # line 2 good
        ",1,1",  # line 3 missing id
        "b.jpg,,5",  # line 4 missing coordinate
        "c.jpg,abc,5",  # line 5 non-numeric
        "d.jpg,95,5",  # line 6 lat out of range
        "e.jpg,5,-180.5",  # line 7 lon out of range
        "a.jpg,1,2",  # line 8 duplicate of line 2
        "f.jpg,-90,180",  # line 9 good (edges inclusive)
        "g.jpg,1,1",  # line 10 no image
        "NA,3,4",  # line 11 good: an id spelled NA is an id
    ]
    csv = write_metadata_csv(tmp_path / "meta.csv", rows)
    meta, bad = md.read_metadata(csv, available_ids=["a.jpg", "f.jpg", "NA", "b.jpg"])
    assert meta["image_id"].tolist() == ["a.jpg", "f.jpg", "NA"]
    assert meta["lat"].tolist() == [10.5, -90.0, 3.0]
    assert meta["lon"].tolist() == [20.25, 180.0, 4.0]
    assert meta["lat"].dtype == np.float64
    assert bad.n_rows == 10
    assert bad.counts == {
        "missing_id": 1,
        "missing_coordinates": 1,
        "non_numeric_coordinates": 1,
        "lat_out_of_range": 1,
        "lon_out_of_range": 1,
        "no_image": 1,
        "duplicate_id": 1,
    }
    assert [ln for ln, _ in bad.examples] == [3, 4, 5, 6, 7, 8, 10]
    assert bad.examples[0] == (3, "missing_id")


def test_read_metadata_ignores_extra_columns_and_without_ids_keeps_all(tmp_path: Path) -> None:
    csv = write_metadata_csv(tmp_path / "m.csv", ["x,1,2,foo", "y,3,4,bar"], header="IMG_ID,LAT,LON,S3_Label")
    meta, bad = md.read_metadata(csv)
    assert meta["image_id"].tolist() == ["x", "y"]
    assert bad.n_bad == 0


def test_read_metadata_too_many_bad_rows_names_file_and_lines(tmp_path: Path) -> None:
    rows = ["a,1,1", "b,200,1", "c,1,1", "d,1,xyz"]
    csv = write_metadata_csv(tmp_path / "broken_meta.csv", rows)
    with pytest.raises(md.MetadataError, match=r"broken_meta\.csv.*2 of 4 rows.*line 3 \(lat_out_of_range\)"):
        md.read_metadata(csv, max_bad_fraction=0.25)
    meta, bad = md.read_metadata(csv, max_bad_fraction=0.5)  # at the threshold: fine
    assert len(meta) == 2 and bad.fraction == 0.5


def test_read_metadata_missing_column_names_file_and_column(tmp_path: Path) -> None:
    csv = write_metadata_csv(tmp_path / "nolon.csv", ["a,1"], header="IMG_ID,LAT")
    with pytest.raises(md.MetadataError, match=r"nolon\.csv: missing column 'LON'"):
        md.read_metadata(csv)


def test_shard_and_folder_ids(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    write_msgpack_shards(
        shards,
        [[{"image": b"\xff\xd8" + bytes(100), "id": f"img{k}_{i}.jpg"} for i in range(3)] for k in range(2)],
    )
    (shards / "README.txt").write_text("not a shard")
    ids = sh.available_ids(shards)
    assert ids.to_pylist() == [f"img{k}_{i}.jpg" for k in range(2) for i in range(3)]
    assert sh.shard_ids(shards, processes=2).to_pylist() == ids.to_pylist()

    with open(shards / "shard-002.msgpack", "wb") as fh:
        fh.write(msgpack.packb({"id": "ok"}) + msgpack.packb({"image": b"x"}))
    with pytest.raises(ValueError, match=r"shard-002\.msgpack: record 1 \(byte \d+\) is not a map with"):
        sh.shard_ids(shards)

    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.jpg", "a.jpg", "sub/c.jpg", ".hidden"):
        (folder / name).write_bytes(b"x")
    assert sh.available_ids(folder).to_pylist() == ["a.jpg", "b.jpg", "sub/c.jpg"]


# ---------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------


def test_landscan_sampling_equals_direct_lookup(rasters: dict[str, Path]) -> None:
    lat, lon = random_points(3000)
    arr = _ls_array()
    ref = direct_lookup(arr, lat, lon).astype(np.float64)
    ref[ref == LANDSCAN_NODATA] = np.nan
    for key in ("ls", "ls_striped"):
        got = lb.sample_landscan(rasters[key], lat, lon)
        np.testing.assert_array_equal(got, ref)
    assert np.isnan(ref).any() and (ref == 0).any()
    # and rasterio's own per-point sample agrees (away from the wrap-around edge points)
    with rasterio.open(rasters["ls"]) as ds:
        rio = np.array([v[0] for v in ds.sample(zip(lon[6:], lat[6:], strict=True))], dtype=np.float64)
    rio[rio == LANDSCAN_NODATA] = np.nan
    np.testing.assert_array_equal(lb.sample_landscan(rasters["ls"], lat[6:], lon[6:]), rio)


@pytest.mark.parametrize("max_bytes", [1, 16 * 16 * 4 * 3, 10**9])
def test_read_pixels_window_sizes(rasters: dict[str, Path], max_bytes: int) -> None:
    rng = np.random.default_rng(5)
    rows = rng.integers(0, LS_H, 500)
    cols = rng.integers(0, LS_W, 500)
    with rasterio.open(rasters["ls"]) as ds:
        got = lb.read_pixels(ds, rows, cols, max_window_bytes=max_bytes)
    np.testing.assert_array_equal(got, _ls_array()[rows, cols])


@pytest.mark.parametrize("key", ["lc_tif", "lc_nc", "lc_nc_southup"])
def test_landcover_sampling_equals_direct_lookup(rasters: dict[str, Path], key: str) -> None:
    lat, lon = random_points(3000, seed=3)
    got = lb.sample_landcover(rasters[key], lat, lon)
    ref = direct_lookup(_lc_array(), lat, lon)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, ref)
    assert (got >= 190).any()  # codes above 127 survive (int8 + _Unsigned read as uint8)


# ---------------------------------------------------------------------------------------------------
# LS buckets and LC classes
# ---------------------------------------------------------------------------------------------------


def test_ls_edges_and_counts_match_hand_computation() -> None:
    values = np.array([0, 1, 10, 100, 1000, 10000, np.nan, 5, 0, 3162.0])
    rec = bk.ls_bucket_edges(values)
    np.testing.assert_allclose(rec["edges_log10"], [0, 1, 2, 3, 4], atol=1e-12)
    # buckets: 0,0 -> lowest; 1, 5 -> [0,1) lowest; 10 -> low; 100 -> medium; 1000, 3162, 10000 -> high
    assert rec["counts"] == [4, 1, 1, 3]
    assert rec["min_positive"] == 1.0 and rec["max"] == 10000.0 and rec["n_sampled"] == 9
    json.dumps(rec)  # JSON-able


def test_ls_edges_uneven_range() -> None:
    values = np.array([2.0, 50.0, 7.0, 0.0, 1234.0])
    rec = bk.ls_bucket_edges(values)
    lo, hi = np.log10(2.0), np.log10(1234.0)
    np.testing.assert_allclose(rec["edges_log10"], lo + (hi - lo) * np.arange(5) / 4)
    logs = np.log10([2.0, 50.0, 7.0, 1234.0])
    hand = [min(3, int((x - lo) // ((hi - lo) / 4))) for x in logs]  # 2 -> 0, 7 -> 0, 50 -> 2, 1234 -> 3
    assert hand == [0, 2, 0, 3]
    assert rec["counts"] == [3, 0, 1, 1]


def test_ls_edges_need_a_range() -> None:
    with pytest.raises(ValueError, match="none of the 3 sampled values is positive"):
        bk.ls_bucket_edges([0, 0, np.nan, -1])
    with pytest.raises(ValueError, match="all positive sampled values equal"):
        bk.ls_bucket_edges([5, 5, 0])


def test_bucketize_rules() -> None:
    edges = [0.0, 1.0, 2.0, 3.0, 4.0]
    v = np.array([-5, 0, 0.5, 1, 9.99, 10, 99, 100, 1000, 1e9, np.nan])
    assert bk.bucketize(v, edges).tolist() == [0, 0, 0, 0, 0, 1, 1, 2, 3, 3, -1]
    with pytest.raises(ValueError, match="increasing"):
        bk.bucketize(v, [0, 2, 1, 3, 4])


def test_lc_labels_fold_subclasses() -> None:
    codes = np.array([0, 10, 11, 12, 62, 122, 153, 190, 202, 220, 255, 5], dtype=np.uint8)
    top, cls = lb.lc_labels(codes)
    assert top.tolist() == [0, 10, 10, 10, 60, 120, 150, 190, 200, 220, 0, 0]
    assert cls.tolist() == [-1, 0, 0, 0, 1, 3, 3, 5, 6, 6, -1, -1]
    assert top.dtype == np.uint8 and cls.dtype == np.int8
    to_top, to_class = lc_lookup_tables()
    all_codes = np.arange(256, dtype=np.uint8)
    t, c = lb.lc_labels(all_codes)
    assert t.tolist() == to_top and c.tolist() == to_class


# ---------------------------------------------------------------------------------------------------
# split and urban cap
# ---------------------------------------------------------------------------------------------------


def test_split_is_seeded_and_exact() -> None:
    a = lb.assign_split(1000, 0.1, seed=3)
    b = lb.assign_split(1000, 0.1, seed=3)
    c = lb.assign_split(1000, 0.1, seed=4)
    assert (a == b).all() and not (a == c).all()
    assert (a == "val").sum() == 100 and (a == "train").sum() == 900
    assert (lb.assign_split(10, 0.0, 0) == "train").all()


def test_urban_cap() -> None:
    rng = np.random.default_rng(0)
    lc7 = np.where(rng.random(2000) < 0.6, LC_URBAN, rng.integers(0, 5, 2000)).astype(np.int8)
    split = np.where(rng.random(2000) < 0.2, "val", "train").astype(object)
    keep = lb.urban_cap_keep(lc7, split, 0.125, seed=1)
    np.testing.assert_array_equal(keep, lb.urban_cap_keep(lc7, split, 0.125, seed=1))
    assert keep[lc7 != LC_URBAN].all()  # only urban rows are dropped
    for s in ("train", "val"):
        m = (split == s) & keep
        n_other = int(((split == s) & (lc7 != LC_URBAN)).sum())
        n_urban = int((m & (lc7 == LC_URBAN)).sum())
        assert n_urban / m.sum() <= 0.125
        assert n_urban == int(np.floor(0.125 * n_other / 0.875))
    # below the cap nothing is dropped
    few = np.array([LC_URBAN] + [0] * 20, dtype=np.int8)
    assert lb.urban_cap_keep(few, np.full(21, "train", dtype=object), 0.125, 0).all()


# ---------------------------------------------------------------------------------------------------
# end to end (module level): train shards, edges, summary, test set; determinism
# ---------------------------------------------------------------------------------------------------


def _make_world(tmp_path: Path, rasters: dict[str, Path], n: int = 3000) -> dict[str, Path]:
    rng = np.random.default_rng(11)
    lat = np.clip(rng.normal(40, 15, n), -89, 89)
    lon = rng.uniform(-180, 180, n)
    ids = [f"{i:06d}.jpg" for i in range(n)]
    meta = pd.DataFrame({"IMG_ID": ids, "LAT": lat, "LON": lon})
    meta.loc[5, "LAT"] = 123.0  # one bad row
    meta.to_csv(tmp_path / "train.csv", index=False)
    shards = tmp_path / "shards"
    write_msgpack_shards(shards, [[{"id": i, "image": b"jpg"} for i in ids[:-2]]])  # the last two are missing
    leaf = s2.latlng_to_leaf(lat, lon)
    levels = {
        "coarse": {"tau_min": 5, "tau_max": 400},
        "middle": {"tau_min": 5, "tau_max": 200},
        "fine": {"tau_min": 5, "tau_max": 100},
    }
    pdir = tmp_path / "partitions"
    for name, lv in levels.items():
        pt.write_partition_csv(
            pt.build_partition(leaf, lat, lon, lv["tau_min"], lv["tau_max"], 2, 30, name),
            pdir / f"{name}.csv",
        )
    test_ids = [f"t{i}.jpg" for i in range(200)]
    tmeta = pd.DataFrame(
        {"IMG_ID": test_ids, "LAT": rng.uniform(-60, 70, 200), "LON": rng.uniform(-180, 180, 200)}
    )
    tmeta.to_csv(tmp_path / "test.csv", index=False)
    images = tmp_path / "test_images"
    images.mkdir()
    for i in test_ids:
        (images / i).write_bytes(b"jpg")
    return {"meta": tmp_path / "train.csv", "shards": shards, "pdir": pdir, "tmeta": tmp_path / "test.csv",
            "images": images}  # fmt: skip


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_relabel_train_and_testset_end_to_end(tmp_path: Path, rasters: dict[str, Path]) -> None:
    w = _make_world(tmp_path, rasters)
    cfg = {"val_fraction": 0.1, "urban_cap": 0.125, "max_bad_fraction": 0.01, "rows_per_shard": 1000}
    out = tmp_path / "out"

    def run(tag: str) -> dict:
        return lb.run_relabel_train(
            w["meta"], w["shards"], rasters["ls"], rasters["lc_nc"], w["pdir"], out / tag / "train",
            out / tag / "ls_edges.json", out / tag / "mp16_summary.json", cfg, seed=7, dataset="mp16",
        )  # fmt: skip

    summary = run("a")
    files = sorted((out / "a" / "train").glob("*.parquet"))
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    table = pq.read_table(files[0])
    assert table.schema.equals(LABEL_SCHEMA)
    lab = read_label_table(out / "a" / "train")
    assert len(lab) == 3000 - 3 == summary["rows_kept"]
    assert summary["bad_by_reason"]["lat_out_of_range"] == 1 and summary["bad_by_reason"]["no_image"] == 2
    # labels equal the direct per-point lookups
    lat, lon = lab["lat"].to_numpy(), lab["lon"].to_numpy()
    ls_ref = direct_lookup(_ls_array(), lat, lon).astype(np.float64)
    ls_ref[ls_ref == LANDSCAN_NODATA] = np.nan
    np.testing.assert_array_equal(lab["ls_value"].to_numpy(), ls_ref)
    lc_ref = direct_lookup(_lc_array(), lat, lon)
    np.testing.assert_array_equal(lab["lc_code"].to_numpy(), lc_ref)
    np.testing.assert_array_equal(lab["lc7"].to_numpy(), lb.lc_labels(lc_ref)[1])
    # edges from all kept rows, buckets by those edges
    edges = json.loads((out / "a" / "ls_edges.json").read_text())
    assert len(edges["edges_log10"]) == 5 and sum(edges["counts"]) == edges["n_sampled"]
    assert edges["min_positive"] == np.nanmin(ls_ref[ls_ref > 0]) and edges["max"] == np.nanmax(ls_ref)
    np.testing.assert_array_equal(lab["ls_bucket"].to_numpy(), bk.bucketize(ls_ref, edges["edges_log10"]))
    assert np.bincount(lab["ls_bucket"][lab["ls_bucket"] >= 0], minlength=4).tolist() == edges["counts"]
    # cells: every point in at most one cell, equal to the partition's lookup
    fine = pt.read_partition_csv(w["pdir"] / "fine.csv")
    np.testing.assert_array_equal(lab["cell_fine"].to_numpy(), pt.cell_of(s2.latlng_to_leaf(lat, lon), fine))
    assert (lab["cell_fine"] >= 0).mean() > 0.5
    # split and cap
    assert (lab["split"] == "val").sum() == round(0.1 * len(lab))
    for s in ("train", "val"):
        m = (lab["split"] == s) & lab["attr_keep"]
        assert ((lab["lc7"] == LC_URBAN) & m).sum() / m.sum() <= 0.125
    # determinism: same inputs and seed -> same bytes
    run("b")
    assert _digest(out / "a") == _digest(out / "b")

    ts = lb.run_relabel_testset(
        w["tmeta"], w["images"], rasters["ls_striped"], rasters["lc_tif"], w["pdir"],
        out / "a" / "ls_edges.json", out / "test.parquet", out / "test_summary.json", cfg, dataset="test",
    )  # fmt: skip
    tl = read_label_table(out / "test.parquet")
    assert ts["rows_kept"] == 200 and (tl["split"] == "test").all() and tl["attr_keep"].all()
    tref = direct_lookup(_ls_array(), tl["lat"].to_numpy(), tl["lon"].to_numpy()).astype(np.float64)
    tref[tref == LANDSCAN_NODATA] = np.nan
    np.testing.assert_array_equal(tl["ls_bucket"].to_numpy(), bk.bucketize(tref, edges["edges_log10"]))
    assert json.loads((out / "test_summary.json").read_text())["rows_kept"] == 200


def test_relabel_train_fails_on_too_many_missing_images(tmp_path: Path, rasters: dict[str, Path]) -> None:
    w = _make_world(tmp_path, rasters, n=100)
    cfg = {"val_fraction": 0.1, "urban_cap": 0.125, "max_bad_fraction": 0.01, "rows_per_shard": 1000}
    with pytest.raises(md.MetadataError, match=r"train\.csv: 3 of 100 rows are bad.*no_image=2"):
        lb.run_relabel_train(
            w["meta"], w["shards"], rasters["ls"], rasters["lc_nc"], w["pdir"], tmp_path / "o",
            tmp_path / "e.json", tmp_path / "s.json", cfg, seed=0,
        )  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_relabel_train_without_population_names_the_raster(tmp_path: Path, rasters: dict[str, Path]) -> None:
    w = _make_world(tmp_path, rasters, n=200)
    empty = write_ls_lc_geotiff(tmp_path / "empty_ls.tif", np.zeros((LS_H, LS_W), np.int32), LANDSCAN_NODATA)
    meta, _ = md.read_metadata(w["meta"])
    parts = pt.read_partitions({lv: w["pdir"] / f"{lv}.csv" for lv in pt.LEVELS})
    with pytest.raises(ValueError, match=r"empty_ls\.tif at 199 training geotags: .*none of the 199"):
        lb.relabel_train(meta, empty, rasters["lc_tif"], parts, 0.1, 0.125, 0)


# ---------------------------------------------------------------------------------------------------
# the rules, run by Snakemake on the tiny demo world
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_label_rules_on_tiny_world(tmp_path: Path) -> None:
    import yaml

    from cluster.workflow import copy_workflow, planned_jobs, run_snakemake

    wd = copy_workflow(tmp_path / "wf")
    targets = [
        "results/labels/train",
        "results/labels/testsets/im2gps3k.parquet",
        "results/labels/testsets/streetview.parquet",
        "results/partitions/hierarchy.parquet",
    ]
    cfg = ["--configfile", "tests/data/tiny.yaml"]
    run_snakemake(wd, *cfg, "--cores", "2", *targets).check()
    lab = read_label_table(wd / "results/labels/train")
    summary = json.loads((wd / "results/labels/mp16_summary.json").read_text())
    assert len(lab) == summary["rows_kept"] > 0
    assert set(lab["split"]) == {"train", "val"}
    edges = json.loads((wd / "results/labels/ls_edges.json").read_text())
    assert sum(edges["counts"]) == edges["n_sampled"] == (lab["ls_bucket"] >= 0).sum()
    test = read_label_table(wd / "results/labels/testsets/im2gps3k.parquet")
    assert (test["split"] == "test").all()
    hier = pq.read_table(wd / "results/partitions/hierarchy.parquet").to_pandas()
    fine = pt.read_partition_csv(wd / "results/partitions/fine.csv")
    assert len(hier) == len(fine) and (hier[["middle", "coarse"]] >= 0).all().all()
    assert planned_jobs(wd, "--cores", "1", *targets, *cfg) == {}
    # a changed labels setting reruns the relabel rules, not the partitions
    conf = yaml.safe_load((wd / "tests/data/tiny.yaml").read_text())
    conf["labels"]["val_fraction"] = 0.2
    (wd / "changed.yaml").write_text(yaml.safe_dump(conf))
    jobs = planned_jobs(wd, "--cores", "1", *targets, "--configfile", "changed.yaml")
    assert jobs.get("relabel_train") == 1 and "partitions" not in jobs
