"""Benchmark: external geolocators made into cell predictions, and `geoens rva` on published predictions.

Grid 5400 x 10800 (``--small``: 540 x 1080) with the real fine partition (GeoEstimation's cells_50_1000.csv
from the peer data, ``$GEOENS_PEERS`` or ``../shared/reference/peers``; a synthetic block partition, with a
message, when absent). In the same run:

1. a gallery softmax -> cells: ``--images`` images (50,000; ``--small``: 2,000) x GeoCLIP's 100K GPS gallery
   (``geo-clip/.../coordinates_100K.csv`` from the peer data; a seeded uniform gallery when absent), softmax
   weights of random logits drawn per chunk of 512 images (not timed), binned by
   ``geoens.evaluation.external.gallery_to_cells``; baseline: one ``np.bincount`` per image;
2. single points with a vMF kernel -> cells: the same number of points by
   ``geoens.evaluation.external.vmf_cell_probs`` in chunks of 2,048 (results discarded, as a streaming
   writer would); baseline: the kernel per image from haversine distances to every cell centre;
3. ``geoens rva`` on GeoEstimation's 2,997 Im2GPS3k rows of one model, as a subprocess (start-up included);
   baseline: the same accuracies by a plain Python loop over the CSV rows (no package);
4. ``geoens rva`` on a ``cells`` file of those 2,997 images over the real partition with no results folder
   (the command rasterises the partition on this grid), as a subprocess; baseline: Algorithms 1 and 3 in
   raster form per image (a few images, extrapolated), whose areas are also compared.

Ratios are per-image CPU seconds, baseline over ours (wall time on a shared machine is noisy), except in
(4): wall time of the baseline (one thread) over the command's wall time (its CPU time is printed beside).
Targets (issue 21, 2 cores): (1) <= 60 s and peak <= 4 GB at full size; (2) <= 60 s; (3) <= 10 s.
Usage: python bench/bench_external.py [--small] [--images N]. Writes bench/out/bench_external[_small].json.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from geoens.core.grid import Grid, haversine_km, latlon_to_xyz
from geoens.evaluation.external import gallery_to_cells, vmf_cell_probs

REPO = Path(__file__).resolve().parents[1]
PEERS = Path(os.environ.get("GEOENS_PEERS", REPO.parent / "shared" / "reference" / "peers"))
CELLS = PEERS / "GeoEstimation" / "geo-cells" / "cells_50_1000.csv"
GALLERY = PEERS / "geo-clip" / "geoclip" / "model" / "gps_gallery" / "coordinates_100K.csv"
IM2GPS3K = PEERS / "GeoEstimation" / "results" / "im2gps3k" / "base_M-m.csv"
TRUTH3K = PEERS / "GeoEstimation" / "meta" / "im2gps3k_places365.csv"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def fine_labels(grid: Grid) -> tuple[np.ndarray, int, str]:
    """The fine partition's label raster on the grid (synthetic blocks without the peer file)."""
    if CELLS.exists():
        from geoens.geo.partitions import read_partition_csv
        from geoens.geo.s2mask import rasterize_partition

        part = read_partition_csv(CELLS)
        return rasterize_partition(part, grid), len(part), CELLS.name
    print(f"NOTE: {CELLS} absent (set GEOENS_PEERS): a synthetic block partition replaces the real one")
    b = max(1, grid.height // 100)
    rows, cols = np.divmod(np.arange(grid.height * grid.width), grid.width)
    lab = ((rows // b) * (grid.width // b) + (cols // b)).reshape(grid.shape).astype(np.int32)
    return lab, int(lab.max()) + 1, "synthetic blocks"


def cell_geometry(lab: np.ndarray, n: int, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted mean direction and area of each cell, by strips."""
    s, area = np.zeros((n, 3)), np.zeros(n)
    lon = grid.lon_centers()
    for r0 in range(0, grid.height, 256):
        r1 = min(grid.height, r0 + 256)
        lat = grid.lat_centers()[r0:r1]
        a = np.broadcast_to(grid.row_areas()[r0:r1, None], (r1 - r0, grid.width)).ravel()
        xyz = latlon_to_xyz(np.repeat(lat, grid.width), np.tile(lon, r1 - r0))
        lb = lab[r0:r1].ravel()
        ok = lb >= 0
        area += np.bincount(lb[ok], weights=a[ok], minlength=n)
        for k in range(3):
            s[:, k] += np.bincount(lb[ok], weights=a[ok] * xyz[ok, k], minlength=n)
    norm = np.linalg.norm(s, axis=1, keepdims=True)
    return np.divide(s, norm, out=np.zeros_like(s), where=norm > 0), area


def gallery(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    if GALLERY.exists():
        g = np.loadtxt(GALLERY, delimiter=",", skiprows=1)
        return g[:, 0], g[:, 1], GALLERY.name
    print(f"NOTE: {GALLERY} absent: a seeded uniform gallery of 100,000 points replaces it")
    z = rng.uniform(-1, 1, 100_000)
    return np.rad2deg(np.arcsin(z)), rng.uniform(-180, 180, 100_000), "synthetic uniform"


def softmax_chunk(rng: np.random.Generator, n: int, g: int) -> np.ndarray:
    x = rng.standard_normal((n, g), dtype=np.float32) * np.float32(3.0)
    x -= x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    return x


def bench_gallery(args: argparse.Namespace, grid: Grid, lab: np.ndarray, n_cells: int) -> dict[str, object]:
    rng = np.random.default_rng(0)
    glat, glon, source = gallery(rng)
    cell = lab[grid.pixel_of(glat, glon)].astype(np.int64)
    t_fast, c_fast, t_naive, n_naive = 0.0, 0.0, 0.0, 0
    checked = False
    for a in range(0, args.images, 512):
        w = softmax_chunk(rng, min(512, args.images - a), glat.size)
        t0, c0 = time.perf_counter(), cpu_s()
        out = gallery_to_cells(w, cell, n_cells)
        t_fast += time.perf_counter() - t0
        c_fast += cpu_s() - c0
        if n_naive < args.naive_images:
            k = min(64, args.naive_images - n_naive)
            t0 = cpu_s()
            ref = np.stack(
                [np.bincount(cell[cell >= 0], weights=wi[cell >= 0], minlength=n_cells) for wi in w[:k]]
            )
            t_naive += cpu_s() - t0
            n_naive += k
            if not checked:
                ref /= ref.sum(axis=1, keepdims=True)
                assert np.allclose(out[:k], ref, atol=1e-6), "gallery_to_cells disagrees with the baseline"
                checked = True
    per_fast, per_naive = c_fast / args.images, t_naive / n_naive
    print(
        f"gallery ({source}, {glat.size:,} points, {int((cell < 0).sum())} in no cell) -> {n_cells:,} cells: "
        f"{args.images:,} images in {t_fast:.1f} s wall ({c_fast:.1f} s CPU); baseline (bincount "
        f"per image, CPU) {per_naive * 1e3:.2f} ms/image; ratio {per_naive / per_fast:.1f}x; "
        f"peak RSS {peak_rss_mb():.0f} MB"
    )
    return {
        "gallery": source,
        "images": args.images,
        "wall_s": t_fast,
        "cpu_s": c_fast,
        "baseline_ms_per_image": per_naive * 1e3,
        "ratio": per_naive / per_fast,
        "peak_rss_mb": peak_rss_mb(),
    }


def bench_vmf(args: argparse.Namespace, grid: Grid, lab: np.ndarray, n_cells: int) -> dict[str, object]:
    rng = np.random.default_rng(1)
    xyz, area = cell_geometry(lab, n_cells, grid)
    z = rng.uniform(-1, 1, args.images)
    lat, lon = np.rad2deg(np.arcsin(z)), rng.uniform(-180, 180, args.images)
    kappa = 400.0
    t0, c0 = time.perf_counter(), cpu_s()
    first = None
    for a in range(0, args.images, 2048):
        p = vmf_cell_probs(lat[a : a + 2048], lon[a : a + 2048], kappa, xyz, area)
        if first is None:
            first = p[:8].copy()
    t_fast, c_fast = time.perf_counter() - t0, cpu_s() - c0
    clat = np.rad2deg(np.arcsin(np.clip(xyz[:, 2], -1, 1)))
    clon = np.rad2deg(np.arctan2(xyz[:, 1], xyz[:, 0]))
    n_naive = min(args.naive_images, args.images)
    t0 = cpu_s()
    ref = []
    for i in range(n_naive):
        d = haversine_km(lat[i], lon[i], clat, clon, 1.0)
        k = np.where(area > 0, area * np.exp(kappa * (np.cos(d) - 1.0)), 0.0)
        ref.append(k / k.sum())
    t_naive = cpu_s() - t0
    assert first is not None and np.allclose(first, np.stack(ref[:8]), rtol=1e-4, atol=1e-7)
    per_fast, per_naive = c_fast / args.images, t_naive / n_naive
    print(
        f"vMF points -> {n_cells:,} cells (kappa {kappa:g}): {args.images:,} points in {t_fast:.1f} s wall "
        f"({c_fast:.1f} s CPU); baseline (haversine kernel per image, CPU) {per_naive * 1e3:.2f} ms/image; "
        f"ratio {per_naive / per_fast:.1f}x"
    )
    return {
        "images": args.images,
        "wall_s": t_fast,
        "cpu_s": c_fast,
        "baseline_ms_per_image": per_naive * 1e3,
        "ratio": per_naive / per_fast,
    }


def naive_accuracy(path: Path) -> list[float]:
    """The baseline: GeoEstimation's accuracies by a plain loop over the CSV rows (up to the blank line)."""
    hits = [0] * 5
    n = 0
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n\n", 1)[0].splitlines()
        for row in csv.DictReader(lines):
            p1, p2 = math.radians(float(row["gt_lat"])), math.radians(float(row["predicted_lat"]))
            dl = math.radians(float(row["predicted_long"]) - float(row["gt_long"]))
            a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
            d = 2 * 6371.0 * math.asin(math.sqrt(a))
            hits = [h + (d <= r) for h, r in zip(hits, (1, 25, 200, 750, 2500), strict=True)]
            n += 1
    return [h / n for h in hits]


def bench_cli() -> dict[str, object]:
    if not IM2GPS3K.exists():
        print(f"NOTE: {IM2GPS3K} absent: the geoens rva timing is skipped")
        return {"skipped": True}
    t0 = time.perf_counter()
    acc = naive_accuracy(IM2GPS3K)
    t_naive = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-m",
            "geoens.apps.cli",
            "rva",
            str(IM2GPS3K),
            "--truth",
            str(TRUTH3K),
            "--out",
            out,
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        t_cli = time.perf_counter() - t0
        with open(Path(out) / "table.csv", encoding="utf-8") as f:
            row = next(csv.DictReader(f))
    assert all(abs(float(row[k]) - a) < 1e-12 for k, a in zip(
        ("acc_1km", "acc_25km", "acc_200km", "acc_750km", "acc_2500km"), acc, strict=True))  # fmt: skip
    print(
        f"geoens rva on {IM2GPS3K.name} (2,997 rows, start-up, country and figure included): {t_cli:.2f} s; "
        f"baseline (a Python loop, accuracies only, no start-up) {t_naive:.3f} s"
    )
    return {"wall_s": t_cli, "baseline_s": t_naive}


def cells_file(path: Path, kappa: float = 200.0) -> tuple[list[str], np.ndarray]:
    """A ``cells`` predictions file over the real partition for the 2,997 Im2GPS3k images (not timed).

    Each image's probabilities are a softmax of ``kappa * cos`` between the published model's predicted point
    (``IM2GPS3K``) and every cell's mean location: a plausible cell classifier's output, written as a model
    would write it (float32 lists).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from geoens.geo.partitions import read_partition_csv

    part = read_partition_csv(CELLS)
    with open(IM2GPS3K, encoding="utf-8") as f:
        rows = list(csv.DictReader(f.read().split("\n\n", 1)[0].splitlines()))
    ids = [r["img_id"] for r in rows]
    pred = latlon_to_xyz(np.array([float(r["predicted_lat"]) for r in rows]),
                         np.array([float(r["predicted_long"]) for r in rows]))  # fmt: skip
    logit = kappa * (pred @ latlon_to_xyz(np.asarray(part.lat_mean), np.asarray(part.lon_mean)).T)
    logit -= logit.max(axis=1, keepdims=True)
    p = np.exp(logit)
    p = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    pq.write_table(pa.table({"image_id": ids, "probs": pa.array(list(p), pa.list_(pa.float32()))}), path)
    return ids, p


def raster_areas(
    grid: Grid, lab: np.ndarray, n_cells: int, p: np.ndarray, lat: np.ndarray, lon: np.ndarray
) -> np.ndarray:
    """The baseline: Algorithms 1 and 3 pixel by pixel, one image at a time (absorbed cells' mass moved)."""
    from geoens.geo.partitions import read_partition_csv
    from geoens.geo.s2mask import absorption_table

    table = absorption_table(read_partition_csv(CELLS), lab, grid)
    area_px = np.broadcast_to(grid.row_areas()[:, None], grid.shape)
    ok = lab >= 0
    cell_area = np.bincount(lab[ok], weights=area_px[ok], minlength=n_cells)
    r = np.clip(((90.0 - lat) / (180.0 / grid.height)).astype(int), 0, grid.height - 1)
    c = np.clip(((lon + 180.0) / (360.0 / grid.width)).astype(int), 0, grid.width - 1)
    out = np.empty(len(p))
    for k in range(len(p)):
        q = p[k].astype(np.float64)
        np.add.at(q, table["target"].to_numpy(), q[table["cell"].to_numpy()])
        dens = np.divide(q, cell_area, out=np.zeros(n_cells), where=cell_area > 0)
        px = np.where(ok, dens[np.maximum(lab, 0)], 0.0)
        g = px[r[k], c[k]]
        out[k] = area_px[px >= g].sum() if g > 0 else np.nan
    return out


def bench_cells_alone(
    args: argparse.Namespace, grid: Grid, lab: np.ndarray, n_cells: int
) -> dict[str, object]:
    """``geoens rva`` on a cells file over the real partition, no results folder, on this grid."""
    if not (CELLS.exists() and IM2GPS3K.exists()):
        print("NOTE: the peer partition or Im2GPS3k results are absent: the cells-alone timing is skipped")
        return {"skipped": True}
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "cells3k.parquet"
        ids, p = cells_file(f)
        cmd = [sys.executable, "-m", "geoens.apps.cli", "rva", str(f), "--kind", "cells", "--partition",
               str(CELLS), "--grid-rows", str(grid.height), "--radius-km", repr(grid.earth_radius_km),
               "--truth", str(TRUTH3K), "--no-country", "--out", str(Path(tmp) / "out")]  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        per = pd.read_parquet(Path(tmp) / "out" / "per_image.parquet")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    per = per[per["method"] == "cells3k"].set_index("image_id")
    truth = pd.read_csv(TRUTH3K).set_index("IMG_ID").loc[ids]
    k = min(args.naive_images, 8 if not args.small else 64)
    t0 = time.perf_counter()
    ref = raster_areas(grid, lab, n_cells, p[:k], truth["LAT"].to_numpy()[:k], truth["LON"].to_numpy()[:k])
    t_ref = (time.perf_counter() - t0) / k * len(ids)
    got = per.loc[ids[:k], "area_km2"].to_numpy().copy()
    got[per.loc[ids[:k], "zero_prob"].to_numpy()] = np.nan
    assert np.array_equal(np.isnan(got), np.isnan(ref)), "the command and the raster form disagree on misses"
    diff = float(np.nanmax(np.abs(got - ref) / ref))
    print(
        f"geoens rva, cells over {n_cells:,} cells, no results folder ({len(ids):,} images, grid rasterised "
        f"in the command): {wall:.1f} s wall, {cpu:.1f} s CPU, peak {after.ru_maxrss / 1024**2:.2f} GB; "
        f"baseline (the raster form per image, {k} images, extrapolated) {t_ref:.0f} s = {t_ref / wall:.0f}x "
        f"slower; max rel diff of the areas {diff:.1e}"
    )
    return {"wall_s": wall, "cpu_s": cpu, "peak_gb": after.ru_maxrss / 1024**2, "baseline_s": t_ref,
            "ratio": t_ref / wall, "max_rel_diff": diff}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="540 x 1080 grid, 2,000 images")
    parser.add_argument("--images", type=int, default=None, help="images (default 50,000; --small 2,000)")
    parser.add_argument("--naive-images", type=int, default=256, help="images the baselines run on")
    args = parser.parse_args()
    args.images = args.images or (2000 if args.small else 50_000)
    grid = Grid(540, 1080) if args.small else Grid(5400, 10800)
    t0 = time.perf_counter()
    lab, n_cells, source = fine_labels(grid)
    print(
        f"grid {grid.height} x {grid.width}, partition {source} ({n_cells:,} cells), "
        f"{time.perf_counter() - t0:.1f} s"
    )
    res = {"grid": list(grid.shape), "partition": source, "n_cells": n_cells}
    res["gallery"] = bench_gallery(args, grid, lab, n_cells)
    res["vmf"] = bench_vmf(args, grid, lab, n_cells)
    res["rva_cli"] = bench_cli()
    res["cells_alone"] = bench_cells_alone(args, grid, lab, n_cells)
    out = REPO / "bench" / "out" / f"bench_external{'_small' if args.small else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
