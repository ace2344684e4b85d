"""Benchmark: calibration plus calibrated regions for 50,000 images, against Alg. 3 in the same run.

A synthetic world at the demo grid's size (180 x 360, ``--cells`` S2 cells in blocks, smooth-ish LS / LC
labels) gives the atom groups of ``+LS+LC``. Timed, on random predictions:

* baseline: Alg. 3 (the RvA area-to-hit of every image, :func:`geoens.evaluation.evaluator.evaluate_groups`
  without the top-1), the evaluation the workflow already runs;
* calibration + regions: upper sets, the conformal scores ``A(g)``, ``M(g)`` of ``--cal`` calibration
  images, the thresholds of 4 levels x (global + 4 buckets) x (fixed, adaptive), and the region areas and
  coverage of every test image for all 16 (kind, level, global/per-bucket) combinations.

Usage: python bench/bench_calibrate.py [--small] [--images N] [--cal N] [--cells N] [--threads N]
Writes bench/out/bench_calibrate[_small].json (times, the ratio, the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from geoens.core.constants import COVERAGE_LEVELS, N_CLASSES
from geoens.core.grid import Grid
from geoens.evaluation.conformal import conformal_quantile, hit_scores, region_areas, upper_sets
from geoens.evaluation.evaluator import Evaluator, evaluate_groups
from geoens.evaluation.rva import group_scores_t
from geoens.geo.atoms import AtomTable, atoms_from_rasters

REPO = Path(__file__).resolve().parents[1]


def world(cells: int, seed: int = 0) -> tuple[AtomTable, Grid]:
    """Blocky random S2 / LS / LC labels on the 180 x 360 grid."""
    rng = np.random.default_rng(seed)
    grid = Grid(180, 360)
    h, w = grid.shape
    side = max(1, int(np.sqrt(h * w / cells)))
    rows = (np.arange(h) // side)[:, None]
    cols = (np.arange(w) // side)[None, :]
    s2 = (rows * (w // side + 1) + cols) % cells
    ls = np.repeat(np.repeat(rng.integers(0, 4, (h // 6 + 1, w // 6 + 1)), 6, 0), 6, 1)[:h, :w]
    lc = np.repeat(np.repeat(rng.integers(0, 7, (h // 4 + 1, w // 4 + 1)), 4, 0), 4, 1)[:h, :w]
    water = rng.random((h, w)) < 0.3
    ls = np.where(water, -1, ls)
    lc = np.where(water, -1, lc)
    atoms, _ = atoms_from_rasters({"s2": s2, "ls": ls, "lc": lc}, grid.pixel_areas(), grid)
    return atoms, grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="5,000 test and 1,000 calibration images")
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--cal", type=int, default=5_000)
    ap.add_argument("--cells", type=int, default=160)
    ap.add_argument("--threads", type=int, default=2, help="threads sorting the upper sets")
    args = ap.parse_args()
    if args.small:
        args.images, args.cal = 5_000, 1_000
    atoms, grid = world(args.cells)
    ev = Evaluator(atoms, {"s2": args.cells, **N_CLASSES}, None, grid.total_area())  # type: ignore[arg-type]
    fams = ("s2", "ls", "lc")
    g = ev.groups(fams)
    rng = np.random.default_rng(1)
    n = args.images + args.cal
    probs = {
        "s2": rng.dirichlet(np.full(args.cells, 0.3), n),
        "ls": rng.dirichlet(np.ones(4), n),
        "lc": rng.dirichlet(np.ones(7), n),
    }
    sc = ev.scores(probs)
    gt_atom = rng.integers(0, atoms.n, n)
    gt = g.of_atom[gt_atom]
    bucket = np.argmax(probs["ls"], axis=1)
    step = max(1, ev.chunk_elements // g.n)

    t0 = time.perf_counter()
    base = evaluate_groups(g, sc, gt_atom, grid.total_area(), chunk_elements=ev.chunk_elements)
    t_base = time.perf_counter() - t0

    t0 = time.perf_counter()
    a = np.empty(n)
    m = np.empty(n)
    covered = 0
    area_sum = 0.0
    # calibration: scores of the calibration images, thresholds per kind, level, bucket
    for s in range(0, args.cal, step):
        cols = slice(s, min(args.cal, s + step))
        P = group_scores_t(g, {f: sc[f][:, cols] for f in fams})
        us = upper_sets(P, g.area, args.threads)
        a[cols], m[cols], _ = hit_scores(us, P, gt[cols])
    thr = {}
    for kind, score in (("fixed", a[: args.cal]), ("adaptive", m[: args.cal])):
        for lv in COVERAGE_LEVELS:
            thr[(kind, lv, "all")] = np.full(4, conformal_quantile(score, lv))
            thr[(kind, lv, "bucket")] = np.array(
                [conformal_quantile(score[bucket[: args.cal] == b], lv) for b in range(4)]
            )
    t_cal = time.perf_counter() - t0
    # regions of the test images
    for s in range(args.cal, n, step):
        cols = slice(s, min(n, s + step))
        P = group_scores_t(g, {f: sc[f][:, cols] for f in fams})
        us = upper_sets(P, g.area, args.threads)
        a[cols], m[cols], _ = hit_scores(us, P, gt[cols])
        b = bucket[cols]
        for (kind, _lv, _grp), table in thr.items():
            t = table[b]
            area_sum += float(region_areas(us, kind, t).sum())
            covered += int(((a if kind == "fixed" else m)[cols] <= t).sum())
    t_all = time.perf_counter() - t0
    # the calibrated scores agree with Alg. 3's areas (same definition, summed in another order)
    assert np.allclose(a, base.area, rtol=1e-9), "upper-set areas disagree with Alg. 3"
    load = os.getloadavg()
    out = {
        "images": args.images,
        "calibration_images": args.cal,
        "groups": g.n,
        "alg3_seconds": t_base,
        "calibration_seconds": t_cal,
        "calibration_plus_regions_seconds": t_all,
        "ratio_vs_alg3": t_all / t_base,
        "combinations": len(thr),
        "threads": args.threads,
        "mean_coverage": covered / (args.images * len(thr)),
        "loadavg": load,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(out, indent=2))
    dest = REPO / "bench" / "out" / f"bench_calibrate{'_small' if args.small else ''}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
