"""Shift-corrected calibrated regions of a test set (DESIGN section 12), wired to the calibration.

:func:`shift_record` estimates a test set's mix from the unlabelled test photos' predictions and the
calibration (``val``) photos' score table (``results/calibration/<testset>/shift.json``): the LS bucket
shares (BBSE and EM), the ``(LS, LC)`` tuple shares, the val-vs-test classifier's weights (covariate
shift) and a deliberately wrong mix (the LS estimate's shares in reverse bucket order, to show what a wrong
estimate costs). :func:`shift_thresholds` turns the record into the extra region modes of
:func:`geoens.evaluation.calibrate.score_dataset` (``<kind> weighted LS``, ``... weighted LS+LC``,
``... weighted covariate``, ``... weighted wrong mix``), and :func:`mix_threshold` gives one threshold
for an explicit mix (``geoens search --mix``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoens.core.constants import LS_BUCKETS
from geoens.core.io import read_json
from geoens.core.types import FloatArray, IntArray
from geoens.evaluation.calibrate import (
    LC_SCORE_COLUMNS,
    SCORE_OF_KIND,
    Dataset,
    ExtraThresholds,
    calibration_methods,
    calibration_subset,
)
from geoens.evaluation.shift import (
    TupleLabels,
    covariate_weights,
    estimate_mix,
    label_weights,
    merge_absent,
    parse_mix,
    prob_features,
    tuple_labels,
    tuple_probs,
    weighted_quantile,
)

#: Region modes added by the shift correction (the region table's ``mode`` is ``<kind> <mode>``).
SHIFT_MODES: tuple[str, ...] = ("weighted LS", "weighted LS+LC", "weighted covariate", "weighted wrong mix")
#: Mode weighted by the test set's TRUE LS shares (from its labels: a diagnosis for the report, never a
#: region a user gets).
ORACLE_MODE = "weighted true mix (oracle)"
#: Probabilities of one predictor: ``(image ids, photos x classes)``.
Probs = tuple[Sequence[str], FloatArray]


def _per_image(cal: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in LC_SCORE_COLUMNS if c not in cal.columns]
    if missing:
        raise ValueError(f"calibration scores: missing column(s) {missing} (rerun rule conformal_scores)")
    one = cal.drop_duplicates("image_id").assign(image_id=lambda d: d["image_id"].astype(str))
    return one.set_index("image_id").sort_index()


def _align(probs: Probs, ids: Sequence[str], what: str) -> FloatArray:
    pos = pd.Series(np.arange(len(probs[0])), index=pd.Index([str(i) for i in probs[0]]))
    missing = [i for i in ids if i not in pos.index]
    if missing:
        raise ValueError(f"{what}: no prediction for {len(missing)} image(s), e.g. {missing[:3]}")
    return np.asarray(np.asarray(probs[1], np.float64)[pos.loc[list(ids)].to_numpy()])


def shift_record(
    val_scores: pd.DataFrame,
    val_probs: Mapping[str, Probs],
    test_probs: Mapping[str, Probs],
    min_tuple: int,
    n_boot: int,
    seed: int,
    fraction: float = 1.0,
) -> dict[str, Any]:
    """Estimate a test set's mix (``shift.json``) from unlabelled test predictions and the val score table.

    Args:
        val_scores: The calibration split's score table (with :data:`LC_SCORE_COLUMNS`).
        val_probs: ``ls`` / ``lc`` -> the val photos' probabilities (covariate features).
        test_probs: ``ls`` / ``lc`` -> the test photos' probabilities.
        min_tuple: Val photos an ``(LS, LC)`` tuple needs to be its own label.
        n_boot: Bootstrap resamples of the mix intervals.
        seed: Seed of the resamples (and of ``calibrate.fraction``'s subset).
        fraction: ``calibrate.fraction``.

    Raises:
        ValueError: On a label absent from val, or missing predictions.

    """
    cal = _per_image(calibration_subset(val_scores, fraction, seed))
    ids = list(cal.index)
    test_ids = [str(i) for i in test_probs["ls"][0]]
    t_ls, t_lc = _align(test_probs["ls"], test_ids, "test LS"), _align(test_probs["lc"], test_ids, "test LC")
    # val photos whose truth has no LS or LC label (nodata) take no part in the estimate (weight 1 later)
    lab = cal[(cal["ls_true"] >= 0) & (cal["lc_true"] >= 0)]
    ls_true, ls_pred = lab["ls_true"].to_numpy(np.int64), lab["ls_pred"].to_numpy(np.int64)
    lc_true, lc_pred = lab["lc_true"].to_numpy(np.int64), lab["lc_pred"].to_numpy(np.int64)
    of_ls, ls_names, merged = merge_absent(ls_true, LS_BUCKETS)
    t_ls_m = np.zeros((len(t_ls), len(ls_names)))
    np.add.at(t_ls_m.T, of_ls, t_ls.T)
    ls = estimate_mix(of_ls[ls_pred], of_ls[ls_true], t_ls_m, ls_names, n_boot, seed)
    labels = tuple_labels(ls_true, lc_true, min_tuple)
    tup = estimate_mix(
        labels.label(ls_pred, lc_pred),
        labels.label(ls_true, lc_true),
        tuple_probs(t_ls, t_lc, labels),
        labels.names,
        n_boot,
        seed,
        test_pred=labels.label(np.argmax(t_ls, axis=1), np.argmax(t_lc, axis=1)),
    )
    v_x = prob_features(_align(val_probs["ls"], ids, "val LS"), _align(val_probs["lc"], ids, "val LC"))
    w_val, w_test = covariate_weights(v_x, prob_features(t_ls, t_lc))
    wrong = ls.estimates["bbse"][::-1]
    return {
        "estimator": "bbse",
        "n_val": len(ids),
        "n_val_unlabelled": len(ids) - len(lab),
        "n_test": len(test_ids),
        "ls": {**ls.record(), "of_bucket": of_ls.tolist(), "merged": merged},
        "ls_lc": {
            **tup.record(),
            "min_count": int(min_tuple),
            "pooled": labels.pooled,
            "of_pair": labels.of_pair.tolist(),
        },
        "covariate": {
            "val": dict(zip(ids, map(float, w_val), strict=True)),
            "test": dict(zip(test_ids, map(float, w_test), strict=True)),
        },
        "wrong_mix": {n: float(x) for n, x in zip(ls_names, wrong, strict=True)},
    }


def _mode_weights(
    record: Mapping[str, Any], cal: pd.DataFrame, oracle: Mapping[str, float] | None
) -> dict[str, tuple[FloatArray, Any]]:
    """Mode -> ``(weight of each calibration photo, test weight: a float or an image id -> weight map)``."""
    ls = record["ls"]
    of_bucket = np.asarray(ls["of_bucket"], np.int64)
    raw_ls, raw_lc = cal["ls_true"].to_numpy(np.int64), cal["lc_true"].to_numpy(np.int64)
    has = (raw_ls >= 0) & (raw_lc >= 0)
    ls_lab = np.where(has, of_bucket[np.maximum(raw_ls, 0)], -1)
    est = str(record.get("estimator", "bbse"))
    mixes = [("weighted LS", ls[est]["share"]), ("weighted wrong mix", record["wrong_mix"])]
    if oracle is not None:
        merged = dict.fromkeys(ls["names"], 0.0)
        for b, share in oracle.items():
            merged[ls["names"][of_bucket[LS_BUCKETS.index(b)]]] += float(share)
        mixes.append((ORACLE_MODE, merged))
    out = {mode: _photo_weights(mix, ls_lab, ls["names"]) for mode, mix in mixes}
    t = record["ls_lc"]
    labels = TupleLabels(tuple(t["names"]), np.asarray(t["of_pair"], np.int64), dict(t["pooled"]))
    tl = np.where(has, labels.label(np.maximum(raw_ls, 0), np.maximum(raw_lc, 0)), -1)
    out["weighted LS+LC"] = _photo_weights(t[est]["share"], tl, labels.names)
    cov = record["covariate"]
    missing = [i for i in cal.index if i not in cov["val"]]
    if missing:
        raise ValueError(f"shift record: no covariate weight for val image(s) {missing[:3]}")
    out["weighted covariate"] = (np.array([cov["val"][i] for i in cal.index]), cov["test"])
    return out


def _photo_weights(
    mix: Mapping[str, float], label: IntArray, names: Sequence[str]
) -> tuple[FloatArray, float]:
    """Each val photo's ``q / p`` by its label (1 for a photo without one) and the test photo's weight."""
    has = label >= 0
    w = label_weights(mix, label[has], names)
    test = max(float(w.max()), 1.0 if not has.all() else 0.0)
    return np.where(has, w[np.maximum(label, 0)], 1.0), test


def shift_thresholds(
    record: Mapping[str, Any],
    val_scores: pd.DataFrame,
    levels: Sequence[float],
    fraction: float = 1.0,
    seed: int = 0,
    oracle: Mapping[str, float] | None = None,
) -> ExtraThresholds:
    """The shift-corrected region modes (:data:`SHIFT_MODES`) of a test set, for ``score_dataset(extra=)``.

    With ``oracle`` (the test set's true LS shares) also :data:`ORACLE_MODE`.

    Raises:
        ValueError: On a malformed record or a mix the val split cannot weight.

    """
    cal_all = calibration_subset(val_scores, fraction, seed)
    per = _per_image(cal_all)
    modes = _mode_weights(record, per, oracle)
    pos = pd.Series(np.arange(len(per)), index=per.index)
    by_slug = {
        m.slug: sub
        for m in calibration_methods(sorted(set(cal_all["base"].astype(str))))
        for sub in [cal_all[(cal_all["base"] == m.base) & (cal_all["method"] == m.name)]]
        if len(sub)
    }
    cache: dict[tuple[str, str, str, float], FloatArray] = {}

    def extra(slug: str, kind: str, ids: Sequence[str]) -> list[tuple[str, float, FloatArray]]:
        if slug not in by_slug:
            raise ValueError(f"calibration scores: no row of method {slug!r}")
        sub = by_slug[slug]
        s = sub[SCORE_OF_KIND[kind]].to_numpy(np.float64)
        rows = pos.loc[sub["image_id"].astype(str)].to_numpy()
        out = []
        for mode, (w_cal, w_test) in modes.items():
            for lv in levels:
                if isinstance(w_test, float):
                    key = (slug, kind, mode, float(lv))
                    if key not in cache:
                        cache[key] = weighted_quantile(s, w_cal[rows], w_test, float(lv))
                    thr = np.full(len(ids), float(cache[key][0]))
                else:
                    missing = [i for i in ids if str(i) not in w_test]
                    if missing:
                        raise ValueError(f"shift record: no covariate weight for test image(s) {missing[:3]}")
                    wt = np.array([w_test[str(i)] for i in ids], np.float64)
                    thr = weighted_quantile(s, w_cal[rows], wt, float(lv))
                out.append((mode, float(lv), thr))
        return out

    return extra


def mix_threshold(
    val_scores: pd.DataFrame,
    mix: Mapping[str, float],
    slug: str,
    kind: str,
    level: float,
    fraction: float = 1.0,
    seed: int = 0,
) -> float:
    """Threshold of one method, kind and level, weighted to an LS bucket mix (``geoens search --mix``).

    Raises:
        ValueError: On an unknown method, a bad mix, or a bucket the val split cannot weight.

    """
    cal = calibration_subset(val_scores, fraction, seed)
    m = next((c for c in calibration_methods(sorted(set(cal["base"].astype(str)))) if c.slug == slug), None)
    if m is None:
        raise ValueError(f"calibration scores: no method {slug!r}")
    sub = cal[(cal["base"] == m.base) & (cal["method"] == m.name)]
    ls_true = sub["ls_true"].to_numpy(np.int64)
    w = label_weights(mix, ls_true, LS_BUCKETS)
    s = sub[SCORE_OF_KIND[kind]].to_numpy(np.float64)
    return float(weighted_quantile(s, w[ls_true], float(w.max()), level)[0])


def true_ls_shares(ds: Dataset) -> dict[str, float]:
    """A labelled dataset's true LS bucket shares (the oracle mix of the report), from its truth atoms."""
    gt = ds.ev.lookup.atom_at(ds.labels["lat"].to_numpy(np.float64), ds.labels["lon"].to_numpy(np.float64))
    b = np.asarray(ds.ev.atoms.labels["ls"][gt], np.int64)
    counts = np.bincount(b[b >= 0], minlength=len(LS_BUCKETS))[: len(LS_BUCKETS)]
    return {n: float(c / max(counts.sum(), 1)) for n, c in zip(LS_BUCKETS, counts, strict=True)}


def read_val_scores(results: str | Path) -> pd.DataFrame:
    """The workflow's val score table (``<results>/calibration/scores/val.parquet``).

    Raises:
        FileNotFoundError: If the calibration has not run.

    """
    path = Path(results) / "calibration" / "scores" / "val.parquet"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: run the workflow's calibration first (snakemake ... {path})"
        )
    return pd.read_parquet(path)


def resolve_mix(text: str, results: str | Path) -> tuple[dict[str, float], str]:
    """The LS bucket shares ``--mix`` asks for: explicit ``lowest=0.5,...`` or a test set's estimate.

    A test set's name reads its ``calibration/<name>/shift.json`` (the black-box shift estimate, DESIGN 12).

    Returns:
        ``(bucket -> share, where the mix came from)``.

    Raises:
        ValueError: On a bad explicit mix (:func:`geoens.evaluation.shift.parse_mix`).
        FileNotFoundError: If the test set has no shift estimate.

    """
    if "=" in text:
        return parse_mix(text), "given"
    path = Path(results) / "calibration" / text / "shift.json"
    if not path.exists():
        raise FileNotFoundError(
            f"--mix {text}: {path} is missing: give shares (lowest=0.5,low=0.2,...) or a test set "
            f"the workflow estimated (snakemake ... {path})"
        )
    rec = read_json(path)
    ls = rec["ls"]
    est = str(rec.get("estimator", "bbse"))
    into = [ls["names"][j] for j in ls["of_bucket"]]
    shares = {b: 0.0 for b in LS_BUCKETS}
    for b, name in zip(LS_BUCKETS, into, strict=True):
        if b == name:
            shares[b] = float(ls[est]["share"][name])
    return shares, f"estimated for {text} ({est}, {path})"
