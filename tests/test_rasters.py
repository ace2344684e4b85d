"""Native rasters -> grid masks: validation, block mean / mode vs numpy references, writing (DESIGN 3)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from fakes import write_geotiff, write_lc_netcdf
from geoens.core.constants import LANDSCAN_NODATA, lc_lookup_tables
from geoens.core.grid import Grid
from geoens.geo import buckets, landcover, masks, rasters

# ---------------------------------------------------------------------------------------------------
# numpy references (the files are written by tests/fakes.py)
# ---------------------------------------------------------------------------------------------------


def ref_block_mean(arr: np.ndarray, f: int, nodata: int) -> np.ndarray:
    h, w = arr.shape
    out = np.full((h // f, w // f), np.nan)
    for i in range(h // f):
        for j in range(w // f):
            b = arr[i * f : (i + 1) * f, j * f : (j + 1) * f].ravel()
            b = b[b != nodata]
            if b.size:
                out[i, j] = b.astype(np.float64).mean()
    return out


def ref_block_mode(codes: np.ndarray, f: int) -> np.ndarray:
    to_class = lc_lookup_tables()[1]
    h, w = codes.shape
    out = np.full((h // f, w // f), -1, dtype=np.int8)
    for i in range(h // f):
        for j in range(w // f):
            cls = [to_class[c] for c in codes[i * f : (i + 1) * f, j * f : (j + 1) * f].ravel()]
            cnt = Counter(c for c in cls if c >= 0)
            if cnt:
                best = max(cnt.values())
                out[i, j] = min(c for c, n in cnt.items() if n == best)
    return out


@pytest.fixture(autouse=True)
def small_strips(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force several strips even on tiny rasters."""
    monkeypatch.setattr(masks, "STRIP_BYTES", 4096)


def ls_array(h: int, w: int, f: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 50_000, size=(h, w), dtype=np.int32)
    arr[rng.random((h, w)) < 0.3] = LANDSCAN_NODATA
    arr[:f, :f] = LANDSCAN_NODATA  # a whole nodata block (north-west corner)
    arr[-f:, -f:] = LANDSCAN_NODATA  # ... and at the antimeridian, south-east
    arr[f : 2 * f, -f:] = [[7] * f] * f  # antimeridian column block: constant 7
    arr[f : 2 * f, -f] = LANDSCAN_NODATA
    arr[2 * f : 3 * f, :f] = 0
    return arr


# ---------------------------------------------------------------------------------------------------
# LandScan
# ---------------------------------------------------------------------------------------------------


def test_landscan_block_mean_equals_reference(tmp_path: Path) -> None:
    g, f = Grid(12, 24), 4
    arr = ls_array(g.height * f, g.width * f, f)
    tif = write_geotiff(tmp_path / "ls.tif", arr, nodata=LANDSCAN_NODATA)
    mean = masks.landscan_mean(tif, g)
    ref = ref_block_mean(arr, f, LANDSCAN_NODATA)
    np.testing.assert_allclose(mean, ref, rtol=1e-12, equal_nan=True)
    assert np.isnan(mean[0, 0]) and np.isnan(mean[-1, -1])
    assert mean[1, -1] == 7.0 and mean[2, 0] == 0.0
    # undeclared nodata -> LandScan default
    tif2 = write_geotiff(tmp_path / "ls2.tif", arr, nodata=None)
    np.testing.assert_allclose(masks.landscan_mean(tif2, g), ref, rtol=1e-12, equal_nan=True)


def test_ls_buckets() -> None:
    edges = [0.0, 1.0, 2.0, 3.0, 4.0]
    v = np.array([np.nan, -5, 0, 0.5, 1, 5, 10, 99.9, 100, 999, 1000, 1e4, 1e9])
    assert buckets.bucketize(v, edges).tolist() == [-1, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 3]
    assert buckets.bucketize(v, edges).dtype == np.int8
    with pytest.raises(ValueError, match="increasing"):
        buckets.check_ls_edges([0, 1, 1, 2, 3])
    with pytest.raises(ValueError, match="5 increasing"):
        buckets.check_ls_edges([0, 1, 2])


def test_ls_edges_file_and_fallback(tmp_path: Path) -> None:
    p = tmp_path / "ls_edges.json"
    p.write_text(json.dumps({"edges_log10": [0, 1, 2, 3, 4.5], "counts": [1, 1, 1, 1]}))
    assert buckets.load_ls_edges(p, [9, 10, 11, 12, 13]) == [0, 1, 2, 3, 4.5]
    assert buckets.load_ls_edges(tmp_path / "none.json", [9, 10, 11, 12, 13]) == [9, 10, 11, 12, 13]
    with pytest.raises(ValueError, match="none.json"):
        buckets.load_ls_edges(tmp_path / "none.json", None)
    p.write_text(json.dumps({"edges": [1]}))
    with pytest.raises(ValueError, match="ls_edges.json.*edges_log10"):
        buckets.load_ls_edges(p, None)
    # edges that are not 5 increasing finite numbers: the file is named, the fallback is not used
    for bad in ([0, 1, 2], [0, 2, 1, 3, 4], [0, 1, 2, 3, "x"], 5):
        p.write_text(json.dumps({"edges_log10": bad}))
        with pytest.raises(ValueError, match=r"ls_edges\.json: no valid 'edges_log10' list"):
            buckets.load_ls_edges(p, [9, 10, 11, 12, 13])
    with pytest.raises(ValueError, match="5 increasing"):
        buckets.load_ls_edges(None, [9, 10, 11, 12])


def test_ls_mask_end_to_end(tmp_path: Path) -> None:
    g, f = Grid(6, 12), 2
    arr = ls_array(12, 24, f, seed=1)
    tif = write_geotiff(tmp_path / "ls.tif", arr, nodata=LANDSCAN_NODATA)
    lab, n_nodata = masks.ls_mask(tif, g, [0.0, 1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(
        lab, buckets.bucketize(ref_block_mean(arr, f, LANDSCAN_NODATA), [0, 1, 2, 3, 4])
    )
    assert lab[0, 0] == -1
    assert n_nodata == int(np.isnan(ref_block_mean(arr, f, LANDSCAN_NODATA)).sum()) > 0


def test_overviews_are_not_read(tmp_path: Path) -> None:
    g = Grid(4, 8)
    arr = ls_array(32, 64, 8, seed=2)
    tif = write_geotiff(tmp_path / "ov.tif", arr, nodata=LANDSCAN_NODATA, overviews=(2, 4))
    with rasterio.open(tif) as ds:
        assert ds.overviews(1) == [2, 4]
    np.testing.assert_allclose(
        masks.landscan_mean(tif, g), ref_block_mean(arr, 8, LANDSCAN_NODATA), rtol=1e-12, equal_nan=True
    )


# ---------------------------------------------------------------------------------------------------
# land cover
# ---------------------------------------------------------------------------------------------------


def lc_codes(h: int, w: int, f: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    palette = np.array(
        [0, 10, 11, 12, 20, 30, 40, 50, 60, 61, 62, 70, 71, 72, 80, 81, 82, 90, 100, 110, 120, 121, 122, 130,
         140, 150, 151, 152, 153, 160, 170, 180, 190, 200, 201, 202, 210, 220, 5, 255, 99]
    )  # fmt: skip
    codes = palette[rng.integers(0, palette.size, size=(h, w))].astype(np.uint8)
    codes[:f, :f] = 0  # nodata block
    codes[f : 2 * f, :f] = 255  # unknown-code block -> no class
    # tie blocks: half class 6 (210 water) / half class 5 (190 urban) -> 5; half 0 / half 3 -> 0
    codes[:f, -f:] = 210
    codes[:f, -f:][:, : f // 2] = 190
    codes[f : 2 * f, -f:] = 150
    codes[f : 2 * f, -f:][: f // 2] = 11
    return codes


@pytest.mark.parametrize("f", [4, 6])
def test_lc_block_mode_equals_reference_tif(tmp_path: Path, f: int) -> None:
    g = Grid(6, 12)
    codes = lc_codes(g.height * f, g.width * f, f, seed=f)
    tif = write_geotiff(tmp_path / "lc.tif", codes, nodata=0)
    lab = masks.lc_mask(tif, g, unknown_codes="none")  # codes 5, 99, 255 are no class (by choice)
    ref = ref_block_mode(codes, f)
    np.testing.assert_array_equal(lab, ref)
    assert lab.dtype == np.int8
    assert lab[0, 0] == -1 and lab[1, 0] == -1
    assert lab[0, -1] == 5 and lab[1, -1] == 0  # ties -> lowest class index (antimeridian column)


def test_block_mode_large_factor_matches() -> None:
    rng = np.random.default_rng(5)
    cls = rng.integers(-1, 7, size=(48, 96)).astype(np.int8)
    f = 24  # 24^2 counts do not fit uint8: uint16 counting
    got = landcover.block_mode(cls, f, 7)
    for i in range(2):
        for j in range(4):
            b = cls[i * f : (i + 1) * f, j * f : (j + 1) * f]
            cnt = np.bincount(b[b >= 0], minlength=7)
            assert got[i, j] == np.argmax(cnt)
    assert landcover.block_counts(cls[:24, :24], 12, 7).dtype == np.uint8
    assert landcover.block_counts(cls[:24, :24], 24, 7).dtype == np.uint16


@pytest.mark.parametrize(("south_up", "time_dim"), [(False, True), (True, False)])
def test_lc_netcdf_unsigned_trap(tmp_path: Path, south_up: bool, time_dim: bool) -> None:
    g, f = Grid(6, 12), 4
    codes = lc_codes(24, 48, f, seed=9)
    nc = write_lc_netcdf(
        tmp_path / "lc.nc", codes, south_up=south_up, time_dim=time_dim, crs_var=True, units=True
    )
    with rasters.open_checked(nc, "landcover") as r:
        assert r.dtype == np.uint8 and r.nodata == 0
        np.testing.assert_array_equal(r.read_rows(0, 24), codes)  # 190, 210 ... not negative
        np.testing.assert_array_equal(r.read_rows(5, 3), codes[5:8])
    np.testing.assert_array_equal(masks.lc_mask(nc, g, unknown_codes="none"), ref_block_mode(codes, f))


def test_sample_points(tmp_path: Path) -> None:
    codes = lc_codes(24, 48, 4, seed=3)
    nc = write_lc_netcdf(tmp_path / "lc.nc", codes, crs_var=True, units=True)
    rng = np.random.default_rng(0)
    lat = np.concatenate([rng.uniform(-90, 90, 300), [90, -90, 0]])
    lon = np.concatenate([rng.uniform(-180, 180, 300), [180, -180, 179.99]])
    ng = Grid(24, 48)
    r, c = ng.pixel_of(lat, lon)
    with rasters.open_checked(nc, "landcover") as ras:
        np.testing.assert_array_equal(ras.sample(lat, lon, max_rows=5), codes[r, c])
        assert ras.sample(np.zeros(0), np.zeros(0)).shape == (0,)


# ---------------------------------------------------------------------------------------------------
# validation errors name the file
# ---------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_naming_the_file(tmp_path: Path) -> None:
    g = Grid(4, 8)
    ok = np.zeros((8, 16), dtype=np.int32)
    p = write_geotiff(tmp_path / "merc.tif", ok, crs="EPSG:3857", bounds=(-2e7, -2e7, 2e7, 2e7))
    with pytest.raises(ValueError, match=r"merc.tif: CRS .*3857"):
        masks.landscan_mean(p, g)
    p = write_geotiff(tmp_path / "part.tif", ok, bounds=(-180, -60, 180, 85))
    with pytest.raises(ValueError, match="part.tif: extent .* not global"):
        masks.landscan_mean(p, g)
    p = write_geotiff(tmp_path / "float.tif", ok.astype(np.float32))
    with pytest.raises(ValueError, match="float.tif: landscan dtype is float32, expected int32"):
        masks.landscan_mean(p, g)
    p = write_geotiff(tmp_path / "lcint.tif", ok)
    with pytest.raises(ValueError, match="lcint.tif: landcover dtype is int32, expected uint8"):
        masks.lc_mask(p, g)
    p = write_geotiff(tmp_path / "odd.tif", np.zeros((10, 20), dtype=np.int32))
    with pytest.raises(ValueError, match="odd.tif: native size 10 x 20 is not a multiple"):
        masks.landscan_mean(p, g)
    with pytest.raises(ValueError, match="missing.tif: landscan raster not found"):
        masks.landscan_mean(tmp_path / "missing.tif", g)
    p = tmp_path / "junk.tif"
    p.write_bytes(b"not a tiff")
    with pytest.raises(ValueError, match="junk.tif: cannot open"):
        masks.landscan_mean(p, g)
    nc = tmp_path / "novar.nc"
    with netCDF4.Dataset(nc, "w") as ds:
        ds.createDimension("lat", 2)
        ds.createVariable("other", "i1", ("lat",))
    with pytest.raises(ValueError, match="novar.nc: no variable 'lccs_class'"):
        masks.lc_mask(nc, g)
    nc = write_lc_netcdf(tmp_path / "utm.nc", np.zeros((8, 16), dtype=np.uint8), crs_var=True, units=True)
    with netCDF4.Dataset(nc, "a") as ds:
        ds.variables["crs"].wkt = CRS.from_epsg(32633).to_wkt()
    with pytest.raises(ValueError, match="utm.nc: CRS"):
        masks.lc_mask(nc, g)


# ---------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------


def test_write_label_raster_and_preview(tmp_path: Path) -> None:
    g = Grid(300, 600)
    lab = (np.arange(g.height * g.width).reshape(g.shape) % 5 - 1).astype(np.int8)
    out = tmp_path / "lc.tif"
    rasters.write_label_raster(out, lab, g, classes=["a", "b", "c", "d"])
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 4326
        assert ds.nodata == -1
        assert ds.block_shapes[0] == (256, 256)
        assert ds.compression.name.lower() == "deflate"
        assert json.loads(ds.tags()["classes"]) == ["a", "b", "c", "d"]
        assert ds.transform == g.transform
    back, classes = rasters.read_label_raster(out, g)
    np.testing.assert_array_equal(back, lab)
    assert classes == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="not on the grid"):
        rasters.read_label_raster(out, Grid(4, 8))
    png = tmp_path / "lc.png"
    rasters.preview_png(png, lab, ["a", "b", "c", "d"], "test")
    assert png.read_bytes()[:4] == b"\x89PNG"
    rasters.preview_png(tmp_path / "many.png", lab.astype(np.int32) * 30, None, "many")
    assert (tmp_path / "many.png").stat().st_size > 1000


def test_lc_declared_nodata_code_is_no_class(tmp_path: Path) -> None:
    g = Grid(2, 4)
    codes = np.full((6, 12), 10, dtype=np.uint8)  # all cropland ...
    codes[:3, :3] = 190
    codes[0, 0] = 50  # ... but 10 is the declared nodata here
    tif = write_geotiff(tmp_path / "lc_nd10.tif", codes, nodata=10)
    lab = masks.lc_mask(tif, g)
    assert lab.tolist() == [[5, -1, -1, -1], [-1, -1, -1, -1]]
