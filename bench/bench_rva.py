"""Benchmark: Recall-vs-Area on atoms against brute-force raster Algorithms 2-3 and a one-pass lower bound.

Grid 5400 x 10800 (``--small``: 540 x 1080; ``--height``: any) with the real fine S2 partition
(GeoEstimation's cells_50_1000.csv from the peer data, ``$GEOENS_PEERS`` or ``../shared/reference/peers``,
rasterised by ``geoens.geo.s2mask``; a synthetic block partition, with a message, when the file is absent) and
two synthetic attribute worlds:

* ``smooth``: LS and LC as argmax of smooth random fields (few LS x LC tuples per S2 cell);
* ``mixed``: LS and LC drawn per pixel (every cell holds most of its LS x LC tuples: ~10^5 atoms or more).

Per world, in the same run:

1. the brute-force raster form (gather, multiply, compare, sum areas over all pixels, numpy) on a few images
   x 5 methods; the atom form must give the same areas (relative difference <= 1e-9);
2. the atom form on ``--images`` images (default 50,000 at full size) x 10 methods, streamed in batches of
   2,048 as ``evaluate_testset`` does (Alg. 1 scores, areas, zero-probability flags and the grid top-1;
   the probability draws are not timed), ``--threads`` methods at a time;
3. the previous dense engine (``evaluate_groups_dense``) on a subset, for the speed-up;
4. the lower bound: one numpy reduction over the atom array per image-method (``X.sum(axis=0)`` of a float64
   ``atoms x 256`` matrix).

Ratios are per image-method CPU seconds (the honest measure on a shared machine); the 50,000 x 10 wall and CPU
times are measured, not projected, when ``--images`` is 50,000. ``--height`` above 5400 nearest-upsamples the
5400 S2 raster (the 1 km bench, bench_1km.py, rasterises at 21600 for real): evaluation cost depends on the
atoms, not on the pixels.

Usage: python bench/bench_rva.py [--small] [--world smooth mixed] [--images N] [--brute N] [--threads T]
       [--backend numpy|torch] [--device cuda] [--height H] [--no-top1]
With ``--backend torch`` the first batch is also evaluated by the numpy backend and must agree.
Writes bench/out/bench_rva[_small|_<H>][_torch].json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

from geoens.core.constants import N_CLASSES
from geoens.core.grid import Grid
from geoens.evaluation.evaluator import Evaluator
from geoens.evaluation.methods import Method, all_methods
from geoens.evaluation.rva import evaluate_groups_dense
from geoens.geo.atoms import AtomTable, build_atoms
from geoens.geo.lookup import PixelLookup

REPO = Path(__file__).resolve().parents[1]
#: Peer data folder (its README lists the files): ``$GEOENS_PEERS``, else ``../shared/reference/peers``.
PEERS = Path(os.environ.get("GEOENS_PEERS", REPO.parent / "shared" / "reference" / "peers"))
CELLS = PEERS / "GeoEstimation" / "geo-cells" / "cells_50_1000.csv"
BATCH = 2048


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _interp_matrix(n_out: int, n_in: int, periodic: bool) -> np.ndarray:
    """Linear interpolation weights ``n_out x n_in`` (cell-centred)."""
    x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    m = np.zeros((n_out, n_in))
    i0 = np.floor(x).astype(int)
    f = x - i0
    for i, w in ((i0, 1 - f), (i0 + 1, f)):
        ii = np.mod(i, n_in) if periodic else np.clip(i, 0, n_in - 1)
        np.add.at(m, (np.arange(n_out), ii), w)
    return m


def smooth_labels(
    grid: Grid, rng: np.random.Generator, n_classes: int, coarse: int, water: np.ndarray
) -> np.ndarray:
    """Labels 0..n-1 from the argmax of ``n`` smooth random fields (-1 where ``water``), built in strips."""
    h, w = grid.shape
    ry = _interp_matrix(h, coarse, periodic=False)
    rx = _interp_matrix(w, 2 * coarse, periodic=True)
    fields = rng.normal(size=(n_classes, coarse, 2 * coarse))
    out = np.empty((h, w), dtype=np.int8)
    for r0 in range(0, h, 256):
        r1 = min(h, r0 + 256)
        vals = np.stack([ry[r0:r1] @ f @ rx.T for f in fields])
        out[r0:r1] = np.argmax(vals, axis=0).astype(np.int8)
    out[water] = -1
    return out


def mixed_labels(grid: Grid, rng: np.random.Generator, n_classes: int, water: np.ndarray) -> np.ndarray:
    """Labels drawn per pixel from a skewed distribution over ``n`` classes (-1 where ``water``)."""
    p = 0.6 ** np.arange(n_classes)
    cdf = np.cumsum(p / p.sum())
    out = np.empty(grid.shape, dtype=np.int8)
    for r0 in range(0, grid.height, 512):
        r1 = min(grid.height, r0 + 512)
        u = rng.random((r1 - r0, grid.width), dtype=np.float32)
        out[r0:r1] = np.searchsorted(cdf.astype(np.float32), u, side="right").clip(0, n_classes - 1)
    out[water] = -1
    return out


def smooth_field(grid: Grid, rng: np.random.Generator, coarse: int) -> np.ndarray:
    h, w = grid.shape
    ry = _interp_matrix(h, coarse, periodic=False)
    rx = _interp_matrix(w, 2 * coarse, periodic=True)
    f = rng.normal(size=(coarse, 2 * coarse))
    out = np.empty((h, w), dtype=np.float32)
    for r0 in range(0, h, 512):
        r1 = min(h, r0 + 512)
        out[r0:r1] = ry[r0:r1] @ f @ rx.T
    return out


def s2_labels(grid: Grid) -> tuple[np.ndarray, int, tuple[np.ndarray, np.ndarray], str]:
    """The fine partition rasterised on the grid, its size and absorption; synthetic blocks without it."""
    if CELLS.exists():
        from geoens.geo.partitions import read_partition_csv
        from geoens.geo.s2mask import absorption_table, rasterize_partition

        part = read_partition_csv(CELLS)
        base = grid if grid.height <= 5400 else Grid(5400, 10800)
        lab = rasterize_partition(part, base)
        tab = absorption_table(part, lab, base)
        if base != grid:  # nearest upsampling (exact S2 at 21600: bench_1km.py)
            f = grid.height // base.height
            lab = np.repeat(np.repeat(lab, f, axis=0), f, axis=1)
        return lab, len(part), (tab["cell"].to_numpy(), tab["target"].to_numpy()), "cells_50_1000.csv"
    print(f"NOTE: {CELLS} absent (set GEOENS_PEERS): a synthetic block partition replaces the real one")
    h, w = grid.shape
    b = max(1, h // 100)
    rows, cols = np.divmod(np.arange(h * w), w)
    lab = ((rows // b) * (w // b) + (cols // b)).reshape(h, w).astype(np.int32)
    n = int(lab.max()) + 1
    return lab, n, (np.zeros(0, np.int64), np.zeros(0, np.int64)), "synthetic blocks"


def brute_force(
    s2: np.ndarray, ls: np.ndarray, lc: np.ndarray, row_area: np.ndarray, scores: dict[str, np.ndarray],
    method: Method, ev: Evaluator, gt: tuple[int, int],
) -> float:  # fmt: skip
    """Alg. 2-3 on the full raster for one image (scores: family -> (classes+1) Alg. 1 values)."""
    P = None
    rasters = {"s2": s2, "ls": ls, "lc": lc}
    for f in method.families:
        sc = ev.urban_scores(1)[:, 0] if (f == "ls" and method.urban_prior) else scores[f]
        n = sc.size - 1
        lab = rasters[f]
        vals = sc[np.where(lab < 0, n, lab)] if f == "s2" else sc[np.where(lab < 0, n, lab).astype(np.int64)]
        P = vals if P is None else P * vals
    assert P is not None
    thr = P[gt]
    if thr == 0:
        return ev.total_area
    return float(np.count_nonzero(thr <= P, axis=1) @ row_area)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def draw_probs(seed: int, n: int, n_cells: int) -> dict[str, np.ndarray]:
    """Peaked S2 distributions and attribute softmaxes for ``n`` images (seeded per batch)."""
    rng = np.random.default_rng(seed)
    return {
        "s2": softmax(rng.normal(scale=3.0, size=(n, n_cells))),
        "ls": softmax(rng.normal(scale=1.5, size=(n, 4))),
        "lc": softmax(rng.normal(scale=1.5, size=(n, 7))),
    }


def lower_bound(n_atoms: int, reps: int = 20) -> float:
    """CPU seconds of one numpy reduction over the atom array, per image (float64, 256 images at a time)."""
    x = np.random.default_rng(1).random((n_atoms, 256))
    x.sum(axis=0)
    c0 = time.process_time()
    for _ in range(reps):
        x.sum(axis=0)
    return (time.process_time() - c0) / (reps * 256)


def run_world(kind: str, args: argparse.Namespace, grid: Grid, s2_info: tuple) -> dict[str, object]:
    s2, n_cells, absorption, source = s2_info
    rng = np.random.default_rng(args.seed)
    res: dict[str, object] = {"world": kind}
    t0 = time.perf_counter()
    water = smooth_field(grid, rng, 24) < -0.4
    if kind == "smooth":
        ls = smooth_labels(grid, rng, N_CLASSES["ls"], 60, water)
        lc = smooth_labels(grid, rng, N_CLASSES["lc"], 90, water)
    else:
        ls = mixed_labels(grid, rng, N_CLASSES["ls"], water)
        lc = mixed_labels(grid, rng, N_CLASSES["lc"], water)
    del water
    res["t_masks_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    table, atom_index = build_atoms(s2, ls, lc, grid)
    atoms = AtomTable.from_frame(table, "bench atoms")
    del table
    res["n_atoms"], res["t_atoms_s"] = atoms.n, time.perf_counter() - t0
    ev = Evaluator(
        atoms, {"s2": n_cells, **N_CLASSES}, PixelLookup(atom_index, grid), grid.total_area(), absorption,
        backend=args.backend, device=args.device,
    )  # fmt: skip
    methods = all_methods(["geoest", "geoclip"])  # 10 methods (the bases share the S2 partition)
    res["groups"] = {"+".join(m.families): ev.groups(m.families).n for m in methods[:5]}
    print(f"[{kind}] {atoms.n} atoms; groups per family set {res['groups']}; peak {peak_rss_mb():.0f} MB")
    land = np.flatnonzero((ls.ravel() >= 0) & (s2.ravel() >= 0))
    gt_flat = rng.choice(land, size=args.images)
    gt_atom = atom_index.ravel()[gt_flat].astype(np.int64)

    # lower bound and one-time set-up (the top-1 fallback's pixel index)
    lb = lower_bound(atoms.n)
    t0 = time.perf_counter()
    if args.top1:
        ev.lookup.pixels_of(np.array([0]))
    res["t_pixel_index_setup_s"] = time.perf_counter() - t0
    if args.backend == "torch":  # same results as the numpy backend on the first batch
        ref = Evaluator(ev.atoms, ev.n_classes, ev.lookup, ev.total_area, absorption)
        n = min(BATCH, args.images)
        sc = ev.scores(draw_probs(args.seed * 100_003, n, n_cells))
        worst = 0.0
        for m in methods:
            a = ev.evaluate(m, sc, gt_atom[:n], top1=args.top1)
            b = ref.evaluate(m, sc, gt_atom[:n], top1=args.top1)
            assert np.array_equal(a.zero_prob, b.zero_prob), m.name
            worst = max(worst, float(np.max(np.abs(a.area - b.area) / b.area)))
            assert worst <= 1e-12, (m.name, worst)
            assert np.allclose(a.top1_lat, b.top1_lat, atol=1e-9, equal_nan=True), m.name
        res["torch_vs_numpy_max_rel_area"] = worst
        print(
            f"[{kind}] torch backend equals numpy on {n} images x 10 methods (max rel area diff {worst:.1e})"
        )

    # atom form, timed over all images x 10 methods (probability draws excluded)
    wall = cpu = 0.0
    areas: dict[str, list[np.ndarray]] = {m.name: [] for m in methods}
    zero: dict[str, list[np.ndarray]] = {m.name: [] for m in methods}
    for b0 in range(0, args.images, BATCH):
        n = min(BATCH, args.images - b0)
        probs = draw_probs(args.seed * 100_003 + b0, n, n_cells)
        t0, c0 = time.perf_counter(), time.process_time()
        sc = ev.scores(probs)
        for base, ms in (("geoest", methods[:5]), ("geoclip", methods[5:])):
            rs = ev.evaluate_many(ms, sc, gt_atom[b0 : b0 + n], top1=args.top1, threads=args.threads)
            for m, r in zip(ms, rs, strict=True):
                areas[m.name].append(r.area)
                zero[m.name].append(r.zero_prob)
            del base
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
    per_im = cpu / (args.images * len(methods))
    print(
        f"[{kind}] atom form ({args.backend}, {args.threads} thread(s)): {args.images} images x "
        f"{len(methods)} methods in {wall:.1f} s wall, {cpu:.1f} s CPU ({1e6 * per_im:.1f} us CPU per "
        f"image-method); lower bound {1e6 * lb:.1f} us (ratio {per_im / lb:.1f}x); "
        f"peak {peak_rss_mb():.0f} MB"
    )
    scale = 500_000 / (args.images * len(methods))
    res.update(
        n_images=args.images, t_wall_s=wall, t_cpu_s=cpu, t_cpu_per_image_method_s=per_im,
        t_lower_bound_per_image_method_s=lb, ratio_to_lower_bound=per_im / lb,
        t_50k_x10_wall_s=wall * scale, t_50k_x10_cpu_s=cpu * scale,
        measured_50k=args.images == 50_000,
        zero_prob_share={k: float(np.concatenate(v).mean()) for k, v in zero.items()},
    )  # fmt: skip

    # previous engine (dense groups x images matrix), on a subset
    n_d = min(args.dense, args.images)
    if n_d and args.backend == "numpy":
        probs = draw_probs(args.seed * 100_003, min(BATCH, args.images), n_cells)
        sc = ev.scores({f: p[:n_d] for f, p in probs.items()})
        c0 = time.process_time()
        for m in methods[:5]:
            one = {f: sc[f] for f in m.families}
            if m.urban_prior:
                one["ls"] = ev.urban_scores(n_d)
            g = ev.groups(m.families)
            r = evaluate_groups_dense(g, one, gt_atom[:n_d], ev.total_area, ev.lookup, ev._csr[m.families])
            assert np.allclose(r.area, areas[m.name][0][:n_d], rtol=1e-12, atol=0), m.name
        per_dense = (time.process_time() - c0) / (n_d * 5)
        res["t_dense_per_image_method_s"] = per_dense
        res["speedup_vs_dense"] = per_dense / per_im
        print(
            f"[{kind}] previous dense engine: {1e6 * per_dense:.1f} us CPU per image-method "
            f"({per_dense / per_im:.1f}x slower)"
        )

    # brute force on a few images, same areas
    if args.brute:
        probs = draw_probs(args.seed * 100_003, min(BATCH, args.images), n_cells)
        sc = ev.scores({f: p[: args.brute] for f, p in probs.items()})
        row_area = grid.row_areas()
        gt_rc = np.divmod(gt_flat[: args.brute], grid.width)
        c0, t0 = time.process_time(), time.perf_counter()
        max_rel, n_checked = 0.0, 0
        for i in range(args.brute):
            one = {f: s[:, i] for f, s in sc.items()}
            for m in methods[:5]:
                a_ref = brute_force(s2, ls, lc, row_area, one, m, ev, (int(gt_rc[0][i]), int(gt_rc[1][i])))
                a = areas[m.name][0][i]
                rel = abs(a - a_ref) / a_ref
                max_rel = max(max_rel, rel)
                assert rel <= 1e-9, (m.name, i, a, a_ref)
                n_checked += 1
        t_brute = (time.process_time() - c0) / n_checked
        res.update(
            t_brute_per_image_method_cpu_s=t_brute,
            t_brute_per_image_method_wall_s=(time.perf_counter() - t0) / n_checked,
            n_brute_checked=n_checked, max_rel_diff=max_rel, ratio_raster_to_atoms=t_brute / per_im,
        )  # fmt: skip
        print(
            f"[{kind}] brute-force raster form: {t_brute:.3f} s CPU per image-method over {n_checked}, "
            f"areas equal (max rel {max_rel:.1e}); atoms {t_brute / per_im:,.0f}x faster"
        )
    print(
        f"[{kind}] 50,000 images x 10 methods: {wall * scale:.1f} s wall, {cpu * scale:.1f} s CPU "
        f"({'measured' if args.images == 50_000 else 'scaled from ' + str(args.images)})"
    )
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="540 x 1080 grid, 2,000 images")
    ap.add_argument("--height", type=int, default=None, help="grid height (default 5400)")
    ap.add_argument("--world", nargs="+", default=["smooth", "mixed"], choices=["smooth", "mixed"])
    ap.add_argument("--images", type=int, default=None, help="images timed (default 50,000)")
    ap.add_argument("--brute", type=int, default=None, help="images checked against the brute force")
    ap.add_argument("--dense", type=int, default=256, help="images timed on the previous dense engine")
    ap.add_argument("--threads", type=int, default=2, help="methods evaluated at a time")
    ap.add_argument("--backend", default="numpy", choices=["numpy", "torch"])
    ap.add_argument("--device", default=None, help="torch device (default: cuda when present)")
    ap.add_argument("--no-top1", dest="top1", action="store_false", help="areas only (no grid top-1)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    h = args.height or (540 if args.small else 5400)
    args.images = args.images or (2000 if args.small else 50_000)
    args.brute = args.brute if args.brute is not None else (3 if args.small else 2)
    grid = Grid(h, 2 * h)
    t0 = time.perf_counter()
    s2_info = s2_labels(grid)
    res: dict[str, object] = {
        "grid": [grid.height, grid.width], "s2_source": s2_info[3], "n_cells": s2_info[1],
        "t_s2_s": time.perf_counter() - t0, "backend": args.backend, "threads": args.threads,
        "top1": args.top1,
    }  # fmt: skip
    print(f"grid {h} x {2 * h}: {s2_info[1]} cells ({s2_info[3]}) in {res['t_s2_s']:.1f} s")
    if args.backend == "torch":
        from geoens.evaluation.rva_fast import torch_device

        res["device"] = str(torch_device(args.device))
    for kind in args.world:
        res[kind] = run_world(kind, args, grid, s2_info)
    res["load_avg"] = list(os.getloadavg())
    res["peak_rss_mb"] = peak_rss_mb()
    name = "bench_rva" + ("_small" if args.small else "") + (f"_{h}" if args.height else "")
    name += "_torch" if args.backend == "torch" else ""
    out = REPO / "bench" / "out" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    print(f"load average {os.getloadavg()}; wrote {out}")


if __name__ == "__main__":
    main()
