"""Run every benchmark, one after another: ``python bench/run_all.py [--small]``.

Each benchmark prints its own times, peak memory and ratios against the baseline it measures in the same run,
and writes ``bench/out/<name>.json``. Full size needs ~12 GB of free disk under /tmp (synthetic LandScan- and
ESA-CCI-size rasters, deleted afterwards) and a machine with nothing else running.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCHES = (
    "bench_masks.py",
    "bench_relabel.py",
    "bench_rva.py",
    "bench_train.py",
    "bench_fingerprint.py",
    "bench_calibrate.py",
    "bench_external.py",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="quick, scaled-down runs")
    parser.add_argument("--only", nargs="*", default=None, help="names of benchmarks to run")
    args = parser.parse_args()
    here = Path(__file__).resolve().parent
    failed = []
    for name in BENCHES:
        if args.only and not any(o in name for o in args.only):
            continue
        cmd = [sys.executable, str(here / name), *(["--small"] if args.small else [])]
        print(f"\n=== {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        if subprocess.run(cmd, check=False).returncode != 0:
            failed.append(name)
        print(f"=== {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
