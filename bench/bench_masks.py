"""Benchmark of the mask stage at real sizes on synthetic full-size inputs (DESIGN 7 and 10).

    python bench/bench_masks.py                        # full size: LandScan 21600 x 43200, LC 64800 x 129600
    python bench/bench_masks.py --grids 5400 21600     # ... on the paper's grid and the 1 km grid
    python bench/bench_masks.py --small                # 1/10 scale (grids 540, and 2160 with --grids)

The same native inputs serve every grid: at 5400 LandScan is averaged 4 x 4 and the land cover 12 x 12; at
21600 (LandScan's own 30 arc-second grid) LandScan is taken as is and the land cover by 3 x 3 block mode.

Writes the inputs to a temporary folder (several GB at full size; deleted afterwards unless ``--keep``),
then runs each step in its own process (so that its peak RSS is its own): LandScan mean + buckets, LC mode,
S2 rasterisation of the real 12,893-cell fine partition (or a synthetic one when the peer data are absent)
with absorption, atoms (streamed: windowed mask reads, index in a temporary file), then evaluation on the
written atoms (``eval``: Alg. 1-3 and the top-1 of 2,048 images x 10 methods, with the atom index in memory up
to 5400 and read by windows at 21600, incl. the one-time pixel-order file of the top-1 fallback). Baselines
measured in the same run: s2sphere on a sample of pixel centres (ratio
per point), and the LC mode's naive per-class 4-D reshape counting on one strip (ratio to ``block_counts``).
Results: printed and written to ``bench/out/bench_masks[_small].json`` (one entry per grid).
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: Peer data folder (its README lists the files): ``$GEOENS_PEERS``, else ``../shared/reference/peers``.
PEERS = Path(os.environ.get("GEOENS_PEERS", REPO.parent / "shared" / "reference" / "peers"))
REAL_FINE = PEERS / "GeoEstimation" / "geo-cells" / "cells_50_1000.csv"


def peak_rss_mb() -> float:
    """Peak RSS of this process image (VmHWM; ru_maxrss would include the parent's peak across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------------------------------
# synthetic inputs, written in strips
# ---------------------------------------------------------------------------------------------------


def write_strips(path: Path, h: int, w: int, dtype: str, nodata: int, make_strip, strip: int) -> None:
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_bounds
    from rasterio.windows import Window

    prof = {
        "driver": "GTiff",
        "height": h,
        "width": w,
        "count": 1,
        "dtype": dtype,
        "crs": CRS.from_epsg(4326),
        "transform": from_bounds(-180, -90, 180, 90, w, h),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "zlevel": 1,
        "num_threads": "ALL_CPUS",
        "BIGTIFF": "YES",
    }
    with rasterio.open(path, "w", **prof) as dst:
        for r0 in range(0, h, strip):
            n = min(strip, h - r0)
            dst.write(make_strip(r0, n), 1, window=Window(0, r0, w, n))


def land_of(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """A smooth pseudo-continent pattern (True = land), about a third of the sphere; separable trig only."""
    la, lo = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
    # sin(2 lo + 1) cos(3 la) + 0.6 sin(5 lo - 2 la), expanded so that only 1-D trig is computed
    v = np.sin(2 * lo + 1.0) * np.cos(3 * la)
    v = v + 0.6 * (np.sin(5 * lo) * np.cos(2 * la) - np.cos(5 * lo) * np.sin(2 * la))
    return v > 0.35


def make_landscan(path: Path, h: int, w: int) -> None:
    from geoens.core.constants import LANDSCAN_NODATA

    lon = -180 + (np.arange(w) + 0.5) * 360 / w
    # heavy-tailed people counts from uniform uint16 through a quantile table (half the cells empty)
    q = (np.arange(2**16) + 0.5) / 2**16
    lut = np.where(q < 0.5, 0, np.minimum(3.0 * ((1 - (q - 0.5) * 2) ** (-1 / 1.2) - 1), 2e5)).astype(
        np.int32
    )

    def strip(r0: int, n: int) -> np.ndarray:
        rng = np.random.default_rng(r0)
        lat = 90 - (np.arange(r0, r0 + n) + 0.5) * 180 / h
        vals = lut[rng.integers(0, 2**16, size=(n, w), dtype=np.uint16)]
        land = land_of(lat[::4], lon[::4])  # land mask at 4 x 4 pixel resolution (cheap)
        vals[~np.repeat(np.repeat(land, 4, 0), 4, 1)[:n, :w]] = LANDSCAN_NODATA
        return vals

    write_strips(path, h, w, "int32", LANDSCAN_NODATA, strip, 1080)


def make_landcover(path: Path, h: int, w: int) -> None:
    codes = np.array([10, 11, 20, 30, 40, 50, 60, 61, 70, 80, 90, 100, 110, 120, 130, 140, 150, 160, 170,
                      180, 190, 200, 201, 210, 220], dtype=np.uint8)  # fmt: skip
    lon = -180 + (np.arange(w) + 0.5) * 360 / w

    def strip(r0: int, n: int) -> np.ndarray:
        rng = np.random.default_rng(r0)
        lat = 90 - (np.arange(r0, r0 + n) + 0.5) * 180 / h
        # patches of 6 x 6 native pixels with a random class, plus ~6% per-pixel noise
        pr = rng.integers(0, codes.size, size=(-(-n // 6), -(-w // 6)), dtype=np.uint8)
        pr[~land_of(lat[::6], lon[::6])] = codes.size - 2  # water (210) off the continents
        idx = np.repeat(np.repeat(pr, 6, 0), 6, 1)[:n, :w]
        r = rng.integers(0, 256, size=(n, w), dtype=np.uint8)
        idx = np.where(r < 16, r % codes.size, idx)
        return codes[idx]

    write_strips(path, h, w, "uint8", 0, strip, 2160)


def synthetic_partition(path: Path) -> None:
    import s2sphere

    rng = np.random.default_rng(0)
    cells = [s2sphere.CellId.from_face_pos_level(f, 0, 0) for f in range(6)]
    out = []
    while cells:
        c = cells.pop()
        if c.level() < 12 and rng.random() < (0.95 if c.level() < 3 else 0.5):
            cells.extend(c.children())
        else:
            out.append(c)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("num_images: 0\nmin_concept_probability: ---\n")
        fh.write("class_label,hex_id,imgs_per_cell,latitude_mean,longitude_mean\n")
        for k, c in enumerate(out):
            ll = c.to_lat_lng()
            fh.write(f"{k},{c.to_token()},1,{ll.lat().degrees},{ll.lng().degrees}\n")


# ---------------------------------------------------------------------------------------------------
# steps (each run in a child process)
# ---------------------------------------------------------------------------------------------------


def step(name: str, work: Path, h: int) -> dict[str, float]:
    from geoens.core.grid import Grid
    from geoens.geo import atoms, landcover, masks, rasters, s2, s2mask
    from geoens.geo.partitions import read_partition_csv

    g = Grid(h, 2 * h)
    m = work / "masks"
    res: dict[str, float] = {}
    t = time.perf_counter()
    if name == "ls":
        masks.make_ls_mask(work / "landscan.tif", None, g, m / "ls.tif", None, fallback=[0, 1, 2, 3, 5])
    elif name == "lc":
        masks.make_lc_mask(work / "landcover.tif", g, m / "lc.tif", None)
    elif name == "lc_baseline":
        # one strip: block_counts (byte masks, rows then columns) vs a naive 4-D reshape sum per class
        with rasters.open_checked(work / "landcover.tif", "landcover") as lc:
            f = lc.height // h
            cls = landcover.lc_class_lut()[lc.read_rows(0, 16 * f)]
        t0 = time.perf_counter()
        a = landcover.block_counts(cls, f, 7)
        res["block_counts_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        b = np.stack([(cls == c).reshape(16, f, -1, f).sum(axis=(1, 3)) for c in range(7)])
        res["naive_per_class_s"] = time.perf_counter() - t0
        assert np.array_equal(a, b)
        res["speedup"] = res["naive_per_class_s"] / res["block_counts_s"]
    elif name == "s2":
        part = REAL_FINE if REAL_FINE.exists() else work / "fine.csv"
        t0 = time.perf_counter()
        p = read_partition_csv(part)
        lab = s2mask.rasterize_partition(p, g)
        res["rasterize_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        table = s2mask.absorption_table(p, lab, g)
        res["absorption_s"] = time.perf_counter() - t1
        res["cells"] = float(len(p))
        res["absorbed"] = float(len(table))
        rasters.write_label_raster(m / "s2_fine.tif", lab, g)
        table.to_parquet(m / "s2_absorption.parquet", index=False)
    elif name == "s2_baseline":
        rng = np.random.default_rng(0)
        n = 20_000
        lat, lon = np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)
        import s2sphere

        t0 = time.perf_counter()
        ref = [
            s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(a, b)).id()
            for a, b in zip(lat, lon, strict=True)
        ]
        res["s2sphere_s_per_million"] = (time.perf_counter() - t0) / n * 1e6
        big_lat = np.repeat(lat, 50)
        big_lon = np.repeat(lon, 50)
        t0 = time.perf_counter()
        ids = s2.latlng_to_leaf(big_lat, big_lon)
        res["numpy_s_per_million"] = (time.perf_counter() - t0) / big_lat.size * 1e6
        res["exact"] = float(np.array_equal(ids[::50], np.array(ref, dtype=np.uint64)))
        res["speedup"] = res["s2sphere_s_per_million"] / res["numpy_s_per_million"]
    elif name == "atoms":
        table_info = atoms.make_atoms(
            m / "s2_fine.tif", m / "ls.tif", m / "lc.tif", g, work / "atoms.parquet", work / "atom_index.tif"
        )
        res.update(table_info)
    elif name == "eval":
        res.update(eval_step(work, m, g))
    else:
        raise SystemExit(f"unknown step {name}")
    res["time_s"] = time.perf_counter() - t
    ru = resource.getrusage(resource.RUSAGE_SELF)
    res["cpu_s"] = ru.ru_utime + ru.ru_stime  # of the whole step process (wall time grows with others' load)
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def eval_step(work: Path, m: Path, g: object, n_img: int = 2048) -> dict[str, float]:
    """Evaluation on the written atoms: CPU per image-method, set-up costs (see the module docstring)."""
    import pandas as pd

    from geoens.core.constants import N_CLASSES
    from geoens.evaluation.evaluator import Evaluator
    from geoens.evaluation.methods import all_methods
    from geoens.evaluation.testset import read_absorption
    from geoens.geo.atoms import read_atoms
    from geoens.geo.lookup import TiledPixelLookup, open_pixel_lookup

    res: dict[str, float] = {}
    t = time.perf_counter()
    atoms_t = read_atoms(work / "atoms.parquet")
    lookup = open_pixel_lookup(
        work / "atom_index.tif", work / "atoms.parquet", atoms_t.n, workdir=work / "px"
    )
    res["tiled_index"] = float(isinstance(lookup, TiledPixelLookup))
    res["open_s"] = time.perf_counter() - t
    absorption = read_absorption(m / "s2_absorption.parquet")
    n_cells = len(pd.read_csv(REAL_FINE if REAL_FINE.exists() else work / "fine.csv", skiprows=2))
    ev = Evaluator(atoms_t, {"s2": n_cells, **N_CLASSES}, lookup, g.total_area(), absorption)  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    land = np.flatnonzero(atoms_t.labels["s2"] >= 0)
    w = atoms_t.area[land] / atoms_t.area[land].sum()
    pick = rng.choice(land, size=n_img, p=w)  # ground truths: atoms by area, at their representative pixel
    t = time.perf_counter()
    gt = lookup.atom_at(atoms_t.rep_lat[pick], atoms_t.rep_lon[pick])
    res["gt_lookup_s"] = time.perf_counter() - t
    assert np.array_equal(gt, pick)
    t = time.perf_counter()
    lookup.pixels_of(np.array([0]))
    res["pixel_order_s"] = time.perf_counter() - t

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    methods = all_methods(["geoest", "geoclip"])
    cpu = 0.0
    batch = 256
    for b0 in range(0, n_img, batch):
        n = min(batch, n_img - b0)
        probs = {
            "s2": softmax(rng.normal(scale=3.0, size=(n, n_cells))),
            "ls": softmax(rng.normal(scale=1.5, size=(n, 4))),
            "lc": softmax(rng.normal(scale=1.5, size=(n, 7))),
        }
        c0 = time.process_time()
        sc = ev.scores(probs)
        for ms in (methods[:5], methods[5:]):
            ev.evaluate_many(ms, sc, gt[b0 : b0 + n])
        cpu += time.process_time() - c0
    res["cpu_per_image_method_s"] = cpu / (n_img * len(methods))
    res["atoms"] = float(atoms_t.n)
    res["groups_s2_ls_lc"] = float(ev.groups(("s2", "ls", "lc")).n)
    return res


BASELINES = ("s2_baseline", "lc_baseline")


def run_step(name: str, work: Path, h: int) -> dict[str, float]:
    """Run one step in its own process (its peak RSS is its own); print and return its results."""
    cmd = [sys.executable, __file__, "--step", name, "--workdir", str(work), "--height", str(h)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"step {name} (grid {h}) failed:\n{proc.stderr[-3000:]}")
    res: dict[str, float] = json.loads(line[0][7:])
    print(f"{h:6d} {name:12s} " + ", ".join(f"{k}={v:.4g}" for k, v in res.items()), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="1/10 scale (grid 540 x 1080)")
    ap.add_argument("--keep", action="store_true", help="keep the generated inputs")
    ap.add_argument("--workdir", type=Path, default=None, help="folder for the inputs (default: a temp dir)")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--height", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--grids", type=int, nargs="+", default=None, help="grid heights (default 5400 / 540)")
    args = ap.parse_args()
    if args.step:
        work = args.workdir
        g_dir = work / f"grid{args.height}"
        print(
            "RESULT "
            + json.dumps(step(args.step, g_dir if args.step not in BASELINES else work, args.height))
        )
        return
    native = 2160 if args.small else 21600  # LandScan rows; the land cover has 3x
    grids = args.grids or [native // 4]
    for h in grids:
        if native % h:
            raise SystemExit(f"grid height {h} does not divide the native {native}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_masks_", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {
        "grids": [[h, 2 * h] for h in grids],
        "landscan": [native, 2 * native],
        "landcover": [3 * native, 6 * native],
    }
    try:
        t = time.perf_counter()
        if not (work / "landscan.tif").exists():
            make_landscan(work / "landscan.tif", native, 2 * native)
        if not (work / "landcover.tif").exists():
            make_landcover(work / "landcover.tif", 3 * native, 6 * native)
        if not REAL_FINE.exists():
            print(f"NOTE: {REAL_FINE} absent: a synthetic S2 partition replaces the real one", flush=True)
            synthetic_partition(work / "fine.csv")
        results["generate_s"] = time.perf_counter() - t
        results["partition"] = str(REAL_FINE if REAL_FINE.exists() else "synthetic")
        print(f"inputs in {work} ({results['generate_s']:.0f} s)", flush=True)
        for name in BASELINES:
            results[name] = run_step(name, work, grids[0])
        for h in grids:
            g_dir = work / f"grid{h}"
            (g_dir / "masks").mkdir(parents=True, exist_ok=True)
            for link in ("landscan.tif", "landcover.tif", "fine.csv"):
                if (work / link).exists() and not (g_dir / link).exists():
                    (g_dir / link).symlink_to(work / link)
            per: dict[str, object] = {}
            for name in ("s2", "ls", "lc", "atoms", "eval"):
                per[name] = run_step(name, work, h)
            results[str(h)] = per
            for name in ("atom_index.tif", "px"):  # the big per-grid files go before the next grid
                p = g_dir / name
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    out = REPO / "bench" / "out" / ("bench_masks_small.json" if args.small else "bench_masks.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
