"""The map explorer of a run: one folder with ``index.html`` that opens from ``file://`` with no network.

The page's code is the folder ``explorer_web/`` of this package (template, ``app.js``, ``style.css`` and the
vendored Leaflet); this module writes the run's data beside it as ``<script>`` files that set globals (a
page opened from ``file://`` cannot fetch files):

- ``data/run.js``: test sets, bases and their methods, the LS buckets, the region level scale, the base map
  (land cover image drawn from the run's masks, land outline as GeoJSON) and the RvA curves and table
  numbers of every test set (:func:`geoens.evaluation.metrics.summarise`, as the tables);
- ``data/summary_<testset>.js``: every photo (truth, LS bucket, ``100 log10`` area-to-hit per method);
- ``data/detail/<testset>/<k>.js``: a sample of photos (the failures first): each method's numbers from
  the per-image table, the region image of each ranked method (:mod:`geoens.reports.explorer_regions`) and
  the calibrated region areas; loaded when the photo is clicked. ``images/<testset>/<k>.jpg``: thumbnails.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import rasterio
from PIL import Image
from rasterio import features
from rasterio.enums import Resampling
from shapely.geometry import mapping, shape
from shapely.ops import unary_union

from geoens.core.constants import (
    CAP_AREAS_KM2,
    EXPLORER_REGION_WIDTH,
    EXPLORER_SAMPLE,
    EXPLORER_THUMB_SIDE,
    GCD_THRESHOLD_NAMES,
    LS_BUCKETS,
)
from geoens.core.io import atomic_path
from geoens.core.types import FloatArray
from geoens.data.labeltable import read_label_points
from geoens.evaluation.methods import method_name
from geoens.evaluation.metrics import curve_alphas, recall_at, summarise
from geoens.evaluation.shiftcal import resolve_mix
from geoens.evaluation.testset import PER_IMAGE_COLUMNS, read_attribute_probs, read_probs
from geoens.reports.explorer_regions import (
    RegionContext,
    method_of,
    region_context,
    region_images,
    region_map_uri,
)

log = logging.getLogger(__name__)

#: Colours of the land-cover classes on the base map (cycled when there are more classes).
LC_PALETTE: tuple[str, ...] = (
    "#e8d88a", "#3f8f3a", "#2f6b2a", "#7fb069", "#b5c99a", "#d9c7a0", "#9fc4c4", "#c9a27e",
    "#6fa8a0", "#e0e0e0", "#b08a5a", "#f2f2e6",
)  # fmt: skip
#: Colour of the sea (pixels outside every LS bucket) on the base map.
SEA_RGBA: tuple[int, int, int, int] = (214, 228, 240, 255)


def web_assets() -> Path:
    """Folder of the page's own files shipped with the package (``explorer_web/``)."""
    return Path(str(resources.files("geoens.reports") / "explorer_web"))


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------
#: Columns an ``external_<name>.parquet`` must have (the rest of the per-image columns are filled).
EXTERNAL_REQUIRED: tuple[str, ...] = ("image_id", "base", "method", "area_km2")


def read_eval_tables(results: str | Path) -> dict[str, pd.DataFrame]:
    """Per-image tables of every evaluated test set: ``per_image.parquet`` plus any ``external_*.parquet``.

    Raises:
        FileNotFoundError: If no test set was evaluated.
        ValueError: Naming the file, on a table without the per-image columns.

    """
    root = Path(results) / "eval"
    out: dict[str, pd.DataFrame] = {}
    for path in sorted(root.glob("*/per_image.parquet")):
        frames: list[pd.DataFrame] = []
        for p in [path, *sorted(path.parent.glob("external_*.parquet"))]:
            df = pd.read_parquet(p)
            # an external table may leave out what its model has no notion of (filled: no top-1, no GCD)
            need = PER_IMAGE_COLUMNS if p == path else EXTERNAL_REQUIRED
            missing = [c for c in need if c not in df.columns]
            if missing:
                raise ValueError(f"{p}: missing per-image column(s) {missing}")
            fill = {"zero_prob": False, "top1_lat": np.nan, "top1_lon": np.nan, "gcd_km": np.nan}
            df = df.assign(**{k: v for k, v in fill.items() if k not in df.columns})
            if "ls_bucket" not in df.columns:
                bucket = frames[0].groupby("image_id")["ls_bucket"].first()
                df["ls_bucket"] = df["image_id"].map(bucket).fillna(-1).astype(np.int8)
            frames.append(df[list(PER_IMAGE_COLUMNS)])
        out[path.parent.name] = pd.concat(frames, ignore_index=True)
    if not out:
        raise FileNotFoundError(
            f"{root}/<testset>/per_image.parquet: no evaluated test set (run the workflow)"
        )
    return out


def pick_sample(worst: FloatArray, n: int, seed: int) -> npt.NDArray[np.int64]:
    """Photos with detail: all when at most ``n``; else the quarter with the largest areas, then random.

    Args:
        worst: Each photo's largest area-to-hit over the methods (``inf`` where some method never hits it).
        n: Photos to pick.
        seed: Seed of the random part.

    """
    m = worst.size
    if m <= n:
        return np.arange(m, dtype=np.int64)
    order = np.argsort(-worst, kind="stable")
    fails = order[: n // 4]
    rest = np.setdiff1d(np.arange(m), fails)
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([fails, rng.choice(rest, n - fails.size, replace=False)]))


# --------------------------------------------------------------------------------------------------
# Base map
# --------------------------------------------------------------------------------------------------
def _read_small(path: Path, width: int) -> tuple[npt.NDArray[Any], list[str] | None]:
    """A label raster read at most ``width`` pixels wide (nearest), and its ``classes`` tag."""
    with rasterio.open(path) as ds:
        w = min(width, ds.width)
        h = max(1, round(ds.height * w / ds.width))
        arr = ds.read(1, out_shape=(h, w), resampling=Resampling.nearest)
        cls = ds.tags().get("classes")
    return arr, (json.loads(cls) if cls else None)


def _rgb(hex_colour: str) -> tuple[int, int, int, int]:
    return int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16), 255


def write_basemap(results: Path, data: Path, width: int = EXPLORER_REGION_WIDTH) -> dict[str, Any]:
    """Land-cover PNG and land outline GeoJSON of the run's masks -> the base map's entry of ``run.js``."""
    lc, classes = _read_small(results / "masks" / "lc.tif", width)
    ls, _ = _read_small(results / "masks" / "ls.tif", width)
    names = classes or [f"class {k}" for k in range(int(lc.max()) + 1)]
    lut = np.array([_rgb(LC_PALETTE[k % len(LC_PALETTE)]) for k in range(len(names))] + [SEA_RGBA], np.uint8)
    land = ls >= 0
    rgba = lut[np.where((lc >= 0) & land, lc, len(names))]
    Image.fromarray(rgba, mode="RGBA").save(data / "basemap.png", optimize=True)
    h, w = land.shape
    tr = rasterio.transform.from_bounds(-180, -90, 180, 90, w, h)
    polys = [shape(g) for g, v in features.shapes(land.astype(np.uint8), mask=land, transform=tr) if v]
    outline = unary_union(polys).simplify(180 / h) if polys else None
    legend = [{"name": n, "colour": LC_PALETTE[k % len(LC_PALETTE)]} for k, n in enumerate(names)]
    return {
        "image": "data/basemap.png",
        "bounds": [[-90, -180], [90, 180]],
        "legend": legend,
        "outline": mapping(outline) if outline is not None else None,
    }


# --------------------------------------------------------------------------------------------------
# Per test set
# --------------------------------------------------------------------------------------------------
def _num(x: Any, digits: int = 7) -> float | None:
    """A JSON-safe float (``None`` for NaN / inf), rounded to ``digits`` significant digits."""
    v = float(x)
    return float(f"{v:.{digits}g}") if math.isfinite(v) else None


def method_keys(per_image: pd.DataFrame) -> list[tuple[str, str]]:
    """``(base, method)`` pairs of a per-image table, in the order they first appear."""
    return list(dict.fromkeys(zip(per_image["base"], per_image["method"], strict=True)))


def curves_entry(per_image: pd.DataFrame, n_points: int) -> dict[str, Any]:
    """RvA curves and the table's recall at the caps (original test set, as ``results/tables``)."""
    summ = summarise(
        per_image, balanced=False, n_boot=0, seed=0, balanced_seed=0, alphas=curve_alphas(n_points)
    )
    alphas = curve_alphas(n_points)
    recall: dict[str, list[float | None]] = {}
    caps: dict[str, list[float | None]] = {}
    cols = [c for c in summ.table.columns if c.startswith("rva_") and not c.endswith(("_lo", "_hi"))]
    listed = set()
    for _, row in summ.table.iterrows():
        key = f"{row['base']}|{row['method']}"
        caps[key] = [_num(row[c]) for c in cols]
        listed.add(key)
    for (base, method), sub in per_image.groupby(["base", "method"], sort=False):
        key = f"{base}|{method}"
        area = sub["area_km2"].to_numpy(np.float64)
        if np.all(np.isnan(area)):
            continue
        recall[key] = [_num(v, 5) for v in recall_at(area, alphas)]
        if key not in listed:  # a method the tables do not list (e.g. an external model's)
            caps[key] = [_num(v) for v in recall_at(area, CAP_AREAS_KM2)]
    return {
        "alphas": [_num(a, 5) for a in alphas],
        "recall": recall,
        "caps": caps,
        "cap_names": list(GCD_THRESHOLD_NAMES),
        "cap_areas": [_num(a, 5) for a in CAP_AREAS_KM2],
        "n": int(per_image["image_id"].nunique()),
    }


def summary_frame(per_image: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """One row per photo with a truth: ``image_id, lat, lon, ls_bucket`` and one area column per method."""
    wide = per_image.pivot_table(
        index="image_id", columns=["base", "method"], values="area_km2", aggfunc="first", dropna=False
    )
    wide.columns = [f"{c[0]}|{c[1]}" for c in wide.columns]
    bucket = per_image.groupby("image_id")["ls_bucket"].first()
    lab = labels.set_index("image_id")[["lat", "lon"]]
    ids = [i for i in lab.index if i in wide.index]
    out = lab.loc[ids].copy()
    out["ls_bucket"] = bucket.loc[ids].to_numpy()
    return out.join(wide.loc[ids]).reset_index()


def _log_area(values: pd.Series) -> list[int | None]:
    """``round(100 log10 area)`` of each value (``None`` where there is no area)."""
    a = values.to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lg = np.round(100 * np.log10(np.maximum(a, 1e-3)))
    return [int(v) if math.isfinite(x) else None for v, x in zip(lg, a, strict=True)]


def write_photo_points(
    data: Path, testset: str, summ: pd.DataFrame, keys: Sequence[str], detail: npt.NDArray[np.int64]
) -> None:
    """``data/summary_<testset>.js``: every photo as columns (the page's point layer)."""
    k_of = np.full(len(summ), -1, np.int64)
    k_of[detail] = np.arange(detail.size)
    obj = {
        "ids": summ["image_id"].tolist(),
        "lat": [round(float(v), 4) for v in summ["lat"]],
        "lon": [round(float(v), 4) for v in summ["lon"]],
        "bucket": [int(v) for v in summ["ls_bucket"]],
        "detail": k_of.tolist(),
        "log_area": {k: _log_area(summ[k]) for k in keys},
    }
    write_global(data / f"summary_{testset}.js", f"GEOENS_SUMMARY[{json.dumps(testset)}]", obj)


def write_global(path: Path, target: str, obj: Any) -> None:
    """A ``<script>`` data file that assigns ``obj`` (as JSON) to ``target`` (``window.X`` or ``X[key]``)."""
    root = target.split("[")[0]
    text = f"window.{root} = window.{root} || {{}};\n" if "[" in target else ""
    text += (
        f"{'window.' + target if '[' not in target else target} = {json.dumps(obj, separators=(',', ':'))};\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def thumbnail(src: Path, dest: Path, side: int = EXPLORER_THUMB_SIDE) -> bool:
    """A JPEG thumbnail of a photo (``False`` when it cannot be read)."""
    try:
        with Image.open(src) as opened:
            im = opened.convert("RGB")
            im.thumbnail((side, side))
            dest.parent.mkdir(parents=True, exist_ok=True)
            im.save(dest, format="JPEG", quality=80)
    except OSError as exc:
        log.warning("%s: no thumbnail (%s)", src, exc)
        return False
    return True


def photo_rows(per_image: pd.DataFrame, ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Each photo's per-image rows (every base and method), as the page's panel shows them."""
    sub = per_image[per_image["image_id"].isin(set(ids))]
    out: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    for rec in sub.to_dict("records"):
        out[str(rec["image_id"])].append(
            {
                "base": rec["base"],
                "method": rec["method"],
                "area_km2": _num(rec["area_km2"]),
                "zero_prob": bool(rec["zero_prob"]),
                "top1": [_num(rec["top1_lat"]), _num(rec["top1_lon"])],
                "gcd_km": _num(rec["gcd_km"]),
            }
        )
    return out


def base_regions(
    ctx: RegionContext,
    scores: Mapping[str, FloatArray],
    base: str,
    methods: Sequence[str],
    mix: Mapping[str, float] | None = None,
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Region images (per method, one per photo of the batch) and calibrated areas of one base model.

    ``mix``: the test set's estimated LS bucket shares (the weighted calibrated region); ``None``: none.
    """
    uris: dict[str, list[str]] = {}
    cal: dict[str, Any] = {}
    for name in methods:
        m = method_of(name, [base])
        if m is None:
            continue
        uris[name], cal[name], _ = region_images(ctx, m, scores, mix)
    return uris, cal


def testset_mix(results: Path, testset: str) -> dict[str, float] | None:
    """The LS bucket mix the workflow estimated for a test set (as ``geoens search --mix``), or ``None``."""
    if not (results / "calibration" / testset / "shift.json").exists():
        return None
    return resolve_mix(testset, results)[0]


def testset_regions(
    results: Path,
    testset: str,
    ids: Sequence[str],
    methods: Mapping[str, Sequence[str]],
    ctx: RegionContext | None,
    subset: tuple[float, int] = (1.0, 0),
) -> tuple[dict[str, dict[str, Any]], RegionContext | None]:
    """Region images of each sampled photo: ``{image_id: {"regions": {key: uri}, "cal": {key: ...}}}``.

    ``subset`` is the run's ``(calibrate.fraction, seed)``. Where the workflow estimated the test set's
    population mix (``calibration/<testset>/shift.json``), the calibrated areas include the adaptive region
    weighted to it.
    """
    pred = results / "predictions" / testset
    out: dict[str, dict[str, Any]] = {i: {"regions": {}, "cal": {}} for i in ids}
    attr_paths = {f: pred / f"{f}.parquet" for f in ("ls", "lc")}
    if not ids or not all(p.exists() for p in attr_paths.values()):
        return out, ctx
    attr = read_attribute_probs(attr_paths)
    for base, names in methods.items():
        path = pred / f"{base}.parquet"
        if not path.exists():
            log.info("%s: no predictions of %s; its photos get no region", path, base)
            continue
        all_ids, probs = read_probs(path)
        pos = pd.Series(np.arange(len(all_ids)), index=all_ids)
        have = [i for i in ids if i in pos.index and i in attr["ls"][0].index and i in attr["lc"][0].index]
        if not have:
            continue
        if ctx is None:
            ctx = region_context(results, probs.shape[1], subset=subset)
        if ctx.ev.n_classes["s2"] != probs.shape[1]:
            log.warning("%s: %d classes, not the fine cells; no regions", path, probs.shape[1])
            continue
        p = {"s2": probs[pos.loc[have].to_numpy()]}
        for f in ("ls", "lc"):
            p[f] = attr[f][1][attr[f][0].loc[have].to_numpy()]
        uris, cal = base_regions(ctx, ctx.ev.scores(p, have), base, names, testset_mix(results, testset))
        for k, i in enumerate(have):
            for name, u in uris.items():
                out[i]["regions"][f"{base}|{name}"] = u[k]
                out[i]["cal"][f"{base}|{name}"] = {
                    kind: {lev: _num(v[k]) for lev, v in by.items()} for kind, by in cal[name].items()
                }
    return out, ctx


# --------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------
def write_page(folder: Path, scripts: Sequence[str], title: str) -> None:
    """The page's own files (template, code, vendored Leaflet) with the data scripts it loads."""
    web = web_assets()
    for name in ("app.js", "style.css"):
        shutil.copy2(web / name, folder / name)
    shutil.copytree(web / "vendor", folder / "vendor", dirs_exist_ok=True)
    tags = "\n".join(f'<script src="{s}"></script>' for s in scripts)
    html = (web / "index.html").read_text(encoding="utf-8")
    html = html.replace("<!-- GEOENS_DATA -->", tags).replace("GEOENS_TITLE", html_escape(title))
    (folder / "index.html").write_text(html, encoding="utf-8")


def html_escape(s: str) -> str:
    """Text for HTML (``&``, ``<``, ``>``, ``"``)."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def folder_bytes(folder: str | Path) -> int:
    """Total size of the files under a folder."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _detail_record(
    testset: str, image_id: str, truth: tuple[float, float] | None, bucket: int, image: str | None,
    rows: list[dict[str, Any]], regions: Mapping[str, Any],
) -> dict[str, Any]:  # fmt: skip
    return {
        "testset": testset,
        "id": image_id,
        "truth": list(truth) if truth is not None else None,
        "bucket": bucket,
        "image": image,
        "rows": rows,
        "regions": regions.get("regions", {}),
        "cal": regions.get("cal", {}),
    }


def build_explorer(
    results: str | Path,
    out: str | Path,
    sample: int = EXPLORER_SAMPLE,
    image_dirs: Mapping[str, str | Path] | None = None,
    seed: int = 0,
    curve_points: int = 200,
    title: str = "geoens explorer",
    calibration_subset: tuple[float, int] = (1.0, 0),
) -> dict[str, Any]:
    """Write the explorer of a finished run into ``out`` (replaced whole, atomically).

    Args:
        results: The run's results folder (``eval/``, ``labels/testsets/``, ``predictions/``, ``masks/``,
            ``atoms/``, optionally ``calibration/``).
        out: The explorer's folder (``index.html`` inside).
        sample: Photos per test set with per-photo detail (regions, thumbnail); all photos are points.
        image_dirs: Test set -> its photo folder (thumbnails); photos not found there get none.
        seed: Seed of the sample.
        curve_points: Points of each RvA curve.
        title: The page's title.
        calibration_subset: The run's ``(calibrate.fraction, seed)``: the val images its calibration used,
            which the regions weighted to a test set's estimated mix are calibrated on too.

    Returns:
        ``{"bytes", "photos", "detail"}``: size of the folder, photos and photos with detail.

    Raises:
        FileNotFoundError: Naming the missing file of the run.
        ValueError: If ``sample`` is negative.

    """
    if sample < 0:
        raise ValueError(f"sample must be >= 0 photos per test set, got {sample}")
    res = Path(results)
    tables = read_eval_tables(res)
    for need in ("masks/lc.tif", "masks/ls.tif", *(f"labels/testsets/{t}.parquet" for t in tables)):
        if not (res / need).exists():
            raise FileNotFoundError(
                f"{res / need} is missing: run the workflow first (snakemake ... results/{need})"
            )
    dirs = {k: Path(v) for k, v in (image_dirs or {}).items()}
    n_photos = n_detail = 0
    with atomic_path(out, is_dir=True) as tmp:
        data = tmp / "data"
        data.mkdir()
        run: dict[str, Any] = {"title": title, "buckets": list(LS_BUCKETS), "testsets": [], "curves": {}}
        run["basemap"] = write_basemap(res, data)
        scripts = ["data/run.js"]
        ctx: RegionContext | None = None
        for ts, per_image in tables.items():
            summ = summary_frame(per_image, read_label_points(res / "labels" / "testsets" / f"{ts}.parquet"))
            pairs = method_keys(per_image)
            keys = [f"{b}|{m}" for b, m in pairs]
            worst = np.nan_to_num(summ[keys].to_numpy(np.float64), nan=0.0).max(axis=1)
            detail = pick_sample(worst, sample, seed)
            write_photo_points(data, ts, summ, keys, detail)
            ids = summ["image_id"].iloc[detail].tolist()
            by_base: dict[str, list[str]] = {}
            for b, m in pairs:
                by_base.setdefault(b, []).append(m)
            regions, ctx = testset_regions(res, ts, ids, by_base, ctx, calibration_subset)
            rows = photo_rows(per_image, ids)
            for k, i in enumerate(ids):
                r = summ.iloc[int(detail[k])]
                src = dirs.get(ts, Path("/nonexistent")) / i
                image = (
                    f"images/{ts}/{k}.jpg"
                    if src.is_file() and thumbnail(src, tmp / "images" / ts / f"{k}.jpg")
                    else None
                )
                rec = _detail_record(
                    ts, i, (float(r["lat"]), float(r["lon"])), int(r["ls_bucket"]), image, rows[i], regions[i]
                )
                write_global(
                    data / "detail" / ts / f"{k}.js", f"GEOENS_DETAIL[{json.dumps(f'{ts}/{k}')}]", rec
                )
            run["testsets"].append(
                {"name": ts, "n": len(summ), "n_detail": int(detail.size), "methods": keys}
            )
            run["curves"][ts] = curves_entry(per_image, curve_points)
            scripts.append(f"data/summary_{ts}.js")
            n_photos += len(summ)
            n_detail += int(detail.size)
        run["scale"] = ctx.scale.to_json() if ctx is not None else None
        run["region_map"] = region_map_uri(ctx) if ctx is not None else None
        write_global(data / "run.js", "GEOENS_RUN", run)
        write_page(tmp, scripts, title)
    size = folder_bytes(out)
    log.info("explorer: %d photos (%d with detail), %.1f MB -> %s", n_photos, n_detail, size / 1e6, out)
    return {"bytes": size, "photos": n_photos, "detail": n_detail}


def build_search_viewer(
    results: str | Path,
    out: str | Path,
    photos: Sequence[tuple[Path, Mapping[str, npt.ArrayLike]]],
    base: str,
    families: Sequence[str],
    budget_km2: float | None = None,
) -> dict[str, Any]:
    """The explorer of ``geoens search``'s photos (no truth): each photo's ranked region, any budget.

    Args:
        results: The run's results folder (atoms, absorption, masks, calibration).
        out: The viewer's folder (``index.html`` inside), replaced whole.
        photos: ``(photo file, family -> probabilities)`` of each photo (``s2`` and the attributes).
        base: Base model key.
        families: Attribute families ensembled (``ls``, ``lc``).
        budget_km2: The search's budget, where the page's slider starts (default: the calibrated region
            at 90% when there is one, else 10^5 km^2).

    Raises:
        ValueError: If there is no photo or the method is not a ranked one.

    """
    if not photos:
        raise ValueError("no photo to show")
    res = Path(results)
    suffix = "".join(f"+{f.upper()}" for f in ("ls", "lc") if f in families)
    name = method_name(base, suffix)
    method = method_of(name, [base])
    if method is None:
        raise ValueError(f"{name!r} is not a ranked method")
    key = f"{base}|{name}"
    ctx = region_context(res, int(np.asarray(photos[0][1]["s2"]).size))
    with atomic_path(out, is_dir=True) as tmp:
        data = tmp / "data"
        data.mkdir()
        run: dict[str, Any] = {"title": "geoens search", "buckets": list(LS_BUCKETS), "curves": {}}
        run["basemap"] = write_basemap(res, data)
        run["scale"] = ctx.scale.to_json()
        run["region_map"] = region_map_uri(ctx)
        run["testsets"] = [{"name": "search", "n": len(photos), "n_detail": len(photos), "methods": [key]}]
        lat, lon = [], []
        for k, (path, probs) in enumerate(photos):
            sc = ctx.ev.scores({f: np.asarray(probs[f])[None, :] for f in method.families})
            uris, cal, first = region_images(ctx, method, sc)
            lat.append(round(first[0][0], 4))
            lon.append(round(first[0][1], 4))
            image = (
                f"images/search/{k}.jpg" if thumbnail(path, tmp / "images" / "search" / f"{k}.jpg") else None
            )
            row = {"base": base, "method": name, "area_km2": None, "zero_prob": False,
                   "top1": [lat[-1], lon[-1]], "gcd_km": None}  # fmt: skip
            regions = {
                "regions": {key: uris[0]},
                "cal": {key: {kd: {lv: _num(v[0]) for lv, v in by.items()} for kd, by in cal.items()}},
            }
            rec = _detail_record("search", path.name, None, -1, image, [row], regions)
            rec["budget_km2"] = budget_km2
            write_global(
                data / "detail" / "search" / f"{k}.js", f"GEOENS_DETAIL[{json.dumps(f'search/{k}')}]", rec
            )
        summary = {
            "ids": [p.name for p, _ in photos], "lat": lat, "lon": lon, "bucket": [-1] * len(photos),
            "detail": list(range(len(photos))), "log_area": {key: [None] * len(photos)},
        }  # fmt: skip
        write_global(data / "summary_search.js", 'GEOENS_SUMMARY["search"]', summary)
        write_global(data / "run.js", "GEOENS_RUN", run)
        write_page(tmp, ["data/run.js", "data/summary_search.js"], "geoens search")
    return {"bytes": folder_bytes(out), "photos": len(photos), "detail": len(photos)}
