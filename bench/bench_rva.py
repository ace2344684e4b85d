"""Benchmark: Recall-vs-Area on atoms against brute-force raster Algorithms 2-3.

Grid 5400 x 10800 (``--small``: 540 x 1080) with the real fine S2 partition (GeoEstimation's
cells_50_1000.csv rasterised by ``geoens.s2``; a synthetic block partition when the file is absent) and
synthetic LS / LC masks (smooth random fields). For a few images the brute-force raster form (gather,
multiply, compare, sum areas over all pixels, in numpy) and the atom form must give the same areas; the
atom form is then timed on a batch of images x all 10 methods (incl. the grid top-1), and the time of a
50,000-image x 10-method evaluation is projected.

Usage: python bench/bench_rva.py [--small] [--images N] [--brute N]
Writes bench/out/bench_rva[_small].json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

from geoens import rva
from geoens.atoms import build_atoms
from geoens.constants import N_CLASSES
from geoens.grid import Grid

REPO = Path(__file__).resolve().parents[1]
CELLS = REPO.parent / "shared" / "reference" / "peers" / "GeoEstimation" / "geo-cells" / "cells_50_1000.csv"


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
        from geoens import s2

        part = s2.read_partition(CELLS)
        lab = s2.rasterize_partition(part, grid)
        tab = s2.absorption_table(part, lab, grid)
        return lab, len(part), (tab["cell"].to_numpy(), tab["target"].to_numpy()), "cells_50_1000.csv"
    h, w = grid.shape
    b = max(1, h // 100)
    rows, cols = np.divmod(np.arange(h * w), w)
    lab = ((rows // b) * (w // b) + (cols // b)).reshape(h, w).astype(np.int32)
    n = int(lab.max()) + 1
    return lab, n, (np.zeros(0, np.int64), np.zeros(0, np.int64)), "synthetic blocks"


def brute_force(
    s2: np.ndarray, ls: np.ndarray, lc: np.ndarray, row_area: np.ndarray, scores: dict[str, np.ndarray],
    method: rva.Method, ev: rva.Evaluator, gt: tuple[int, int],
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="540 x 1080 grid, fewer images")
    ap.add_argument("--images", type=int, default=None, help="images timed on the atom form")
    ap.add_argument("--brute", type=int, default=None, help="images checked against the brute force")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    h = 540 if args.small else 5400
    n_img = args.images or (500 if args.small else 1000)
    n_brute = args.brute or (3 if args.small else 2)
    rng = np.random.default_rng(args.seed)
    grid = Grid(h, 2 * h)
    res: dict[str, object] = {"grid": [grid.height, grid.width]}

    t0 = time.perf_counter()
    s2, n_cells, absorption, source = s2_labels(grid)
    res["s2_source"], res["n_cells"], res["t_s2_s"] = source, n_cells, time.perf_counter() - t0
    t0 = time.perf_counter()
    water = smooth_field(grid, rng, 24) < -0.4
    ls = smooth_labels(grid, rng, N_CLASSES["ls"], 60, water)
    lc = smooth_labels(grid, rng, N_CLASSES["lc"], 90, water)
    del water
    res["t_masks_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    table, atom_index = build_atoms(s2, ls, lc, grid)
    atoms = rva.AtomTable.from_frame(table, "bench atoms")
    res["n_atoms"], res["t_atoms_s"] = atoms.n, time.perf_counter() - t0
    print(f"grid {h} x {2 * h}: {n_cells} cells ({source}), {atoms.n} atoms; peak {peak_rss_mb():.0f} MB")

    ev = rva.Evaluator(
        atoms, {"s2": n_cells, **N_CLASSES}, rva.PixelLookup(atom_index, grid), grid.total_area(), absorption
    )
    res["groups"] = {"+".join(m.families): ev.groups(m.families).n for m in rva.all_methods(["geoest"])}
    print("groups per family set:", res["groups"])
    # images: peaked S2 distributions, attribute softmaxes; ground truth on land pixels
    land = np.flatnonzero((ls.ravel() >= 0) & (s2.ravel() >= 0))
    gt_flat = rng.choice(land, size=n_img)
    gt_rc = np.divmod(gt_flat, grid.width)
    gt_atom = atom_index.ravel()[gt_flat].astype(np.int64)

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    probs = {
        "s2": softmax(rng.normal(scale=3.0, size=(n_img, n_cells))),
        "ls": softmax(rng.normal(scale=1.5, size=(n_img, 4))),
        "lc": softmax(rng.normal(scale=1.5, size=(n_img, 7))),
    }
    methods = rva.all_methods(["geoest", "geoclip"])  # 10 methods (the bases share the S2 partition)

    # atom form, timed
    t0 = time.perf_counter()
    ev.lookup.pixels_of(np.array([0]))  # one-time pixel index of the top-1 fallback
    t_setup = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    results: dict[str, list[rva.MethodResult]] = {}
    for b0 in range(0, n_img, 512):  # batches, as evaluate_testset streams them
        rows = slice(b0, min(n_img, b0 + 512))
        sc = ev.scores({f: p[rows] for f, p in probs.items()})
        for m in methods:
            results.setdefault(m.name, []).append(ev.evaluate(m, sc, gt_atom[rows]))
    t_fast, c_fast = time.perf_counter() - t0, time.process_time() - c0
    area = {k: np.concatenate([r.area for r in v]) for k, v in results.items()}
    zero = {k: np.concatenate([r.zero_prob for r in v]) for k, v in results.items()}
    sc = ev.scores({f: p[:n_brute] for f, p in probs.items()})
    # CPU time is the honest measure on a shared machine (wall time grows with other users' load)
    per_im = c_fast / (n_img * len(methods))
    print(
        f"atoms: {n_img} images x {len(methods)} methods in {t_fast:.2f} s wall, {c_fast:.2f} s CPU "
        f"({1e3 * per_im:.3f} ms CPU each); one-time pixel index {t_setup:.1f} s; peak {peak_rss_mb():.0f} MB"
    )
    projected = per_im * 50_000 * 10 + t_setup
    print(
        f"projected 50,000 images x 10 methods: {projected:.0f} s ({projected / 60:.1f} min; target <= 5 min)"
    )

    # brute force on a few images, same areas
    row_area = grid.row_areas()
    t0, c0 = time.perf_counter(), time.process_time()
    n_checked = 0
    max_rel = 0.0
    for i in range(n_brute):
        one = {f: s[:, i] for f, s in sc.items()}
        for m in methods[:5]:
            a_ref = brute_force(s2, ls, lc, row_area, one, m, ev, (int(gt_rc[0][i]), int(gt_rc[1][i])))
            a = area[m.name][i]
            rel = abs(a - a_ref) / a_ref
            max_rel = max(max_rel, rel)
            assert rel <= 1e-9, (m.name, i, a, a_ref)
            n_checked += 1
    t_brute_wall = (time.perf_counter() - t0) / n_checked
    t_brute = (time.process_time() - c0) / n_checked
    ratio = t_brute / per_im
    print(
        f"brute force: {t_brute:.3f} s CPU ({t_brute_wall:.3f} s wall) per image-method over {n_checked}; "
        f"areas equal (max rel {max_rel:.1e})"
    )
    print(f"speed ratio atoms vs brute force: {ratio:.0f}x (target >= 200x); peak {peak_rss_mb():.0f} MB")
    res.update(
        n_images=n_img, n_methods=len(methods), t_atoms_total_wall_s=t_fast, t_atoms_total_cpu_s=c_fast,
        t_atoms_per_image_method_cpu_s=per_im, t_brute_per_image_method_wall_s=t_brute_wall,
        t_pixel_index_setup_s=t_setup, projected_50k_x10_s=projected, t_brute_per_image_method_cpu_s=t_brute,
        n_brute_checked=n_checked, max_rel_diff=max_rel, speed_ratio=ratio, peak_rss_mb=peak_rss_mb(),
        zero_prob_share={k: float(v.mean()) for k, v in zero.items()}, load_avg=list(os.getloadavg()),
    )  # fmt: skip
    out = REPO / "bench" / "out" / ("bench_rva_small.json" if args.small else "bench_rva.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
