"""Analysis: would covariate-shift weights do better if their classifier also saw the base model's confidence?

The workflow's ``weighted covariate`` region (DESIGN section 12) weighs each val photo by a logistic
regression telling val from test photos on the LS and LC predictors' log-probabilities. On the demo's
Street-View-like set, shot with another camera, that leaves GeoEst's ``+LS+LC`` adaptive region short of
its nominal coverage.
This script reads a finished run's score tables and asks, per test set and base model, what the same
weighted split-conformal threshold covers when the classifier also sees the base model's log top
probability and entropy (a camera the base model finds harder shows up there), and what it costs: the
effective number of calibration photos (``(sum w)^2 / sum w^2``) and the share of test photos whose
threshold is infinite (the whole sphere). Coverage of the ``+LS+LC`` adaptive region at ``--level``, with a
bootstrap 95% interval over the test photos; nothing is written.

Usage: python bench/shift_covariate_features.py [--results results] [--level 0.9]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from geoens.core.types import FloatArray
from geoens.evaluation.shift import covariate_weights, prob_features, weighted_quantile
from geoens.evaluation.testset import read_probs


def aligned_probs(results: Path, split: str, model: str, ids: list[str]) -> FloatArray:
    """``photos x classes`` probabilities of ``model`` on ``split``, rows in the order of ``ids``."""
    pid, p = read_probs(results / "predictions" / split / f"{model}.parquet")
    pos = pd.Series(np.arange(len(pid)), index=[str(i) for i in pid])
    return np.asarray(p, np.float64)[pos.loc[ids].to_numpy()]


def features(results: Path, split: str, ids: list[str], base: str | None) -> FloatArray:
    """LS and LC log-probabilities; with ``base`` also its log top probability and its entropy."""
    x = prob_features(aligned_probs(results, split, "ls", ids), aligned_probs(results, split, "lc", ids))
    if base is None:
        return x
    q = np.clip(aligned_probs(results, split, base, ids), 1e-12, 1.0)
    entropy = -(q * np.log(q)).sum(axis=1)
    return np.hstack([x, np.log(q.max(axis=1))[:, None], entropy[:, None]])


def scores(table: pd.DataFrame, base: str) -> tuple[list[str], FloatArray]:
    """Image ids and the adaptive score (mass to hit) of ``base``'s +LS+LC method; a miss scores inf."""
    rows = table[(table["base"] == base) & table["method"].str.endswith("+LS+LC")]
    rows = rows.drop_duplicates("image_id")
    s = rows["mass_hit"].to_numpy(np.float64).copy()
    s[rows["zero_prob"].to_numpy(bool) | np.isnan(s)] = np.inf
    return rows["image_id"].astype(str).tolist(), s


def coverage(test: FloatArray, thr: FloatArray, rng: np.random.Generator) -> str:
    """Coverage in % with a bootstrap 95% interval over the test photos (1,000 resamples)."""
    hit = (test <= thr).astype(np.float64)
    boot = [hit[rng.integers(0, hit.size, hit.size)].mean() for _ in range(1000)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return f"{100 * hit.mean():.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", help="a finished run's results folder")
    parser.add_argument("--level", type=float, default=0.9, help="nominal coverage")
    args = parser.parse_args()
    res = Path(args.results)
    val = pd.read_parquet(res / "calibration" / "scores" / "val.parquet")
    testsets = sorted(p.parent.name for p in (res / "calibration").glob("*/scores.parquet"))
    print(f"+LS+LC adaptive region at nominal {args.level:.0%}: coverage % [bootstrap 95%], effective val "
          "photos, share of test photos given the whole sphere")  # fmt: skip
    head = ["test set", "base", "unweighted", "covariate (LS, LC)", "ESS", "whole sphere",
            "covariate (LS, LC, base)", "ESS", "whole sphere"]  # fmt: skip
    print("| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|")
    for testset in testsets:
        test = pd.read_parquet(res / "calibration" / testset / "scores.parquet")
        for base in sorted(set(val["base"]) & set(test["base"])):
            vid, vs = scores(val, base)
            tid, ts = scores(test, base)
            rng = np.random.default_rng(0)
            thr0 = weighted_quantile(vs, np.ones_like(vs), 1.0, args.level)[0]
            cells = [coverage(ts, np.full(ts.size, thr0), rng)]
            for with_base in (None, base):
                wv, wt = covariate_weights(features(res, "val", vid, with_base),
                                           features(res, testset, tid, with_base))  # fmt: skip
                thr = weighted_quantile(vs, wv, wt, args.level)
                ess = wv.sum() ** 2 / (wv**2).sum()
                whole = f"{100 * np.mean(np.isinf(thr)):.1f}%"
                cells += [coverage(ts, thr, rng), f"{ess:.0f} of {vs.size}", whole]
            print(f"| {testset} | {base} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
