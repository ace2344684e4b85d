"""Search regions with a coverage guarantee: split conformal calibration on the atoms (DESIGN section 9).

For one image and one method, ``P`` on the atom groups, ``A(x)`` the area of the upper set
``{y : P(y) >= P(x)}`` and ``M(x)`` its probability mass (``P`` normalised to mass 1 over the sphere).
Calibration scores on the ``val`` split are ``A(g)`` (fixed budget), ``M(g)`` (adaptive) and, for the cap
baseline, the great-circle distance from the base model's own top-1 to the truth. The threshold of a
nominal coverage ``1 - alpha`` is the ``ceil((n + 1)(1 - alpha))``-th smallest score (infinite -- the whole
sphere -- when that index exceeds ``n``); per bucket (Mondrian) the same within the images whose LS
predictor ranks that bucket first. A new image's region is ``{x : A(x) <= q}`` (or ``M(x) <= t``): whole
upper sets, ties included, so the truth is inside exactly when its own score is within the threshold.

Upper sets are computed once per image and method by sorting the groups by decreasing ``P`` and taking
cumulative area and mass; a tie run is always taken whole. The score of the truth and the size of any
region are read from these same sums (vectorised binary searches), so the coverage of a region and the
score it was calibrated with can never disagree by rounding. ``P(g) = 0`` gives the whole sphere and mass 1
(such images are counted, never dropped).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from geoens.core.constants import (
    BASE_MODELS,
    CAP_SUFFIX,
    EARTH_RADIUS_KM,
    FAMILIES,
    GCD_RADIUS_KM,
    LS_BUCKETS,
    N_CLASSES,
    TEMPERED_SUFFIX,
)
from geoens.core.grid import Grid, haversine_km
from geoens.core.types import BoolArray, FloatArray
from geoens.evaluation.conformal import (
    cap_region_km2,
    conformal_quantile,
    hit_scores,
    region_areas,
    upper_sets,
)
from geoens.evaluation.evaluator import Evaluator
from geoens.evaluation.methods import all_methods, method_name
from geoens.evaluation.rva import DEFAULT_CHUNK_ELEMENTS, Groups, group_scores_t
from geoens.evaluation.tempered import FitBatch, TemperedFit, fit_weights, tempered_log_density
from geoens.evaluation.testset import (
    AttributeProbs,
    ScoreBatch,
    iter_score_batches,
    prediction_bases,
    read_absorption,
    read_attribute_probs,
)
from geoens.geo.atoms import read_atom_index, read_atoms
from geoens.geo.lookup import PixelLookup
from geoens.geo.partitions import read_partition_csv

#: Columns of the per-image score table (``results/calibration/scores/<dataset>.parquet``).
SCORE_COLUMNS: tuple[str, ...] = (
    "image_id",
    "base",
    "method",
    "area_hit",
    "mass_hit",
    "gcd_km",
    "zero_prob",
    "ls_pred",
    "ls_true",
)
#: More columns of the score table, read by the shift correction (:mod:`geoens.evaluation.shiftcal`).
LC_SCORE_COLUMNS: tuple[str, ...] = ("lc_pred", "lc_true")
#: Columns of the per-image region table of a test set.
REGION_COLUMNS: tuple[str, ...] = (
    "image_id",
    "base",
    "method",
    "mode",
    "level",
    "threshold",
    "region_km2",
    "covered",
    "ls_pred",
    "ls_true",
)
#: Score column of each region kind.
SCORE_OF_KIND: dict[str, str] = {"fixed": "area_hit", "adaptive": "mass_hit", "cap": "gcd_km"}


# --------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CalMethod:
    """A method whose regions are calibrated.

    Attributes:
        base: Base model key.
        suffix: Variant suffix (``""``, ``"+LS"``, ..., :data:`TEMPERED_SUFFIX`, :data:`CAP_SUFFIX`).
        families: Families ensembled (the cap: ``("s2",)``, unused).
        urban_prior: LS is the constant urban prior.
        tempered: Log-linear pooling with fitted weights instead of the plain product.
        cap: The point-predictor baseline (a cap around the base model's own top-1).

    """

    base: str
    suffix: str
    families: tuple[str, ...]
    urban_prior: bool = False
    tempered: bool = False
    cap: bool = False

    @property
    def name(self) -> str:
        """Display name, e.g. ``GeoCLIP+LS+LC (tempered)``."""
        return method_name(self.base, self.suffix)

    @property
    def slug(self) -> str:
        """File name stem of the calibration artifact, e.g. ``geoclip_ls_lc_tempered``."""
        return method_slug(self.base, self.suffix)

    @property
    def kinds(self) -> tuple[str, ...]:
        """Region kinds of the method: ``("cap",)`` or ``("fixed", "adaptive")``."""
        return ("cap",) if self.cap else ("fixed", "adaptive")


def method_slug(base: str, suffix: str) -> str:
    """File stem of a method: the base, then the suffix's words in lower case, joined by ``_``."""
    words = suffix.replace("+", " ").replace("(", " ").replace(")", " ").lower().split()
    return "_".join([base, *words])


def calibration_methods(bases: Sequence[str] = BASE_MODELS) -> list[CalMethod]:
    """Every calibrated method per base: the paper's variants, the tempered ensemble, the cap baseline."""
    out = []
    for b in bases:
        out += [CalMethod(b, m.suffix, m.families, m.urban_prior) for m in all_methods([b])]
        out.append(CalMethod(b, TEMPERED_SUFFIX, FAMILIES, tempered=True))
        out.append(CalMethod(b, CAP_SUFFIX, ("s2",), cap=True))
    return out


def method_slugs(bases: Sequence[str] = BASE_MODELS) -> list[str]:
    """Slugs of :func:`calibration_methods` (the workflow's ``results/calibration/<slug>.json`` files)."""
    return [m.slug for m in calibration_methods(bases)]


def find_method(base: str, suffix: str) -> CalMethod:
    """The calibrated method of a base and variant suffix.

    Raises:
        ValueError: If there is none.

    """
    for m in calibration_methods([base]):
        if m.suffix == suffix:
            return m
    raise ValueError(f"no calibrated method {method_name(base, suffix)!r}")


# --------------------------------------------------------------------------------------------------
# Conformal thresholds
# --------------------------------------------------------------------------------------------------
def _bucket_name(k: int) -> str:
    return LS_BUCKETS[k]


def calibrate_scores(
    scores: pd.DataFrame, levels: Sequence[float], fraction: float = 1.0, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Thresholds of every method, kind and level, globally and per predicted LS bucket.

    Args:
        scores: The per-image score table of the calibration split (:data:`SCORE_COLUMNS`).
        levels: Nominal coverages ``1 - alpha``.
        fraction: Share of the calibration images used (a seeded subset, the same for every method).
        seed: Seed of the subset.

    Returns:
        Slug -> JSON-ready record: ``thresholds[kind][group][level]`` with ``group`` = ``all`` or a bucket
        name, ``None`` meaning infinite (the whole sphere).

    Raises:
        ValueError: On a missing column, a bad level or fraction, or an empty calibration set.

    """
    out: dict[str, dict[str, Any]] = {}
    for key, sub in calibration_subset(scores, fraction, seed).groupby(["base", "method"], sort=False):
        base, name = str(key[0]), str(key[1])
        m = next((c for c in calibration_methods([base]) if c.name == name), None)
        if m is None:
            continue
        preds = sub["ls_pred"].to_numpy(np.int64)
        rec: dict[str, Any] = {
            "base": base,
            "method": name,
            "slug": m.slug,
            "levels": [float(x) for x in levels],
            "n": len(sub),
            "n_zero_prob": int(sub["zero_prob"].sum()),
            "n_per_bucket": {_bucket_name(b): int((preds == b).sum()) for b in range(len(LS_BUCKETS))},
            "thresholds": {},
        }
        for kind in m.kinds:
            s = sub[SCORE_OF_KIND[kind]].to_numpy(np.float64)
            groups: dict[str, dict[str, float | None]] = {}
            for gname, mask in [("all", np.ones(len(s), bool))] + [
                (_bucket_name(b), preds == b) for b in range(len(LS_BUCKETS))
            ]:
                groups[gname] = {f"{lv:g}": _finite_or_none(conformal_quantile(s[mask], lv)) for lv in levels}
            rec["thresholds"][kind] = groups
        out[m.slug] = rec
    return out


def calibration_subset(scores: pd.DataFrame, fraction: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """The rows of the calibration images (all, or the seeded subset ``calibrate.fraction``).

    Raises:
        ValueError: On a missing column, a bad fraction, or no image.

    """
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise ValueError(f"calibration scores: missing column(s) {missing}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"calibrate.fraction must be in (0, 1], got {fraction}")
    ids = np.sort(scores["image_id"].astype(str).unique())
    if ids.size == 0:
        raise ValueError("calibration scores: no image")
    if fraction < 1.0:
        k = max(1, int(round(fraction * ids.size)))
        ids = np.sort(np.random.default_rng(seed).choice(ids, size=k, replace=False))
    return scores[scores["image_id"].astype(str).isin(set(ids.tolist()))]


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def threshold_of(calibration: Mapping[str, Any], kind: str, level: float, bucket: int | None = None) -> float:
    """Threshold of one kind and level from a calibration record (``inf`` for ``None``).

    Args:
        calibration: A record of :func:`calibrate_scores` (a ``results/calibration/<slug>.json``).
        kind: ``fixed``, ``adaptive`` or ``cap``.
        level: Nominal coverage; must be one of the calibrated levels.
        bucket: Predicted LS bucket for the per-bucket threshold, or ``None`` for the global one.

    Raises:
        ValueError: Naming the calibrated levels / kinds if ``level`` or ``kind`` was not calibrated.

    """
    th = calibration.get("thresholds", {})
    if kind not in th:
        raise ValueError(
            f"calibration of {calibration.get('method')!r} has no {kind!r} thresholds (has {sorted(th)})"
        )
    group = "all" if bucket is None else _bucket_name(int(bucket))
    key = f"{float(level):g}"
    if key not in th[kind][group]:
        raise ValueError(
            f"coverage {level:g} was not calibrated for {calibration.get('method')!r}; calibrated levels: "
            f"{', '.join(sorted(th[kind][group]))} (config calibrate.coverages)"
        )
    v = th[kind][group][key]
    return math.inf if v is None else float(v)


# --------------------------------------------------------------------------------------------------
# Scoring a dataset
# --------------------------------------------------------------------------------------------------
def method_scores(
    ev: Evaluator,
    m: CalMethod,
    scores: Mapping[str, FloatArray],
    weights: Sequence[float] | None = None,
) -> tuple[Groups, FloatArray]:
    """``groups x images`` scores ``P`` of a method from Alg. 1 class scores (:meth:`Evaluator.scores`).

    The plain methods are Alg. 2's product; the tempered one is ``exp`` of its log density.

    Raises:
        ValueError: For the tempered method without weights, or for the cap baseline.

    """
    if m.cap:
        raise ValueError("the cap baseline has no score on atoms")
    g = ev.groups(m.families)
    if m.tempered:
        if weights is None:
            raise ValueError(f"{m.name}: tempered weights are needed")
        logd = tempered_log_density(family_logs(g, scores), g.area, weights)
        # shifted by each image's maximum: ranks and masses are unchanged, and nothing within 700 nats of
        # the mode underflows to 0
        top = np.max(logd, axis=0)
        return g, np.exp(logd - np.where(np.isfinite(top), top, 0.0)[None, :])
    n = next(iter(scores.values())).shape[1]
    sc = {f: scores[f] for f in m.families if not (f == "ls" and m.urban_prior)}
    if m.urban_prior:
        sc["ls"] = ev.urban_scores(n)
    return g, group_scores_t(g, sc)


def family_logs(g: Groups, scores: Mapping[str, FloatArray]) -> FloatArray:
    """``families x groups x images`` ``log P_f`` of each group (``-inf`` where ``P_f = 0``)."""
    with np.errstate(divide="ignore"):
        return np.stack([np.log(np.take(scores[f], g.index[f], axis=0)) for f in g.families])


@dataclass
class Dataset:
    """A dataset's predictions and labels, ready to score in batches.

    Attributes:
        ev: The evaluator on the atoms.
        labels: ``image_id``-indexed ``lat, lon``.
        predictions: Model -> predictions Parquet.
        attr: Attribute family -> ``(row of each image id, probabilities)``.
        centres: ``(lat, lon)`` of each fine cell (the base models' own top-1).
        bases: Base models present.

    """

    ev: Evaluator
    labels: pd.DataFrame
    predictions: dict[str, Path]
    attr: AttributeProbs
    centres: tuple[FloatArray, FloatArray]
    bases: list[str]


def open_dataset(
    atoms_path: str | Path,
    atom_index_path: str | Path,
    absorption_path: str | Path,
    labels: pd.DataFrame,
    fine_csv_path: str | Path,
    predictions: Mapping[str, str | Path],
    earth_radius_km: float = EARTH_RADIUS_KM,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    bases: Sequence[str] | None = None,
) -> Dataset:
    """Read the atoms and the attribute predictions of one dataset.

    ``bases``: the base models to score, keys of ``predictions`` (default: the built-in ones present; an
    external model with cells over the fine partition is scored by its name).

    Raises:
        ValueError: Naming the file on inconsistent inputs.

    """
    atoms = read_atoms(atoms_path)
    atom_index = read_atom_index(atom_index_path, atoms.n)
    grid = Grid(atom_index.shape[0], atom_index.shape[1], earth_radius_km)
    fine = read_partition_csv(fine_csv_path)
    centres = (fine.lat_mean, fine.lon_mean)
    if bases is None:
        bases = prediction_bases(predictions, "calibration")
    attr = read_attribute_probs(predictions)
    ev = Evaluator(
        atoms,
        {"s2": centres[0].size, **N_CLASSES},
        PixelLookup(atom_index, grid),
        grid.total_area(),
        read_absorption(absorption_path),
        chunk_elements,
    )
    lab = labels.assign(image_id=labels["image_id"].astype(str)).drop_duplicates("image_id")
    paths = {k: Path(v) for k, v in predictions.items()}
    return Dataset(ev, lab.set_index("image_id"), paths, attr, centres, list(bases))


def iter_batches(ds: Dataset, base: str, batch_size: int) -> Iterator[ScoreBatch]:
    """Batches of the images with labels and all predictions (others are skipped with a warning)."""
    path = ds.predictions[base]
    return iter_score_batches(
        ds.ev, ds.labels, ds.attr, path, base, batch_size, f"the fine partition has {ds.centres[0].size}",
        f"labels of {path}",
    )  # fmt: skip


#: Extra region thresholds of a batch: ``(slug, kind, image ids) -> [(mode, level, thresholds)]`` (the
#: shift-corrected regions of :mod:`geoens.evaluation.shiftcal`).
ExtraThresholds = Callable[[str, str, Sequence[str]], list[tuple[str, float, FloatArray]]]


def score_batch(
    ds: Dataset,
    b: ScoreBatch,
    weights: Mapping[str, Sequence[float]] | None,
    calibration: Mapping[str, Mapping[str, Any]] | None,
    threads: int = 1,
    extra: ExtraThresholds | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Scores (and, with ``calibration``, the calibrated regions) of every method on one batch.

    Args:
        ds: The dataset.
        b: The batch.
        weights: Base -> tempered weights (``None``: the tempered method is skipped).
        calibration: Slug -> calibration record (``None``: no regions).
        threads: Threads of :func:`upper_sets`.
        extra: More region modes per method and kind (with ``calibration`` only).

    """
    ls_pred = np.argmax(b.ls_probs, axis=1).astype(np.int8)
    ls_true = ds.ev.atoms.labels["ls"][b.gt_atom].astype(np.int8)
    lc_rows, lc_probs = ds.attr["lc"]
    lc_pred = np.argmax(lc_probs[lc_rows.loc[b.ids].to_numpy()], axis=1).astype(np.int8)
    lc_true = ds.ev.atoms.labels["lc"][b.gt_atom].astype(np.int8)
    n = len(b.ids)
    score_frames, region_frames = [], []
    for m in calibration_methods([b.base]):
        if m.tempered and (weights is None or b.base not in weights):
            continue
        specs = [] if calibration is None else _region_specs(calibration[m.slug], m, ls_pred, b.ids, extra)
        sizes: dict[int, FloatArray] = {}
        if m.cap:
            arg = np.argmax(b.base_probs, axis=1)
            gcd = haversine_km(b.lat, b.lon, ds.centres[0][arg], ds.centres[1][arg], GCD_RADIUS_KM)
            area_hit = mass_hit = np.full(n, np.nan)
            zero = np.zeros(n, bool)
        else:
            g, P = method_scores(ds.ev, m, b.scores, weights.get(b.base) if weights else None)
            # bounded memory: the upper sets of at most chunk_elements entries at a time
            step = max(1, ds.ev.chunk_elements // max(g.n, 1))
            gt = g.of_atom[b.gt_atom]
            area_hit, mass_hit = np.empty(n), np.empty(n)
            zero = np.zeros(n, bool)
            gcd = np.full(n, np.nan)
            for s in range(0, n, step):
                cols = slice(s, min(n, s + step))
                us = upper_sets(P[:, cols], g.area, threads)
                area_hit[cols], mass_hit[cols], zero[cols] = hit_scores(us, P[:, cols], gt[cols])
                for i, (kind, _, _, thr) in enumerate(specs):
                    sizes.setdefault(i, np.empty(n))[cols] = region_areas(us, kind, thr[cols])
        score_frames.append(
            pd.DataFrame(
                {
                    "image_id": b.ids,
                    "base": b.base,
                    "method": m.name,
                    "area_hit": area_hit,
                    "mass_hit": mass_hit,
                    "gcd_km": gcd,
                    "zero_prob": zero,
                    "ls_pred": ls_pred,
                    "ls_true": ls_true,
                    "lc_pred": lc_pred,
                    "lc_true": lc_true,
                }
            )
        )
        score = {"fixed": area_hit, "adaptive": mass_hit, "cap": gcd}
        for i, (kind, mode, lv, thr) in enumerate(specs):
            region_frames.append(
                pd.DataFrame(
                    {
                        "image_id": b.ids,
                        "base": b.base,
                        "method": m.name,
                        "mode": mode,
                        "level": float(lv),
                        "threshold": thr,
                        "region_km2": cap_region_km2(thr) if kind == "cap" else sizes[i],
                        "covered": score[kind] <= thr,
                        "ls_pred": ls_pred,
                        "ls_true": ls_true,
                    }
                )
            )
    regions = pd.concat(region_frames, ignore_index=True) if region_frames else None
    return pd.concat(score_frames, ignore_index=True), regions


def _region_specs(
    rec: Mapping[str, Any],
    m: CalMethod,
    ls_pred: npt.NDArray[np.int8],
    ids: Sequence[str],
    extra: ExtraThresholds | None,
) -> list[tuple[str, str, float, FloatArray]]:
    """``(kind, mode, level, threshold per image)`` of every region of a method on a batch."""
    out = []
    for kind in m.kinds:
        for per_bucket in (False, True):
            for lv in rec["levels"]:
                mode = kind + (" per bucket" if per_bucket else "")
                out.append((kind, mode, float(lv), _thresholds(rec, kind, lv, ls_pred, per_bucket)))
        if extra is not None:
            out += [(kind, f"{kind} {mode}", lv, thr) for mode, lv, thr in extra(m.slug, kind, ids)]
    return out


def _thresholds(
    rec: Mapping[str, Any], kind: str, level: float, ls_pred: npt.NDArray[np.int8], per_bucket: bool
) -> FloatArray:
    if not per_bucket:
        return np.full(ls_pred.size, threshold_of(rec, kind, level))
    table = np.array([threshold_of(rec, kind, level, b) for b in range(len(LS_BUCKETS))])
    return table[ls_pred.astype(np.int64)]


def score_dataset(
    ds: Dataset,
    weights: Mapping[str, Sequence[float]] | None = None,
    calibration: Mapping[str, Mapping[str, Any]] | None = None,
    batch_size: int = 2048,
    progress: Callable[[int], None] | None = None,
    threads: int = 1,
    extra: ExtraThresholds | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Scores of every image and method (and the calibrated regions of every kind and level).

    Returns:
        ``(scores, regions)`` (:data:`SCORE_COLUMNS`, :data:`REGION_COLUMNS`; ``regions`` is ``None``
        without ``calibration``).

    Raises:
        ValueError: If no image has labels and all predictions.

    """
    scores, regions = [], []
    for base in ds.bases:
        for b in iter_batches(ds, base, batch_size):
            s, r = score_batch(ds, b, weights, calibration, threads, extra)
            scores.append(s)
            if r is not None:
                regions.append(r)
            if progress is not None:
                progress(len(b.ids))
    if not scores:
        raise ValueError("calibration: no image has labels and all predictions")
    return pd.concat(scores, ignore_index=True), (pd.concat(regions, ignore_index=True) if regions else None)


def fit_tempered(
    ds: Dataset, base: str, batch_size: int = 2048, max_images: int | None = None, seed: int = 0
) -> TemperedFit:
    """Fit the tempered weights of one base model on a dataset (the ``val`` split).

    Args:
        ds: The dataset.
        base: Base model.
        batch_size: Images per batch.
        max_images: Fit on at most this many images (a seeded subset), ``None``: all.
        seed: Seed of the subset.

    """
    fams = FAMILIES
    g = ds.ev.groups(fams)
    batches = list(iter_batches(ds, base, batch_size))
    if max_images is not None:
        n = sum(len(b.ids) for b in batches)
        if n > max_images:
            keep = np.zeros(n, bool)
            keep[np.random.default_rng(seed).choice(n, size=max_images, replace=False)] = True
            batches = _subset_batches(batches, keep)
    step = max(1, ds.ev.chunk_elements // max(g.n, 1))
    fit_batches = []
    for b in batches:
        for s in range(0, len(b.ids), step):
            cols = slice(s, min(len(b.ids), s + step))
            sc = {f: b.scores[f][:, cols] for f in fams}
            fit_batches.append(FitBatch(family_logs(g, sc), g.of_atom[b.gt_atom[cols]]))
    return fit_weights(lambda: fit_batches, g.area, fams)


def _subset_batches(batches: list[ScoreBatch], keep: BoolArray) -> list[ScoreBatch]:
    out, s = [], 0
    for b in batches:
        k = keep[s : s + len(b.ids)]
        s += len(b.ids)
        if k.any():
            out.append(
                ScoreBatch(
                    b.base,
                    [i for i, x in zip(b.ids, k, strict=True) if x],
                    {f: v[:, k] for f, v in b.scores.items()},
                    b.gt_atom[k],
                    b.lat[k],
                    b.lon[k],
                    b.base_probs[k],
                    b.ls_probs[k],
                )
            )
    return out
