"""Command line: ``geoens validate``, ``geoens search``, ``geoens rva`` and ``geoens explore``.

``geoens validate`` checks a config; ``geoens rva`` scores any geolocator's predictions file
(:mod:`geoens.apps.rva`); ``geoens explore`` writes the offline map explorer of a finished run.

``geoens search`` answers the downstream question for new photos with the models a workflow run trained:
it predicts the photo's S2-cell probabilities with a base model (``geoest`` or ``geoclip``) and, optionally,
its LS / LC attribute probabilities, ensembles them on the atoms (Algorithms 1-2) and writes the ranked
regions that fit the area budget as GeoJSON (and a GeoTIFF of region ranks); ``--html`` adds the map viewer
of the searched photos (:func:`geoens.reports.explorer.build_search_viewer`).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from geoens import __version__
from geoens.apps.rva import add_rva_parser
from geoens.apps.search import plan_coverage_search, plan_search
from geoens.core.config import (
    ConfigError,
    deep_update,
    effective_config,
    explicit_keys,
    grid_from_config,
    load_config,
    read_config_file,
    render_config,
)
from geoens.core.constants import EXPLORER_SAMPLE
from geoens.evaluation.shiftcal import resolve_mix
from geoens.reports.explorer import build_explorer, build_search_viewer

log = logging.getLogger("geoens.apps.cli")


def _predict_family(
    family: str, results: Path, cfg: Mapping[str, Any], folder: Path, ids: list[str], device: str
) -> dict[str, npt.NDArray[np.float64]]:
    """Probabilities of ``ids`` (files in ``folder``) for one model: ``{image_id: vector}``."""
    # deferred: geoens.models.datasets imports torch, an optional extra that `geoens validate` does not need
    from geoens.models.datasets import FolderSource

    source = FolderSource(folder)
    if family == "geoclip":
        # deferred: the GeoCLIP modules import torch (an optional extra)
        from geoens.models.geoclip.cells import read_cell_embeddings
        from geoens.models.geoclip.stage import id_batches, load_image_tower  # deferred: imports torch
        from geoens.models.geoclip.towers import predict_probs  # deferred: imports torch

        gc = cfg["geoclip"]
        tower_path = results / "models" / "geoclip_tower" / "model.pt"
        tower, scale, transform = load_image_tower(gc["image_tower"], tower_path, gc["clip_model"])
        cells, _ = read_cell_embeddings(results / "geoclip" / "cell_embeddings.parquet")
        skipped: list[str] = []
        out_ids, probs = predict_probs(
            tower, id_batches(source, ids, transform, 16, 0, skipped), cells, scale
        )
        return {i: probs[k].astype(np.float64) for k, i in enumerate(out_ids)}
    from geoens.models.predictors import predict  # deferred: imports torch (an optional extra)

    df = predict(results / "models" / family / "model.pt", source, ids, batch_size=16, device=device)
    return {i: np.asarray(p, dtype=np.float64) for i, p in zip(df["image_id"], df["probs"], strict=True)}


def cmd_validate(args: argparse.Namespace) -> int:
    """``geoens validate``: the effective config of a run with these files, checked and printed."""
    cfg = effective_config(args.config)
    if args.check_files:
        load_config(args.config, check_files=True)
    grid = grid_from_config(cfg)
    testsets = sorted(cfg["inputs"]["testsets"])
    names = " + ".join(args.config)
    print(f"{names}: valid; grid {grid.height} x {grid.width}; test sets {testsets}")
    if not args.quiet:
        given: dict[str, Any] = {}
        for path in args.config:
            deep_update(given, read_config_file(path))
        print("# The effective config of `snakemake ... --configfile " + " ".join(args.config) + "`;")
        print("# values marked 'default' are not in your file(s) and come from the schema's defaults.")
        print(render_config(cfg, explicit_keys(given)), end="")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """``geoens search``: ranked regions within the budget for each photo."""
    if args.budget_km2 is not None and not (np.isfinite(args.budget_km2) and args.budget_km2 > 0):
        raise ValueError(f"--budget-km2 must be a positive area in km^2, got {args.budget_km2}")
    if args.coverage is not None and not 0.0 < args.coverage < 1.0:
        raise ValueError(f"--coverage must be a level between 0 and 1 (e.g. 0.9), got {args.coverage}")
    cfg = load_config(args.config)
    results = Path(args.results)
    args.mix_shares = _assumed_mix(args, results)
    families = [f for f in args.attributes.split(",") if f] if args.attributes else []
    unknown = set(families) - {"ls", "lc"}
    if unknown:
        raise ValueError(f"--attributes: unknown families {sorted(unknown)} (choose from ls, lc)")
    needed = ["atoms/atoms.parquet", "atoms/atom_index.tif", "masks/s2_absorption.parquet"]
    for m in [args.base, *families]:
        if m != "geoclip":
            needed.append(f"models/{m}/model.pt")
        else:
            needed.append("geoclip/cell_embeddings.parquet")
            if cfg["geoclip"]["image_tower"] == "trained":
                needed.append("models/geoclip_tower/model.pt")
    for need in needed:
        if not (results / need).exists():
            raise FileNotFoundError(
                f"{results / need} is missing: run the workflow first (snakemake ... results/{need})"
            )
    paths = [Path(p) for p in args.images]
    images = _photo_files(paths)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    by_folder: dict[Path, list[str]] = {}
    for p in images:
        by_folder.setdefault(p.resolve().parent, []).append(p.name)
    searched = 0
    too_small: list[tuple[Path, float]] = []
    shown: list[tuple[Path, dict[str, npt.NDArray[np.float64]]]] = []
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
                bad = folder / image_id
                print(f"geoens: error: {bad}: cannot decode the photo; skipped", file=sys.stderr)
                continue
            probs = {"s2": preds[args.base][image_id], **{f: preds[f][image_id] for f in families}}
            shown.append((folder / image_id, probs))
            stem = Path(image_id).stem
            if args.coverage is not None:
                _coverage_search(args, results, cfg, probs, preds, image_id, out / stem, folder)
                searched += 1
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
            if not len(regions):
                first = float(regions.attrs.get("first_group_km2", math.inf))
                too_small.append((folder / image_id, first))
                continue
            print(
                f"{folder / image_id}: {len(regions)} region group(s), {total:.4g} km^2 of "
                f"{args.budget_km2:.4g} km^2 -> {out / (stem + '.geojson')}"
            )
            searched += 1
    if args.html and shown:
        viewer = build_search_viewer(results, out / "viewer", shown, args.base, families, args.budget_km2)
        print(f"viewer of {viewer['photos']} photo(s) -> {out / 'viewer' / 'index.html'}")
    return _search_status(args.budget_km2, searched, too_small, len(shown), len(paths))


def _photo_files(paths: list[Path]) -> list[Path]:
    """The photo files among ``geoens search``'s arguments; one line on stderr per other argument.

    Raises:
        IsADirectoryError: If none is a file and one is a directory.
        FileNotFoundError: If none exists.

    """
    folders = [p for p in paths if p.is_dir()]
    missing = [str(p) for p in paths if not p.is_file() and not p.is_dir()]
    images = [p for p in paths if p.is_file()]
    if not images:
        if folders:
            raise IsADirectoryError(
                f"{folders[0]} is a directory, not a photo: give the photo files (e.g. {folders[0]}/*.jpg)"
            )
        raise FileNotFoundError(f"image(s) not found: {', '.join(missing)}")
    for name in missing:
        print(f"geoens: error: {name}: no such photo file; skipped", file=sys.stderr)
    for folder in folders:
        print(f"geoens: error: {folder}: is a directory, not a photo; skipped", file=sys.stderr)
    return images


def _search_status(
    budget_km2: float | None, searched: int, too_small: list[tuple[Path, float]], n_decoded: int, n_paths: int
) -> int:
    """Exit status of ``geoens search``; names the photos whose budget is below their first rank group.

    Raises:
        ValueError: If every decoded photo's budget is below its first rank group (with the smallest budget
            that returns a region).

    """
    if searched == 0 and too_small and len(too_small) == n_decoded:
        raise ValueError(_budget_hint(budget_km2 or 0.0, min(f for _, f in too_small)))
    for photo, first in too_small:
        print(f"geoens: error: {photo}: {_budget_hint(budget_km2 or 0.0, first)}; skipped", file=sys.stderr)
    if searched == 0:
        print(f"geoens: error: none of the {n_paths} photo(s) could be searched", file=sys.stderr)
        return 1
    return 0


def _budget_hint(budget_km2: float, first_km2: float) -> str:
    """Why a budget returned no region: smaller than the most likely rank group (or every score is 0)."""
    if not math.isfinite(first_km2):
        return "every atom has probability 0: no region to propose at any budget"
    return (
        f"--budget-km2 {budget_km2:.4g} is smaller than the most likely rank group ({first_km2:.4g} km^2): "
        f"no region fits; the smallest budget that returns a region is --budget-km2 {_round_up(first_km2)}"
    )


def _round_up(x: float) -> str:
    """``x`` rounded up to 4 significant digits, as typed on the command line."""
    e = math.floor(math.log10(x)) - 3 if x > 0 else 0
    return f"{math.ceil(x / 10.0**e) * 10.0**e:.4g}"


def cmd_explore(args: argparse.Namespace) -> int:
    """``geoens explore``: the offline map explorer of a finished run."""
    images: dict[str, str] = {}
    subset = (1.0, 0)
    if args.config is not None:
        cfg = effective_config([args.config])
        images = {k: v["images"] for k, v in cfg["inputs"]["testsets"].items() if "images" in v}
        subset = (float(cfg["calibrate"]["fraction"]), int(cfg["seed"]))
    r = build_explorer(
        args.results,
        args.out,
        sample=args.sample,
        image_dirs=images,
        seed=args.seed,
        calibration_subset=subset,
    )
    print(
        f"{Path(args.out) / 'index.html'}: {r['photos']} photos ({r['detail']} with regions), "
        f"{r['bytes'] / 1e6:.1f} MB"
    )
    return 0


def _assumed_mix(args: argparse.Namespace, results: Path) -> dict[str, float] | None:
    """``--mix``: the LS bucket shares to weight the calibrated region to, printed (``None`` without it)."""
    if args.mix is None:
        return None
    if args.coverage is None:
        raise ValueError("--mix needs --coverage (it shifts the calibrated region)")
    shares, source = resolve_mix(args.mix, results)
    print("assumed mix (" + source + "): " + ", ".join(f"{b}={v:.3f}" for b, v in shares.items()))
    return shares


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
        mix=args.mix_shares,
        subset=(float(cfg["calibrate"]["fraction"]), int(cfg["seed"])),
    )
    print(
        f"{folder / image_id}: {r['method']} {args.region} region {r['area_km2']:.4g} km^2, calibrated for "
        f"{r['level']:.0%} coverage on {r['n_calibration']} validation images"
        + (f" (LS bucket {r['group']})" if r["group"] != "all" else "")
        + (" weighted to the assumed mix" if r["mix"] is not None else "")
        + f" -> {r['paths']['geojson']}"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``geoens`` argument parser."""
    parser = argparse.ArgumentParser(prog="geoens", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"geoens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser(
        "validate", help="check config file(s) as a run would use them, and print the effective config"
    )
    v.add_argument("config", nargs="+", help="config file(s), merged in order like repeated --configfile")
    v.add_argument("--check-files", action="store_true", help="also require the input files to exist")
    v.add_argument("-q", "--quiet", action="store_true", help="print only the one-line verdict")
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
    s.add_argument(
        "--mix",
        help="with --coverage: the photos' LS bucket shares (lowest=0.5,low=0.2,medium=0.2,high=0.1) or "
        "a test set whose mix the workflow estimated; the region is weighted to that mix (DESIGN 12)",
    )
    s.add_argument("--config", default="config.yaml", help="the config the workflow ran with")
    s.add_argument("--results", default="results", help="the workflow's results folder")
    s.add_argument("--base", choices=["geoest", "geoclip"], default="geoclip", help="base geolocation model")
    s.add_argument(
        "--attributes", default="ls,lc", help="attribute families to ensemble: ls,lc | ls | lc | ''"
    )
    s.add_argument("--device", default="auto")
    s.add_argument("--out", default="search", help="output folder (one GeoJSON and GeoTIFF per photo)")
    s.add_argument(
        "--html", action="store_true", help="also write the map viewer of the photos (OUT/viewer/index.html)"
    )
    s.set_defaults(func=cmd_search)
    e = sub.add_parser("explore", help="write the offline map explorer of a finished run (index.html)")
    e.add_argument("--results", default="results", help="the workflow's results folder")
    e.add_argument("--out", default="results/explorer", help="the explorer's folder (replaced whole)")
    e.add_argument(
        "--config",
        default=None,
        help="the run's config (the test sets' photo folders for thumbnails; calibrate.fraction and seed)",
    )
    e.add_argument(
        "--sample", type=int, default=EXPLORER_SAMPLE, help="photos per test set with regions and thumbnail"
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the sample")
    e.set_defaults(func=cmd_explore)
    add_rva_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``geoens`` command."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, FileNotFoundError, IsADirectoryError, ValueError) as exc:
        print(f"geoens: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - one line naming the problem, never a traceback
        print(f"geoens: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
