"""How much a coarse grid understates recall at small caps: RvA of a finished run at its grid and a finer one.

    python bench/rva_resolution.py --results results [--factor 4] [--testsets im2gps3k streetview]

Takes a results folder whose predictions exist (``make demo`` or any run; read only), rebuilds the masks and
atoms from the same native inputs (``results/demo/landscan.tif``, ``results/demo/landcover.nc`` or the paths
given) at the run's grid and at ``factor`` times finer (the demo's LandScan-like raster is 4x its grid, so
``--factor 4`` takes it at native resolution, factor 1, and the land cover by 3 x 3 block mode: the demo's
analogue of the 1 km grid, DESIGN 10), evaluates every method with the same predictions on both, and prints
the recall at the 1 km and 25 km caps (3.14 and 1,963 km^2) side by side. Writes
``bench/out/rva_resolution.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from geoens.core.constants import CAP_AREAS_KM2
from geoens.core.grid import Grid
from geoens.evaluation.metrics import recall_at
from geoens.evaluation.testset import evaluate_testset
from geoens.geo import atoms, masks, s2mask

REPO = Path(__file__).resolve().parents[1]
MODELS = ("ls", "lc", "geoest", "geoclip")


def build(work: Path, grid: Grid, res: Path, landscan: Path, landcover: Path) -> dict[str, float]:
    """Masks and atoms on ``grid`` into ``work``; returns timings and the atom count."""
    m = work / "masks"
    t0 = time.perf_counter()
    masks.make_ls_mask(landscan, res / "labels" / "ls_edges.json", grid, m / "ls.tif")
    masks.make_lc_mask(landcover, grid, m / "lc.tif")
    s2mask.make_s2_mask(res / "partitions" / "fine.csv", grid, m / "s2_fine.tif", m / "s2_absorption.parquet")
    info = atoms.make_atoms(m / "s2_fine.tif", m / "ls.tif", m / "lc.tif", grid, work / "atoms.parquet",
                            work / "atom_index.tif")  # fmt: skip
    return {"build_s": time.perf_counter() - t0, "atoms": info["atoms"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=REPO / "results")
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--landscan", type=Path, default=None, help="default <results>/demo/landscan.tif")
    ap.add_argument("--landcover", type=Path, default=None, help="default <results>/demo/landcover.nc")
    ap.add_argument("--testsets", nargs="+", default=None, help="default: every results/predictions/<set>")
    args = ap.parse_args()
    res = args.results
    landscan = args.landscan or res / "demo" / "landscan.tif"
    landcover = args.landcover or res / "demo" / "landcover.nc"
    import rasterio

    with rasterio.open(res / "masks" / "s2_fine.tif") as ds:
        h = ds.height
    sets = args.testsets or sorted(
        p.name
        for p in (res / "predictions").iterdir()
        if (res / "labels" / "testsets" / f"{p.name}.parquet").exists()
    )
    out: dict[str, object] = {"results": str(res), "caps_km2": list(CAP_AREAS_KM2[:2])}
    rows = []
    with tempfile.TemporaryDirectory(prefix="rva_res_") as tmp:
        for hh in (h, h * args.factor):
            grid = Grid(hh, 2 * hh)
            work = Path(tmp) / f"g{hh}"
            out[f"grid_{hh}"] = build(work, grid, res, landscan, landcover)
            for ts in sets:
                pred = res / "predictions" / ts
                df = evaluate_testset(
                    work / "atoms.parquet", work / "atom_index.tif", work / "masks" / "s2_absorption.parquet",
                    res / "labels" / "testsets" / f"{ts}.parquet", res / "partitions" / "fine.csv",
                    {k: pred / f"{k}.parquet" for k in MODELS if (pred / f"{k}.parquet").exists()},
                    earth_radius_km=grid.earth_radius_km,
                )  # fmt: skip
                for method, sub in df[df["area_km2"].notna()].groupby("method", sort=False):
                    r1, r25 = recall_at(sub["area_km2"].to_numpy(), CAP_AREAS_KM2[:2])
                    rows.append({"testset": ts, "grid": hh, "method": method, "n": len(sub),
                                 "recall_1km": r1, "recall_25km": r25,
                                 "pixel_km2_equator": float(grid.row_areas()[hh // 2])})  # fmt: skip
    tab = pd.DataFrame(rows)
    wide = tab.pivot_table(
        index=["testset", "method"], columns="grid", values=["recall_1km", "recall_25km"], sort=False
    )
    print(f"grids {h} and {h * args.factor}; pixel area at the equator "
          f"{tab.groupby('grid')['pixel_km2_equator'].first().round(1).to_dict()} km^2")  # fmt: skip
    print((100 * wide).round(1).to_string())
    out["rows"] = rows
    path = REPO / "bench" / "out" / "rva_resolution.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
