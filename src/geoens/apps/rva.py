"""``geoens rva``: score any geolocator's predictions file by Recall vs Area and the usual point metrics.

For a user who has only predictions and a truth CSV (``IMG_ID, LAT, LON``): each predictions file is one
model (named by its file stem, or ``--name``), read by the contract of docs/byo.md. A ``point`` model is
scored exactly by distance ranking (its area-to-hit is the cap of radius ``d``; no masks, no grid); the
other kinds, and the ensembles with the run's LS/LC predictors, need a workflow results folder
(``--results``). Outputs in ``--out``: ``per_image.parquet``, ``table.{csv,md,tex}``, ``rva.{pdf,png}`` and
``summary.json`` (settings, images matched, missing and not in the truth, per model).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoens.core.constants import GCD_RADIUS_KM
from geoens.core.io import atomic_path, write_json
from geoens.data.metadata import read_metadata
from geoens.data.predictions import PredictionSpec, read_point_predictions
from geoens.evaluation.countries import COUNTRY_SOURCE, same_country
from geoens.evaluation.external import point_per_image
from geoens.evaluation.pointmetrics import cap_budgets, point_summary
from geoens.reports.scorecard import scorecard_figure, write_scorecard

log = logging.getLogger("geoens.apps.rva")


def _columns(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"--columns: {part!r} is not name=column (e.g. lat=LAT_pred)")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _spec(args: argparse.Namespace, path: Path) -> PredictionSpec:
    name = args.name if args.name else path.stem
    return PredictionSpec(
        name=name, kind=args.kind, units=args.units, order=args.order, columns=_columns(args.columns)
    )


def score_point_file(
    path: Path, spec: PredictionSpec, truth: pd.DataFrame, radius_km: float, strict_less: bool, country: bool
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-image rows and the summary row of one ``point`` predictions file against the truth."""
    pred = read_point_predictions(path, spec)
    per_image, match = point_per_image(pred, truth, spec.name, radius_km, str(path))
    same = None
    if country:
        same = same_country(
            per_image["top1_lat"].to_numpy(), per_image["top1_lon"].to_numpy(),
            truth["lat"].to_numpy(np.float64), truth["lon"].to_numpy(np.float64),
        )  # fmt: skip
    row = point_summary(per_image["gcd_km"], per_image["area_km2"], cap_budgets(radius_km), strict_less, same)
    return per_image, {"model": spec.name, **row, "_match": {"file": str(path), **match.summary()}}


def cmd_rva(args: argparse.Namespace) -> int:
    """``geoens rva``: per-image Parquet, the scorecard table and the RvA figure of each predictions file."""
    t0 = time.perf_counter()
    if args.name and len(args.predictions) > 1:
        raise ValueError("--name names one predictions file; with several, each is named by its file stem")
    if args.radius_km <= 0:
        raise ValueError(f"--radius-km must be positive, got {args.radius_km}")
    if args.kind != "point" or args.results:
        raise ValueError(
            f"--kind {args.kind}{' with --results' if args.results else ''}: this command scores kind "
            "'point' files by distance ranking; the other kinds and the LS/LC ensembles run in the workflow "
            "(models.external in the config, docs/byo.md)"
        )
    truth, _ = read_metadata(args.truth)
    paths = [Path(p) for p in args.predictions]
    names = [_spec(args, p).name for p in paths]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"two predictions files would give the model name(s) {dup}: rename one")
    frames, rows = [], []
    for k, path in enumerate(paths, 1):
        per_image, row = score_point_file(
            path, _spec(args, path), truth, args.radius_km, args.strict_less, not args.no_country
        )
        frames.append(per_image)
        rows.append(row)
        log.info("[%d/%d] %s: %d images scored (%.1f s)", k, len(paths), path, len(per_image),
                 time.perf_counter() - t0)  # fmt: skip
    _write_outputs(Path(args.out), args, truth, frames, rows)
    out = Path(args.out)
    print((out / "table.md").read_text(encoding="utf-8"), end="")
    print(f"-> {out}: per_image.parquet, table.csv/md/tex, rva.pdf/png, summary.json")
    return 0


def _write_outputs(
    out: Path,
    args: argparse.Namespace,
    truth: pd.DataFrame,
    frames: list[pd.DataFrame],
    rows: list[dict[str, Any]],
) -> None:
    per_image = pd.concat(frames, ignore_index=True)
    with atomic_path(out / "per_image.parquet") as tmp:
        per_image.to_parquet(tmp, index=False)
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "_match"} for r in rows])
    op = "<" if args.strict_less else "<="
    title = f"{Path(args.truth).stem}: {len(truth)} images"
    note = (
        f"Accuracy counts d {op} r; distances and cap areas on a sphere of R = {args.radius_km:g} km; "
        f"RvA of a single point = its distance ranking (cap areas). Country: {COUNTRY_SOURCE}."
    )
    paths = {fmt: out / f"table.{fmt}" for fmt in ("csv", "md", "tex")}
    write_scorecard(table, paths, title, args.strict_less, note)
    areas = {str(f["base"].iloc[0]): f["area_km2"].to_numpy() for f in frames}
    scorecard_figure(areas, cap_budgets(args.radius_km), out / "rva.pdf", out / "rva.png", title)
    summary = {
        "truth": str(args.truth),
        "n_truth": len(truth),
        "kind": args.kind,
        "units": args.units,
        "order": args.order,
        "radius_km": args.radius_km,
        "comparison": op,
        "country_source": None if args.no_country else COUNTRY_SOURCE,
        "models": [r["_match"] | {"model": r["model"]} for r in rows],
    }
    write_json(out / "summary.json", summary)


def add_rva_parser(sub: Any) -> None:
    """Register ``geoens rva`` on the ``geoens`` subcommand parsers."""
    r = sub.add_parser("rva", help="score predictions files of any geolocator: RvA and point metrics")
    r.add_argument("predictions", nargs="+", help="predictions file(s) (docs/byo.md); one model each")
    r.add_argument("--truth", required=True, help="truth CSV with IMG_ID, LAT, LON")
    r.add_argument("--kind", choices=["point", "points", "samples", "cells"], default="point")
    r.add_argument("--name", help="model name (one file; default: the file's stem)")
    r.add_argument(
        "--units", choices=["degrees", "radians"], default="degrees", help="declared, never guessed"
    )
    r.add_argument("--order", choices=["latlon", "lonlat"], default="latlon", help="order of a 'coords' pair")
    r.add_argument(
        "--columns", help="contract name=file column, comma separated (e.g. lat=LAT_pred,lon=LON_pred)"
    )
    r.add_argument(
        "--radius-km", type=float, default=GCD_RADIUS_KM, help="sphere radius (GeoEstimation: 6371)"
    )
    r.add_argument(
        "--strict-less", action="store_true", help="count d < r (OSV-5M, PIGEON, G3) instead of <="
    )
    r.add_argument("--no-country", action="store_true", help="skip country accuracy")
    r.add_argument("--results", help="a workflow results folder (masks, atoms, LS/LC predictions)")
    r.add_argument("--out", required=True, help="output folder")
    r.set_defaults(func=cmd_rva)
