"""Benchmark: the map explorer of a finished run and of a synthetic 50,000-photo test set, size and open time.

Baseline: the explorer of the run given by ``--results`` (the demo: 2 x 500 photos, thumbnails from the
photo folders of ``--config``), built with ``geoens.reports.explorer.build_explorer``. Then a synthetic
results folder with one test set of ``--photos`` photos: the run's atoms, masks and calibration linked in;
the per-image rows, labels and predictions of the run's first test set repeated under new ids, the truths
jittered. For each: build time,
folder size (all of it, and the part the page loads at start), and the open time in headless Chromium with
the network off (until the page says it is ready: every photo drawn; skipped without Chromium), then the
ratios 50,000 / baseline.

Usage: python bench/bench_explorer.py [--results results] [--config config.yaml] [--photos 50000] [--small]
Writes bench/out/bench_explorer[_small].json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geoens.core.config import effective_config
from geoens.reports.explorer import build_explorer, folder_bytes

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from browser import chromium  # noqa: E402  (the tests' headless Chromium helper)


def synthetic_run(results: Path, dest: Path, photos: int, seed: int = 0) -> str:
    """A results folder with one test set of ``photos`` photos made from the run's first test set."""
    rng = np.random.default_rng(seed)
    ts = sorted(p.parent.name for p in (results / "eval").glob("*/per_image.parquet"))[0]
    for part in ("atoms", "masks", "calibration"):
        (dest / part).symlink_to((results / part).resolve())
    per_image = pd.read_parquet(results / "eval" / ts / "per_image.parquet")
    ids = per_image["image_id"].unique()
    pick = rng.integers(0, ids.size, photos)
    new_ids = np.array([f"s{k:06d}_{ids[j]}" for k, j in enumerate(pick)])
    rows = per_image.set_index("image_id")
    big = rows.loc[ids[pick]].reset_index()
    reps = len(big) // photos
    assert reps * photos == len(big), "every photo of the run has the same methods"
    big["image_id"] = np.repeat(new_ids, reps)
    (dest / "eval" / "big").mkdir(parents=True)
    big.to_parquet(dest / "eval" / "big" / "per_image.parquet")
    labels = pq.read_table(results / "labels" / "testsets" / f"{ts}.parquet").to_pandas()
    labels = labels.set_index("image_id")
    lab = labels.loc[ids[pick]].reset_index()
    lab["image_id"] = new_ids
    lab["lat"] = np.clip(lab["lat"] + rng.normal(0, 0.3, photos), -89.9, 89.9)
    lab["lon"] = ((lab["lon"] + rng.normal(0, 0.3, photos) + 180) % 360) - 180
    (dest / "labels" / "testsets").mkdir(parents=True)
    lab_table = pa.Table.from_pandas(lab, preserve_index=False)
    pq.write_table(lab_table, dest / "labels" / "testsets" / "big.parquet")
    (dest / "predictions" / "big").mkdir(parents=True)
    for pred in sorted((results / "predictions" / ts).glob("*.parquet")):
        t = pq.read_table(pred)
        pos = pd.Series(np.arange(t.num_rows), index=t.column("image_id").to_pylist())
        out = t.take(pa.array(pos.loc[ids[pick]].to_numpy()))
        out = out.set_column(out.schema.get_field_index("image_id"), "image_id", pa.array(new_ids))
        pq.write_table(out, dest / "predictions" / "big" / pred.name)
    return ts


def measure(
    results: Path, out: Path, sample: int, driver: Any, images: dict[str, str] | None = None
) -> dict[str, Any]:
    """Build the explorer of ``results`` into ``out``; its size and (with a driver) its open time."""
    t0 = time.perf_counter()
    r = build_explorer(results, out, sample=sample, image_dirs=images)
    build_s = time.perf_counter() - t0
    start = [p for p in out.rglob("*") if p.is_file() and "detail" not in p.parts and "images" not in p.parts]
    rec: dict[str, Any] = {
        "photos": r["photos"],
        "detail": r["detail"],
        "build_s": round(build_s, 2),
        "bytes": folder_bytes(out),
        "bytes_loaded_at_open": sum(p.stat().st_size for p in start),
    }
    if driver is not None:
        times = [chromium.open_page(driver, out / "index.html") for _ in range(3)]
        rec["open_s"] = round(float(np.median(times)), 3)
        rec["console_errors"] = chromium.console_errors(driver)
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results", help="a finished run (the demo's by default)")
    ap.add_argument("--config", default="config.yaml", help="its config (photo folders, for thumbnails)")
    ap.add_argument("--photos", type=int, default=50_000)
    ap.add_argument("--sample", type=int, default=300)
    ap.add_argument("--small", action="store_true", help="5,000 photos")
    args = ap.parse_args()
    photos = 5_000 if args.small else args.photos
    results = Path(args.results)
    reason = chromium.unavailable_reason()
    driver = chromium.start() if reason is None else None
    if reason is not None:
        print(f"open times skipped: {reason}")
    try:
        with tempfile.TemporaryDirectory(prefix="bench_explorer_") as tmp:
            cfg = effective_config([args.config])
            images = {k: v["images"] for k, v in cfg["inputs"]["testsets"].items() if "images" in v}
            base = measure(results, Path(tmp) / "demo_explorer", args.sample, driver, images)
            syn = Path(tmp) / "syn"
            syn.mkdir()
            synthetic_run(results, syn, photos)
            big = measure(syn, Path(tmp) / "big_explorer", args.sample, driver)
    finally:
        if driver is not None:
            driver.quit()
    out = {
        "baseline": base,
        "synthetic": big,
        "ratios": {
            k: round(big[k] / base[k], 2) for k in ("photos", "build_s", "bytes", "open_s") if base.get(k)
        },
        "loadavg": os.getloadavg(),
    }
    print(json.dumps(out, indent=2))
    dest = REPO / "bench" / "out" / f"bench_explorer{'_small' if args.small else ''}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
