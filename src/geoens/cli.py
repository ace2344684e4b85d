"""Command line: ``geoens validate`` (check a config) and ``geoens search`` (regions to search for a photo).

``geoens search`` answers the downstream question for new photos with the models a workflow run trained:
it predicts the photo's S2-cell probabilities with a base model (``geoest`` or ``geoclip``) and, optionally,
its LS / LC attribute probabilities, ensembles them on the atoms (Algorithms 1-2) and writes the ranked
regions that fit the area budget as GeoJSON (and a GeoTIFF of region ranks).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from geoens.config import ConfigError, grid_from_config, load_config

log = logging.getLogger("geoens.cli")


def _predict_family(
    family: str, results: Path, cfg: Mapping[str, Any], folder: Path, ids: list[str], device: str
) -> dict[str, npt.NDArray[np.float64]]:
    """Probabilities of ``ids`` (files in ``folder``) for one model: ``{image_id: vector}``."""
    from geoens.data import FolderSource

    source = FolderSource(folder)
    if family == "geoclip":
        from geoens.geoclip_adapter import id_batches, load_image_tower, predict_probs, read_cell_embeddings

        gc = cfg["geoclip"]
        tower_path = results / "models" / "geoclip_tower" / "model.pt"
        tower, scale, transform = load_image_tower(gc["image_tower"], tower_path, gc["clip_model"])
        cells, _ = read_cell_embeddings(results / "geoclip" / "cell_embeddings.parquet")
        skipped: list[str] = []
        out_ids, probs = predict_probs(
            tower, id_batches(source, ids, transform, 16, 0, skipped), cells, scale
        )
        return {i: probs[k].astype(np.float64) for k, i in enumerate(out_ids)}
    from geoens.train import predict

    df = predict(results / "models" / family / "model.pt", source, ids, batch_size=16, device=device)
    return {i: np.asarray(p, dtype=np.float64) for i, p in zip(df["image_id"], df["probs"], strict=True)}


def cmd_validate(args: argparse.Namespace) -> int:
    """``geoens validate``: schema, grid and (optionally) input files."""
    cfg = load_config(args.config, check_files=args.check_files)
    grid = grid_from_config(cfg)
    testsets = sorted(cfg["inputs"]["testsets"])
    print(f"{args.config}: valid; grid {grid.height} x {grid.width}; test sets {testsets}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """``geoens search``: ranked regions within the budget for each photo."""
    from geoens.search import plan_search

    cfg = load_config(args.config)
    results = Path(args.results)
    images = [Path(p) for p in args.images]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"image(s) not found: {', '.join(missing)}")
    for needed in ("atoms/atoms.parquet", "atoms/atom_index.tif", "masks/s2_absorption.parquet"):
        if not (results / needed).exists():
            raise FileNotFoundError(
                f"{results / needed} is missing: run the workflow first (snakemake ... results/{needed})"
            )
    families = [f for f in args.attributes.split(",") if f] if args.attributes else []
    unknown = set(families) - {"ls", "lc"}
    if unknown:
        raise ValueError(f"--attributes: unknown families {sorted(unknown)} (choose from ls, lc)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    by_folder: dict[Path, list[str]] = {}
    for p in images:
        by_folder.setdefault(p.resolve().parent, []).append(p.name)
    extra = (
        ["ls"]
        if args.coverage is not None and args.region.endswith("-bucket") and "ls" not in families
        else []
    )
    for folder, ids in by_folder.items():
        preds = {
            m: _predict_family(m, results, cfg, folder, ids, args.device)
            for m in [args.base, *families, *extra]
        }
        for image_id in ids:
            if any(image_id not in p for p in preds.values()):
                log.error("%s: the image could not be decoded; skipped", folder / image_id)
                continue
            probs = {"s2": preds[args.base][image_id], **{f: preds[f][image_id] for f in families}}
            stem = Path(image_id).stem
            if args.coverage is not None:
                _coverage_search(args, results, cfg, probs, preds, image_id, out / stem, folder)
                continue
            regions = plan_search(
                results / "atoms" / "atoms.parquet",
                results / "atoms" / "atom_index.tif",
                results / "masks" / "s2_absorption.parquet",
                probs,
                args.budget_km2,
                out_geojson=out / f"{stem}.geojson",
                out_tif=out / f"{stem}.tif",
                earth_radius_km=grid_from_config(cfg).earth_radius_km,
            )
            total = float(regions["area_km2"].sum()) if len(regions) else 0.0
            print(
                f"{folder / image_id}: {len(regions)} region group(s), {total:.4g} km^2 of "
                f"{args.budget_km2:.4g} km^2 -> {out / (stem + '.geojson')}"
            )
    return 0


def _coverage_search(
    args: argparse.Namespace,
    results: Path,
    cfg: Mapping[str, Any],
    probs: Mapping[str, npt.NDArray[np.float64]],
    preds: Mapping[str, Mapping[str, npt.NDArray[np.float64]]],
    image_id: str,
    stem: Path,
    folder: Path,
) -> None:
    """``geoens search --coverage``: the photo's calibrated region (GeoJSON, GeoPackage, COG, PNG)."""
    from geoens.search import plan_coverage_search

    ls = preds["ls"][image_id] if "ls" in preds else None
    r = plan_coverage_search(
        results,
        probs,
        args.base,
        args.coverage,
        args.region,
        stem,
        ls_probs=ls,
        earth_radius_km=grid_from_config(cfg).earth_radius_km,
    )
    print(
        f"{folder / image_id}: {r['method']} {args.region} region {r['area_km2']:.4g} km^2, calibrated for "
        f"{r['level']:.0%} coverage on {r['n_calibration']} validation images"
        + (f" (LS bucket {r['group']})" if r["group"] != "all" else "")
        + f" -> {r['paths']['geojson']}"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``geoens`` argument parser."""
    parser = argparse.ArgumentParser(prog="geoens", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="validate a workflow config against the schema")
    v.add_argument("config")
    v.add_argument("--check-files", action="store_true", help="also require the input files to exist")
    v.set_defaults(func=cmd_validate)
    s = sub.add_parser("search", help="ranked regions to search for photos, within an area budget")
    s.add_argument("images", nargs="+", help="photo file(s)")
    goal = s.add_mutually_exclusive_group(required=True)
    goal.add_argument("--budget-km2", type=float, help="total area to search (km^2)")
    goal.add_argument(
        "--coverage",
        type=float,
        help="calibrated region instead: nominal coverage (e.g. 0.9, a level in config calibrate.coverages)",
    )
    s.add_argument(
        "--region",
        choices=["adaptive", "fixed", "adaptive-bucket", "fixed-bucket"],
        default="adaptive",
        help="with --coverage: calibrated mass (adaptive) or area (fixed); -bucket: per predicted LS bucket",
    )
    s.add_argument("--config", default="config.yaml", help="the config the workflow ran with")
    s.add_argument("--results", default="results", help="the workflow's results folder")
    s.add_argument("--base", choices=["geoest", "geoclip"], default="geoclip", help="base geolocation model")
    s.add_argument(
        "--attributes", default="ls,lc", help="attribute families to ensemble: ls,lc | ls | lc | ''"
    )
    s.add_argument("--device", default="auto")
    s.add_argument("--out", default="search", help="output folder (one GeoJSON and GeoTIFF per photo)")
    s.set_defaults(func=cmd_search)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``geoens`` command."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"geoens: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
