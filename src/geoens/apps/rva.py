"""``geoens rva``: score any geolocator's predictions file by Recall vs Area and the usual point metrics.

For a user who has only predictions and a truth CSV (``IMG_ID, LAT, LON``, or other names declared with
``--truth-columns``): each predictions file is one model (named by its file stem, or ``--name``), read by
the contract of docs/byo.md. A ``point`` model is scored exactly by distance ranking (its area-to-hit is
the cap of radius ``d``; no masks, no grid). The other kinds (and a point read as a vMF density) need a
grid: their partition alone (``--partition``, rasterised on a ``--grid-rows`` grid) scores the base model
by itself, and a workflow results folder (``--results``) gives the run's grid and, with ``--testset``,
the ensembles with its LS/LC predictors. Outputs in ``--out``: ``per_image.parquet``,
``table.{csv,md,tex}``, ``rva.{pdf,png}`` and ``summary.json`` (settings, images matched, missing and not
in the truth, per model).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoens.core.constants import GCD_RADIUS_KM, PAPER_GRID_HEIGHT
from geoens.core.grid import Grid
from geoens.core.io import atomic_path, write_json
from geoens.data.metadata import MetadataError, read_metadata
from geoens.data.predictions import PredictionSpec, align_to_truth, read_point_predictions
from geoens.evaluation.countries import COUNTRY_SOURCE, same_country
from geoens.evaluation.external import fit_vmf_kappa, point_per_image
from geoens.evaluation.external_grid import (
    RunContext,
    cells_on_run,
    evaluate_external,
    open_partition,
    open_run,
)
from geoens.evaluation.methods import method_order, own_top1_name
from geoens.evaluation.pointmetrics import cap_budgets, point_summary
from geoens.reports.scorecard import scorecard_figure, write_scorecard

log = logging.getLogger("geoens.apps.rva")


def _columns(text: str | None, option: str = "--columns", example: str = "lat=LAT_pred") -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"{option}: {part!r} is not name=column (e.g. {example})")
        k, v = part.split("=", 1)
        if k.strip() in out:
            raise ValueError(f"{option}: {k.strip()!r} is given twice")
        out[k.strip()] = v.strip()
    return out


#: ``--truth-columns`` keys (the contract's names) -> the metadata reader's columns
TRUTH_KEYS: dict[str, str] = {"image_id": "IMG_ID", "lat": "LAT", "lon": "LON"}


def read_truth(path: str | Path, mapping: str | None) -> pd.DataFrame:
    """The truth CSV's ``image_id, lat, lon``; ``mapping``: ``--truth-columns`` (e.g. ``lat=latitude``).

    Raises:
        ValueError: A key other than image_id, lat, lon; or, naming the file, a missing column (with a hint
            at ``--truth-columns``) or an unparsable file. Bad rows (duplicate ids, impossible coordinates)
            are dropped and counted by :func:`read_metadata`: in a warning, and in the frame's
            ``attrs["dropped"]`` (``BadRows.to_dict``) for the table's note and ``summary.json``.

    """
    given = _columns(mapping, "--truth-columns", "lat=latitude")
    unknown = sorted(set(given) - set(TRUTH_KEYS))
    if unknown:
        raise ValueError(f"--truth-columns: unknown key(s) {unknown}; the keys are {list(TRUTH_KEYS)}")
    try:
        truth, bad = read_metadata(path, columns={TRUTH_KEYS[k]: v for k, v in given.items()})
    except MetadataError as exc:
        if "missing column" not in str(exc):
            raise
        raise MetadataError(f"{exc}; name yours with --truth-columns image_id=...,lat=...,lon=...") from exc
    truth.attrs["dropped"] = bad.to_dict()
    if bad.n_bad:
        truth.attrs["dropped_text"] = bad.describe()
    return truth


def _spec(args: argparse.Namespace, path: Path) -> PredictionSpec:
    name = args.name if args.name else path.stem
    return PredictionSpec(
        name=name,
        kind=args.kind,
        units=args.units,
        order=args.order,
        columns=_columns(args.columns),
        # without --results the partition is the grid's only family (open_partition), not one more on it
        partition=Path(args.partition) if args.partition and args.results else None,
        partition_label=args.partition_label,
        kappa=args.kappa,
        smooth_kappa=args.smooth_kappa,
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


def score_on_grid(
    run: RunContext, path: Path, spec: PredictionSpec, truth: pd.DataFrame, args: argparse.Namespace
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Every method of one predictions file on the run's grid: per-image rows and a summary row per method."""
    atoms, lookup, part, ids, probs = cells_on_run(run, path, spec)
    per_image, match = evaluate_external(
        spec.name,
        atoms,
        lookup,
        part,
        truth,
        ids,
        probs,
        run.attributes,
        threads=args.threads,
        source=str(path),
    )
    budgets = cap_budgets(lookup.grid.earth_radius_km)
    rows = []
    for method in [
        m for m in method_order([spec.name]) if m != own_top1_name(spec.name)
    ]:  # own top-1: no area
        m = per_image[per_image["method"] == method]
        if m.empty:
            continue
        t = truth.set_index("image_id").loc[m["image_id"]]
        same = None
        if not args.no_country:
            same = same_country(m["top1_lat"], m["top1_lon"], t["lat"], t["lon"])
        row = point_summary(m["gcd_km"], m["area_km2"], budgets, args.strict_less, same)
        rows.append({"model": method, **row, "_match": {"file": str(path), **match.summary()}})
    return per_image, rows


def fit_kappa_on_val(args: argparse.Namespace, predictions: Path, truth_csv: Path) -> float:
    """Maximum-likelihood vMF ``kappa`` of a ``point`` model from its val predictions and truth.

    The options were checked by :func:`_check_args` (kind ``point``, a grid from ``--results`` or
    ``--partition``, no ``--kappa``).

    Raises:
        ValueError: As :func:`fit_vmf_kappa`.
    """
    pred = read_point_predictions(predictions, _spec(args, predictions))
    vt = read_truth(truth_csv, args.truth_columns)
    m = align_to_truth(pred.ids, vt["image_id"].astype(str).tolist(), predictions)
    t = vt.iloc[m.truth_rows]
    kappa = fit_vmf_kappa(pred.lat[m.pred_rows], pred.lon[m.pred_rows], t["lat"], t["lon"])
    log.info(
        "%s: kappa %.6g fitted on %d val images (maximum likelihood)", predictions, kappa, m.pred_rows.size
    )
    return kappa


def _check_args(args: argparse.Namespace) -> None:
    """Option errors before any file is read.

    Raises:
        ValueError: Naming the option.
    """
    if args.name and len(args.predictions) > 1:
        raise ValueError("--name names one predictions file; with several, each is named by its file stem")
    if args.radius_km <= 0:
        raise ValueError(f"--radius-km must be positive, got {args.radius_km}")
    on_grid = bool(args.kind != "point" or args.kappa is not None or args.val is not None)
    if on_grid and not (args.results or args.partition):
        what = f"--kind {args.kind}" if args.kind != "point" else "a point as a vMF density (--kappa, --val)"
        raise ValueError(
            f"{what} needs --results (a workflow results folder: its grid, masks and atoms) or --partition "
            "(its cells, scored alone on a --grid-rows grid); only kind 'point' is scored without either, "
            "by distance ranking"
        )
    if args.kind == "point" and args.partition and not on_grid:
        raise ValueError(
            "--partition with a point model reads each point as a vMF density on that partition: give "
            "--kappa or --val (or leave --partition out for the exact distance ranking)"
        )
    if args.val and args.kind != "point":
        raise ValueError(f"--val fits the kappa of a point model; --kind {args.kind} has none to fit")
    if args.val and args.kappa is not None:
        raise ValueError("--val fits kappa: do not also give --kappa")
    if args.testset and not args.results:
        raise ValueError("--testset names the LS/LC predictions of a results folder: give --results too")
    if args.grid_rows is not None:
        if args.results or not on_grid:
            raise ValueError("--grid-rows sets the grid of a --partition scored without --results")
        if args.grid_rows < 2:
            raise ValueError(f"--grid-rows must be at least 2, got {args.grid_rows}")


def _partition_alone_rows(args: argparse.Namespace) -> int | None:
    """Rows of the grid a ``--partition`` is scored on without ``--results`` (``None``: not that case)."""
    if args.results or not args.partition or (args.kind == "point" and args.kappa is None and not args.val):
        return None
    return int(args.grid_rows if args.grid_rows is not None else PAPER_GRID_HEIGHT)


def _open_context(args: argparse.Namespace) -> RunContext | None:
    """The results folder's grid and atoms, a partition alone on a grid, or ``None`` (distance ranking)."""
    if args.results:
        return open_run(args.results, args.testset)
    rows = _partition_alone_rows(args)
    if rows is None:
        return None
    grid = Grid(height=rows, width=2 * rows, earth_radius_km=args.radius_km)
    return open_partition(args.partition, grid, args.partition_label)


def cmd_rva(args: argparse.Namespace) -> int:
    """``geoens rva``: per-image Parquet, the scorecard table and the RvA figure of each predictions file."""
    t0 = time.perf_counter()
    _check_args(args)
    truth = read_truth(args.truth, args.truth_columns)
    run = _open_context(args)
    if args.val:
        args.kappa = fit_kappa_on_val(args, Path(args.val[0]), Path(args.val[1]))
    paths = [Path(p) for p in args.predictions]
    names = [_spec(args, p).name for p in paths]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"two predictions files would give the model name(s) {dup}: rename one")
    frames, rows = [], []
    for k, path in enumerate(paths, 1):
        if run is None:
            per_image, row = score_point_file(
                path, _spec(args, path), truth, args.radius_km, args.strict_less, not args.no_country
            )
            frames.append(per_image)
            rows.append(row)
        else:
            per_image, more = score_on_grid(run, path, _spec(args, path), truth, args)
            frames.append(per_image)
            rows += more
        log.info("[%d/%d] %s: %d images scored (%.1f s)", k, len(paths), path,
                 per_image["image_id"].nunique(), time.perf_counter() - t0)  # fmt: skip
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
    rows_alone = _partition_alone_rows(args)
    if args.results or rows_alone:
        where = f"the grid of {args.results}"
        if rows_alone is not None:
            where = (
                f"{Path(args.partition).name} rasterised at {rows_alone} x {2 * rows_alone} (pixel areas "
                f"on a sphere of R = {args.radius_km:g} km)"
            )
        note = (
            f"Accuracy counts d {op} r from each method's grid top-1 (haversine, R = {GCD_RADIUS_KM:g} km); "
            f"RvA by Alg. 3 on {where}"
            + (f"; each point is a vMF density (kappa {args.kappa:g})" if args.kind == "point" else "")
            + "."
        )
    else:
        note = (
            f"Accuracy counts d {op} r; distances and cap areas on a sphere of R = {args.radius_km:g} km; "
            f"RvA of a single point = its distance ranking (cap areas)."
        )
    if "dropped_text" in truth.attrs:
        n_bad = truth.attrs["dropped"]["rows_bad"]
        note += f" {n_bad} truth row(s) dropped ({truth.attrs['dropped_text']}): see summary.json."
    if not args.no_country:
        note += f" Country: {COUNTRY_SOURCE}."
    paths = {fmt: out / f"table.{fmt}" for fmt in ("csv", "md", "tex")}
    write_scorecard(table, paths, title, args.strict_less, note)
    areas = {
        str(method): g["area_km2"].to_numpy()
        for f in frames
        for method, g in f.groupby("method", sort=False)
        if g["area_km2"].notna().any()  # not a model's own top-1 (no area)
    }
    scorecard_figure(areas, cap_budgets(args.radius_km), out / "rva.pdf", out / "rva.png", title)
    summary = {
        "truth": str(args.truth),
        "n_truth": len(truth),
        "truth_rows_dropped": truth.attrs.get("dropped"),
        "kind": args.kind,
        "units": args.units,
        "order": args.order,
        "radius_km": args.radius_km,
        "kappa": args.kappa,
        "results": args.results,
        "partition": args.partition,
        "grid_rows": rows_alone,
        "comparison": op,
        "country_source": None if args.no_country else COUNTRY_SOURCE,
        "models": [r["_match"] | {"model": r["model"]} for r in rows],
    }
    write_json(out / "summary.json", summary)


def add_rva_parser(sub: Any) -> None:
    """Register ``geoens rva`` on the ``geoens`` subcommand parsers."""
    r = sub.add_parser("rva", help="score predictions files of any geolocator: RvA and point metrics")
    r.add_argument("predictions", nargs="+", help="predictions file(s) (docs/byo.md); one model each")
    r.add_argument("--truth", required=True, help="truth CSV with IMG_ID, LAT, LON (see --truth-columns)")
    r.add_argument(
        "--truth-columns",
        help="the truth CSV's names, comma separated (e.g. image_id=id,lat=latitude,lon=longitude)",
    )
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
    r.add_argument("--results", help="a workflow results folder: its grid, masks and atoms (any kind)")
    r.add_argument(
        "--testset", help="with --results: ensemble with results/predictions/TESTSET/{ls,lc}.parquet"
    )
    r.add_argument(
        "--partition", help="the model's cells (S2 CSV, GeoPackage, GeoJSON); default: the run's fine"
    )
    r.add_argument("--partition-label", default="label", help="label column of a polygons partition")
    r.add_argument(
        "--grid-rows",
        type=int,
        help=f"without --results: rows of the grid the partition is scored on (width 2x; "
        f"default {PAPER_GRID_HEIGHT}, the paper's)",
    )
    r.add_argument(
        "--kappa",
        type=float,
        help="kind point with --results or --partition: vMF concentration of its density",
    )
    r.add_argument(
        "--val",
        nargs=2,
        metavar=("PREDICTIONS", "TRUTH"),
        help="kind point: fit kappa on val (max. likelihood)",
    )
    r.add_argument("--smooth-kappa", type=float, help="kinds points/samples: vMF smoothing (default: none)")
    r.add_argument("--threads", type=int, default=1, help="methods evaluated at a time")
    r.add_argument("--out", required=True, help="output folder")
    r.set_defaults(func=cmd_rva)
