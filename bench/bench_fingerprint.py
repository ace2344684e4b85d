"""Benchmark the input-folder fingerprint (``geoens.core.io.folder_fingerprint``) at 10^5 and 10^6 files.

    python bench/bench_fingerprint.py            # 100,000 and 1,000,000 files
    python bench/bench_fingerprint.py --small    # 10,000 and 100,000 files

The files (a few bytes each, 1,000 per subfolder, like an image folder of MP-16 size) are written to a
temporary folder under /tmp and deleted at the end. Each rule that reads an image or shard folder carries its
fingerprint as a Snakemake param, so it is computed when Snakemake builds the DAG (once per process, cached).
Baseline measured in the same run: listing the same file names with ``geoens.data.shards.folder_ids`` (what
the relabel stage does anyway to find the images that exist), so the ratio is the cost of the extra ``stat``
per file and the hashing. Both run with a warm page cache (the files were just written); a cold cache on a
network file system costs more for both. Results go to ``bench/out/bench_fingerprint[_small].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from geoens.core import io
from geoens.data.shards import folder_ids

PER_FOLDER = 1000


def make_files(root: Path, n: int) -> None:
    """``n`` tiny files, ``PER_FOLDER`` per subfolder."""
    for start in range(0, n, PER_FOLDER):
        sub = root / f"{start // PER_FOLDER:05d}"
        sub.mkdir(parents=True)
        for i in range(start, min(n, start + PER_FOLDER)):
            fd = os.open(sub / f"{i:09d}.jpg", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"x" * (i % 7))
            os.close(fd)


def best_of(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Least wall time of ``repeats`` calls (s)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def fingerprint_uncached(path: Path) -> str:
    io._FINGERPRINTS.clear()
    return io.folder_fingerprint(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="10^4 and 10^5 files")
    args = parser.parse_args()
    sizes = [10_000, 100_000] if args.small else [100_000, 1_000_000]
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_fingerprint_", dir="/tmp"))
    try:
        for n in sizes:
            root = tmp / f"n{n}"
            t0 = time.perf_counter()
            make_files(root, n)
            made = time.perf_counter() - t0
            repeats = 3
            listing = best_of(lambda root=root: folder_ids(root), repeats)
            fingerprint = best_of(lambda root=root: fingerprint_uncached(root), repeats)
            t0 = time.perf_counter()
            io.folder_fingerprint(root)  # cached: what every further rule of the same run pays
            cached = time.perf_counter() - t0
            row = {
                "files": n,
                "write_files_s": round(made, 2),
                "listing_s": round(listing, 3),
                "fingerprint_s": round(fingerprint, 3),
                "fingerprint_us_per_file": round(1e6 * fingerprint / n, 2),
                "ratio_to_listing": round(fingerprint / listing, 2),
                "cached_s": cached,
                "load_avg_1min": os.getloadavg()[0],
            }
            results.append(row)
            print(
                f"{n:>9,} files: fingerprint {fingerprint:.2f} s ({row['fingerprint_us_per_file']} us/file), "
                f"listing names only {listing:.2f} s -> {row['ratio_to_listing']}x; "
                f"cached {cached * 1e6:.0f} us; load {row['load_avg_1min']:.1f}"
            )
            shutil.rmtree(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(__file__).resolve().parent / "out" / f"bench_fingerprint{'_small' if args.small else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"results": results}, indent=2) + "\n")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
