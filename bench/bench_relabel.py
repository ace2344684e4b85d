"""Benchmark the relabel stage: MP-16-sized synthetic geotags against full-size synthetic LandScan and LC.

    python bench/bench_relabel.py            # 4.7 M geotags, LS 21600 x 43200 int32, LC 64800 x 129600 uint8
    python bench/bench_relabel.py --small    # 300 k geotags, rasters / 4 (a quick check)

Inputs are written to a temporary folder under /tmp (deleted at the end unless ``--keep``): tiled deflate
GeoTIFFs with blocky, land-like content (70 % ocean, nodata / water), a metadata CSV and msgpack shards with
tiny "images". The relabel (rule ``relabel_train``: list shard ids, read and clean metadata, sample both
rasters at native resolution, S2 cells, buckets, split, cap, write Parquet shards) runs in a fresh child
process, whose wall time and peak RSS are reported; the partition build is timed too. Baselines measured in
the same run: the full-width row-strip sampler of ``geoens.geo.rasters.NativeRaster.sample`` on the same
points (what ``read_pixels`` improves on for tiled files) and rasterio's per-point ``sample`` on a subset.
Target (2 cores): relabel <= 60 s and <= 4 GB. Results go to ``bench/out/bench_relabel[_small].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[1]
FULL = {"n": 4_700_000, "ls": (21600, 43200), "lc": (64800, 129600)}
SMALL = {"n": 300_000, "ls": (5400, 10800), "lc": (16200, 32400)}
LS_NODATA = -2147483647
LEVELS = {
    "coarse": {"tau_min": 50, "tau_max": 5000},
    "middle": {"tau_min": 50, "tau_max": 2000},
    "fine": {"tau_min": 50, "tau_max": 1000},
}
LC_LAND = np.array([10, 11, 30, 40, 50, 60, 70, 90, 100, 110, 120, 130, 150, 180, 190, 200], dtype=np.uint8)


def _land_field(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A coarse (1/100) land mask, ~30 % land between lat -60 and 75."""
    ch, cw = max(2, h // 100), max(4, w // 100)
    noise = rng.random((ch, cw))
    lat = 90 - (np.arange(ch) + 0.5) * 180 / ch
    noise[(lat < -60) | (lat > 75)] = 0
    return noise > 0.55


def _write_raster(path: Path, shape: tuple[int, int], dtype: str, kind: str, seed: int) -> None:
    h, w = shape
    rng = np.random.default_rng(seed)
    land = _land_field(h, w, rng)
    ch, cw = land.shape
    codes = rng.integers(0, 256, size=(ch * 4, cw * 4))  # sub-blocks of 1/400 with their own value
    profile = {
        "driver": "GTiff", "height": h, "width": w, "count": 1, "dtype": dtype, "crs": "EPSG:4326",
        "transform": Affine(360.0 / w, 0.0, -180.0, 0.0, -180.0 / h, 90.0), "tiled": True,
        "blockxsize": 512, "blockysize": 512, "compress": "deflate", "zlevel": 1, "BIGTIFF": "YES",
        "nodata": LS_NODATA if kind == "ls" else 0,
    }  # fmt: skip
    strip = 512
    with rasterio.open(path, "w", **profile) as ds:
        cols = np.arange(w)
        for r0 in range(0, h, strip):
            rows = np.arange(r0, min(h, r0 + strip))
            li = np.minimum(rows * ch // h, ch - 1)[:, None]
            lj = np.minimum(cols * cw // w, cw - 1)[None, :]
            si = np.minimum(rows * ch * 4 // h, ch * 4 - 1)[:, None]
            sj = np.minimum(cols * cw * 4 // w, cw * 4 - 1)[None, :]
            is_land = land[li, lj]
            val = codes[si, sj]
            if kind == "ls":
                block = np.where(is_land, (val.astype(np.int64) ** 2 // 4 + (cols[None, :] % 7)), LS_NODATA)
                block = block.astype(np.int32)
            else:
                block = np.where(is_land, LC_LAND[val % LC_LAND.size], 210).astype(np.uint8)
            ds.write(block, 1, window=Window(0, r0, w, rows.size))


def _geotags(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flickr-like clustered geotags: Zipf-sized cities plus 5 % scattered points."""
    rng = np.random.default_rng(seed)
    n_city = 3000
    c_lat = rng.uniform(-45, 65, n_city)
    c_lon = rng.uniform(-180, 180, n_city)
    weight = 1.0 / np.arange(1, n_city + 1) ** 0.9
    k = rng.choice(n_city, size=n, p=weight / weight.sum())
    spread = rng.choice([0.01, 0.05, 0.3, 1.5], size=n, p=[0.4, 0.3, 0.2, 0.1])
    lat = np.clip(c_lat[k] + rng.normal(0, 1, n) * spread, -89.9, 89.9)
    lon = np.mod(c_lon[k] + rng.normal(0, 1, n) * spread + 180, 360) - 180
    m = rng.random(n) < 0.05
    lat[m] = rng.uniform(-60, 75, m.sum())
    lon[m] = rng.uniform(-180, 180, m.sum())
    return lat, lon


def make_inputs(root: Path, size: dict) -> dict[str, Path]:
    t0 = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "ls": root / "landscan.tif",
        "lc": root / "landcover.tif",
        "meta": root / "metadata.csv",
        "shards": root / "shards",
        "partitions": root / "partitions",
    }
    _write_raster(paths["ls"], size["ls"], "int32", "ls", 1)
    print(f"  wrote LS {size['ls']} in {time.perf_counter() - t0:.1f} s", flush=True)
    _write_raster(paths["lc"], size["lc"], "uint8", "lc", 2)
    print(f"  wrote LC {size['lc']} in {time.perf_counter() - t0:.1f} s", flush=True)
    n = size["n"]
    lat, lon = _geotags(n, 3)
    ids = [f"{i % 256:02x}/{(i // 256) % 256:02x}/{9_000_000_000 + i}.jpg" for i in range(n)]
    pd.DataFrame({"IMG_ID": ids, "LAT": np.round(lat, 6), "LON": np.round(lon, 6)}).to_csv(
        paths["meta"], index=False
    )
    paths["shards"].mkdir()
    per = -(-n // 8)
    for s in range(8):
        with open(paths["shards"] / f"shard_{s}.msgpack", "wb") as fh:
            packer = msgpack.Packer()
            fh.write(
                b"".join(
                    packer.pack({"image": b"\xff\xd8tiny", "id": i}) for i in ids[s * per : (s + 1) * per]
                )
            )
    print(f"  wrote metadata + shards in {time.perf_counter() - t0:.1f} s", flush=True)
    return paths


def worker(root: Path, out_json: Path) -> None:
    """Child process: time partitions, then the relabel, then the baselines (after the relabel's peak)."""
    from geoens.data import metadata, shards
    from geoens.geo import labels, partitions
    from geoens.geo.rasters import open_checked

    res: dict = {}
    names = {"ls": "landscan.tif", "lc": "landcover.tif", "meta": "metadata.csv", "shards": "shards"}
    paths = {k: root / v for k, v in names.items()} | {"partitions": root / "partitions"}
    cfg = {"source": "build", "levels": LEVELS, "min_level": 2, "max_level": 30}
    outs = {lv: paths["partitions"] / f"{lv}.csv" for lv in partitions.LEVELS}
    outs["hierarchy"] = paths["partitions"] / "hierarchy.parquet"
    t = time.perf_counter()
    rep = partitions.run_partitions(paths["meta"], cfg, outs, max_bad_fraction=0.01)
    res["partitions_s"] = time.perf_counter() - t
    res["cells"] = rep["cells"]
    res["partitions_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    lcfg = {"val_fraction": 0.1, "urban_cap": 0.125, "max_bad_fraction": 0.01, "rows_per_shard": 1_000_000}
    t = time.perf_counter()
    summary = labels.run_relabel_train(
        paths["meta"], paths["shards"], paths["ls"], paths["lc"], paths["partitions"], root / "labels",
        root / "ls_edges.json", root / "summary.json", lcfg, seed=0, processes=2,
    )  # fmt: skip
    res["relabel_s"] = time.perf_counter() - t
    res["rows"] = summary["rows_kept"]
    res["relabel_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    # stage timings and baselines
    meta, _ = metadata.read_metadata(paths["meta"])
    lat, lon = meta["lat"].to_numpy(), meta["lon"].to_numpy()
    t = time.perf_counter()
    shards.shard_ids(paths["shards"])
    res["list_ids_s"] = time.perf_counter() - t
    for key, kind in (("ls", "landscan"), ("lc", "landcover")):
        t = time.perf_counter()
        ours, _ = labels.sample_native(paths[key], kind, lat, lon)  # type: ignore[arg-type]
        res[f"sample_{key}_s"] = time.perf_counter() - t
        t = time.perf_counter()
        with open_checked(paths[key], kind) as raster:  # type: ignore[arg-type]
            strips = raster.sample(lat, lon)
        res[f"baseline_strips_{key}_s"] = time.perf_counter() - t
        assert np.array_equal(ours, strips), f"{key}: block sampler and strip sampler disagree"
        sub = min(20_000, lat.size)
        t = time.perf_counter()
        with rasterio.open(paths[key]) as ds:
            per_point = np.array([v[0] for v in ds.sample(zip(lon[:sub], lat[:sub], strict=True))])
        res[f"baseline_per_point_{key}_pts_per_s"] = sub / (time.perf_counter() - t)
        ok = (lon[:sub] < 179.99) & (lat[:sub] > -89.99)
        assert np.array_equal(per_point[ok], ours[:sub][ok]), f"{key}: per-point sample disagrees"
    out_json.write_text(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="300 k geotags, rasters / 4")
    ap.add_argument("--keep", action="store_true", help="keep the generated inputs")
    ap.add_argument("--dir", type=Path, default=None, help="use (or create) inputs in this folder")
    ap.add_argument("--generate-only", action="store_true", help="only write the inputs (needs --dir)")
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        worker(args.dir, args.worker)
        return
    size = SMALL if args.small else FULL
    root = args.dir or Path(tempfile.mkdtemp(prefix="bench_relabel_", dir="/tmp"))
    try:
        if not (root / "metadata.csv").exists():
            print(f"writing inputs to {root} ...", flush=True)
            make_inputs(root, size)
        if args.generate_only:
            return
        for d in ("labels", "partitions"):
            shutil.rmtree(root / d, ignore_errors=True)
        (root / "partitions").mkdir()
        out_json = root / "worker.json"
        env = dict(os.environ, OMP_NUM_THREADS="2")
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "--dir", str(root), "--worker", str(out_json)], check=True, env=env
        )
        res = json.loads(out_json.read_text())
        res["child_wall_s"] = time.perf_counter() - t
        res["child_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        res["size"] = {"n": size["n"], "ls": size["ls"], "lc": size["lc"]}
        res["images_per_s"] = res["rows"] / res["relabel_s"]
        for key in ("ls", "lc"):
            res[f"speedup_vs_strips_{key}"] = res[f"baseline_strips_{key}_s"] / res[f"sample_{key}_s"]
            res[f"speedup_vs_per_point_{key}"] = (res["rows"] / res[f"sample_{key}_s"]) / res[
                f"baseline_per_point_{key}_pts_per_s"
            ]
        res["target_met"] = bool(res["relabel_s"] <= 60 and res["relabel_peak_rss_gb"] <= 4)
        outdir = REPO / "bench" / "out"
        outdir.mkdir(parents=True, exist_ok=True)
        name = "bench_relabel_small.json" if args.small else "bench_relabel.json"
        (outdir / name).write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res, indent=2))
        print(
            f"relabel {res['rows']:,} images: {res['relabel_s']:.1f} s "
            f"({res['images_per_s']:,.0f} images/s), "
            f"peak RSS {res['relabel_peak_rss_gb']:.2f} GB; partitions {res['partitions_s']:.1f} s; "
            f"LC sampling {res['speedup_vs_strips_lc']:.1f}x faster than full-width strips"
        )
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
