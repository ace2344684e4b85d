"""Coverage under a shift of the population mix: mix estimation and weighted split conformal (DESIGN 12).

* **Mix estimation** from a predictor's outputs on the unlabelled test photos and its confusion on ``val``:
  black-box shift estimation (:func:`bbse_mix`: ``q = C^-1 mu`` with ``C[i, j] = P_val(predicted i | true
  j)``, clipped at 0 and renormalised) and EM on the predicted probabilities (:func:`em_mix`, Saerens et al.
  2002), with a seeded bootstrap interval over test (and val) photos (:func:`estimate_mix`).
* **Weighted split conformal** (:func:`weighted_quantile`): calibration photo ``i`` weighs ``w_i``; the
  threshold of level ``1 - alpha`` is the smallest score ``s`` with ``sum_{s_i <= s} w_i >= (1 - alpha)
  (sum_i w_i + w_test)``, the test photo's own weight ``w_test`` sitting at ``+inf`` (infinite threshold
  when no score reaches it). Under a label shift ``w_i = q(b_i) / p(b_i)`` by the calibration photo's TRUE
  label (:func:`label_weights`), and ``w_test`` is the largest weight of any label (the test photo's label
  is unknown; a larger ``w_test`` only raises the threshold, so this is conservative). Under a covariate
  shift ``w`` is the likelihood ratio of a classifier telling ``val`` from test photos
  (:func:`covariate_weights`), and each test photo has its own ``w_test``.
* **Labels**: the LS bucket, or the ``(LS, LC)`` tuple where it has enough ``val`` photos
  (:func:`tuple_labels`; thinner tuples are pooled per LS bucket, and the pooling is reported).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from geoens.core.constants import LC_CLASSES, LS_BUCKETS
from geoens.core.types import FloatArray, IntArray

#: Iterations and tolerance of the EM mix estimate.
EM_MAX_ITER = 1000
EM_TOL = 1e-9
#: L2 penalty and Newton steps of the val-vs-test logistic regression.
LOGREG_L2 = 1.0
LOGREG_STEPS = 50
#: Probabilities are clipped to this before taking logs (classifier features).
PROB_FLOOR = 1e-6
#: Shares of an explicit mix must sum to 1 within this.
MIX_SUM_TOL = 1e-6


# --------------------------------------------------------------------------------------------------
# Mix estimation
# --------------------------------------------------------------------------------------------------
def confusion(pred: IntArray, true: IntArray, names: Sequence[str]) -> FloatArray:
    """``C[i, j] = P(predicted i | true j)`` on the calibration photos.

    Raises:
        ValueError: Naming the label if a label has no calibration photo (its column is undefined).

    """
    k = len(names)
    c = np.zeros((k, k))
    np.add.at(c, (np.asarray(pred, np.int64), np.asarray(true, np.int64)), 1.0)
    col = c.sum(axis=0)
    absent = [names[j] for j in range(k) if col[j] == 0]
    if absent:
        raise ValueError(f"label(s) {absent} absent from val: no calibration photo to estimate or weight it")
    return np.asarray(c / col[None, :])


def bbse_mix(c: FloatArray, mu: FloatArray) -> FloatArray:
    """Black-box shift estimate ``q = C^-1 mu`` (least squares), clipped at 0 and renormalised.

    Raises:
        ValueError: If every share clips to 0.

    """
    q = np.linalg.lstsq(c, np.asarray(mu, np.float64), rcond=None)[0]
    q = np.clip(q, 0.0, None)
    if q.sum() <= 0:
        raise ValueError("black-box shift estimate: every share is <= 0 (confusion matrix too noisy)")
    return np.asarray(q / q.sum())


def em_mix(probs: FloatArray, prior: FloatArray) -> FloatArray:
    """EM estimate of the test mix from predicted probabilities (Saerens et al. 2002).

    Args:
        probs: ``photos x labels`` predicted probabilities on the test photos.
        prior: The label shares the probabilities were produced under (val's).

    """
    p = np.asarray(probs, np.float64)
    prior = np.asarray(prior, np.float64)
    ratio = np.divide(1.0, prior, out=np.zeros_like(prior), where=prior > 0)
    q = prior.copy()
    for _ in range(EM_MAX_ITER):
        post = p * (q * ratio)[None, :]
        s = post.sum(axis=1, keepdims=True)
        post = np.divide(post, s, out=np.zeros_like(post), where=s > 0)
        new = post.mean(axis=0)
        new = new / new.sum() if new.sum() > 0 else prior
        if np.max(np.abs(new - q)) < EM_TOL:
            return np.asarray(new)
        q = new
    return np.asarray(q)


@dataclass(frozen=True)
class MixEstimate:
    """The estimated test mix and its bootstrap 95% interval, per method (``bbse``, ``em``).

    Attributes:
        names: Label names.
        val_shares: ``p``: the calibration photos' true label shares.
        pred_shares: ``mu``: the test photos' predicted label shares.
        estimates: Method -> estimated shares ``q``.
        lo: Method -> lower end of the interval per label.
        hi: Method -> upper end of the interval per label.
        n_val: Calibration photos.
        n_test: Test photos.
        notes: What stood in for an estimate that failed (said in the coverage table).

    """

    names: tuple[str, ...]
    val_shares: FloatArray
    pred_shares: FloatArray
    estimates: dict[str, FloatArray]
    lo: dict[str, FloatArray]
    hi: dict[str, FloatArray]
    n_val: int
    n_test: int
    notes: list[str]

    def record(self) -> dict[str, Any]:
        """JSON-ready ``{names, n_val, n_test, val, predicted, bbse: {share, lo, hi}, em: {...}}``."""
        out: dict[str, Any] = {
            "names": list(self.names),
            "n_val": self.n_val,
            "n_test": self.n_test,
            "val": _named(self.names, self.val_shares),
            "predicted": _named(self.names, self.pred_shares),
            "notes": list(self.notes),
        }
        for m, q in self.estimates.items():
            out[m] = {
                "share": _named(self.names, q),
                "lo": _named(self.names, self.lo[m]),
                "hi": _named(self.names, self.hi[m]),
            }
        return out


def _named(names: Sequence[str], v: FloatArray) -> dict[str, float]:
    return {n: float(x) for n, x in zip(names, v, strict=True)}


def _estimates(
    val_pred: IntArray, val_true: IntArray, test_pred: IntArray, test_probs: FloatArray, names: Sequence[str]
) -> dict[str, FloatArray] | None:
    """BBSE and EM estimates; ``None`` when BBSE has no non-negative solution (every share clips to 0)."""
    k = len(names)
    mu = np.bincount(test_pred, minlength=k) / max(test_pred.size, 1)
    prior = np.bincount(val_true, minlength=k) / max(val_true.size, 1)
    try:
        bbse = bbse_mix(confusion(val_pred, val_true, names), mu)
    except ValueError:
        return None
    return {"bbse": bbse, "em": em_mix(test_probs, prior)}


def estimate_mix(
    val_pred: npt.ArrayLike,
    val_true: npt.ArrayLike,
    test_probs: npt.ArrayLike,
    names: Sequence[str],
    n_boot: int = 200,
    seed: int = 0,
    test_pred: npt.ArrayLike | None = None,
) -> MixEstimate:
    """Estimate the test photos' label shares by BBSE and by EM, with a bootstrap 95% interval.

    Args:
        val_pred: Predicted label of each calibration photo.
        val_true: True label of each calibration photo.
        test_probs: ``photos x labels`` predicted probabilities of the unlabelled test photos.
        names: Label names.
        n_boot: Bootstrap resamples (val and test photos both resampled; a resample in which a label is
            absent from val is redrawn as it would divide by zero).
        seed: Seed of the resamples.
        test_pred: Predicted labels of the test photos (default: the argmax of ``test_probs``).

    Raises:
        ValueError: If a label is absent from val, or on mismatched shapes.

    """
    vp, vt = np.asarray(val_pred, np.int64), np.asarray(val_true, np.int64)
    tp = np.asarray(test_probs, np.float64)
    k = len(names)
    if tp.ndim != 2 or tp.shape[1] != k:
        raise ValueError(f"test probabilities: shape {tp.shape}, expected (photos, {k})")
    tpred = np.argmax(tp, axis=1) if test_pred is None else np.asarray(test_pred, np.int64)
    if vp.shape != vt.shape:
        raise ValueError(f"val predicted / true labels: {vp.size} != {vt.size}")
    confusion(vp, vt, names)  # a label absent from val is an error, not a fallback
    est = _estimates(vp, vt, tpred, tp, names)
    notes = []
    if est is None:
        prior = np.bincount(vt, minlength=k) / vt.size
        est = {"bbse": np.bincount(tpred, minlength=k) / max(tpred.size, 1), "em": em_mix(tp, prior)}
        notes.append(
            "BBSE had no non-negative solution (every share clipped to 0): the predicted shares stand in"
        )
    rng = np.random.default_rng(seed)
    draws: dict[str, list[FloatArray]] = {m: [] for m in est}
    tries = 0
    while len(draws["bbse"]) < n_boot and tries < 5 * n_boot:
        tries += 1
        iv = rng.integers(0, vp.size, vp.size)
        it = rng.integers(0, tpred.size, tpred.size)
        if np.bincount(vt[iv], minlength=k).min() == 0:
            continue
        boot = _estimates(vp[iv], vt[iv], tpred[it], tp[it], names)
        for m, q in (boot or {}).items():  # a degenerate resample is left out
            draws[m].append(q)
    lo = {m: np.quantile(np.array(d), 0.025, axis=0) if d else np.full(k, np.nan) for m, d in draws.items()}
    hi = {m: np.quantile(np.array(d), 0.975, axis=0) if d else np.full(k, np.nan) for m, d in draws.items()}
    return MixEstimate(
        tuple(names),
        np.bincount(vt, minlength=k) / vt.size,
        np.bincount(tpred, minlength=k) / max(tpred.size, 1),
        est,
        lo,
        hi,
        int(vp.size),
        int(tpred.size),
        notes,
    )


# --------------------------------------------------------------------------------------------------
# Weights and the weighted quantile
# --------------------------------------------------------------------------------------------------
def label_weights(mix: Mapping[str, float], val_true: npt.ArrayLike, names: Sequence[str]) -> FloatArray:
    """``q(b) / p(b)`` per label ``b`` (``p`` = the calibration photos' true shares).

    Raises:
        ValueError: On an unknown label in ``mix``, shares not summing to 1, or a label with a positive share
            that has no calibration photo.

    """
    unknown = sorted(set(mix) - set(names))
    if unknown:
        raise ValueError(f"mix: unknown label(s) {unknown}; labels are {list(names)}")
    q = np.array([float(mix.get(n, 0.0)) for n in names])
    if np.any(q < 0) or abs(q.sum() - 1.0) > MIX_SUM_TOL:
        shares = dict(zip(names, q.tolist(), strict=True))
        raise ValueError(f"mix: shares must be >= 0 and sum to 1, got {shares}")
    vt = np.asarray(val_true, np.int64)
    p = np.bincount(vt, minlength=len(names)) / max(vt.size, 1)
    absent = [names[j] for j in range(len(names)) if p[j] == 0 and q[j] > 0]
    if absent:
        raise ValueError(
            f"mix: label(s) {absent} have a positive share but no val photo: the correction cannot weight it"
        )
    return np.asarray(np.divide(q, p, out=np.zeros_like(q), where=p > 0))


def weighted_quantile(
    scores: npt.ArrayLike, weights: npt.ArrayLike, test_weight: npt.ArrayLike | float, level: float
) -> FloatArray:
    """Weighted split-conformal threshold(s): one per test weight (``inf`` where the level is not reached).

    The smallest calibration score ``s`` with ``sum_{s_i <= s} w_i >= level * (sum_i w_i + w_test)``; with
    equal weights this is :func:`geoens.evaluation.conformal.conformal_quantile`.

    Raises:
        ValueError: If ``level`` is not in ``(0, 1)``, a score is NaN, a weight is negative or not finite,
            or every calibration weight is 0 (no calibration photo counts).

    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"coverage level must be in (0, 1), got {level}")
    s = np.asarray(scores, np.float64)
    w = np.asarray(weights, np.float64)
    wt = np.atleast_1d(np.asarray(test_weight, np.float64))
    if s.shape != w.shape:
        raise ValueError(f"weighted quantile: {s.size} scores but {w.size} weights")
    if np.any(np.isnan(s)):
        raise ValueError("conformal scores must not be NaN")
    if np.any(~np.isfinite(w)) or np.any(w < 0) or np.any(~np.isfinite(wt)) or np.any(wt < 0):
        raise ValueError("weights must be finite and >= 0")
    if s.size == 0 or w.sum() <= 0:
        raise ValueError("weighted quantile: every calibration weight is 0 (no calibration photo counts)")
    o = np.argsort(s, kind="stable")
    ss, cw = s[o], np.cumsum(w[o])
    need = level * (cw[-1] + wt) * (1.0 - 1e-12)  # an ulp of slack, as conformal_quantile's
    idx = np.searchsorted(cw, need, side="left")
    out = np.where(idx < ss.size, ss[np.minimum(idx, ss.size - 1)], np.inf)
    return np.asarray(out)


# --------------------------------------------------------------------------------------------------
# Labels: LS bucket or (LS, LC) tuple
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TupleLabels:
    """The ``(LS, LC)`` label set: tuples with enough val photos, the rest pooled per LS bucket.

    Attributes:
        names: Label names (``"lowest/cropland"``, ``"lowest/other"``...).
        of_pair: ``LS x LC`` label index of every pair.
        pooled: Names of the pairs pooled for having fewer than ``min_count`` val photos (with counts).

    """

    names: tuple[str, ...]
    of_pair: IntArray
    pooled: dict[str, int]

    def label(self, ls: npt.ArrayLike, lc: npt.ArrayLike) -> IntArray:
        """Label of each ``(ls, lc)`` pair."""
        return np.asarray(self.of_pair[np.asarray(ls, np.int64), np.asarray(lc, np.int64)])


def tuple_labels(val_ls: npt.ArrayLike, val_lc: npt.ArrayLike, min_count: int) -> TupleLabels:
    """Tuples with ``>= min_count`` val photos are labels; the others are pooled into ``<LS>/other``.

    A pair that no val photo has, in an LS bucket with no pooled pair, maps to that bucket's largest tuple,
    and an LS bucket with no val photo at all to the nearest bucket's labels (a test photo may be predicted
    there).
    """
    n_ls, n_lc = len(LS_BUCKETS), len(LC_CLASSES)
    counts = np.zeros((n_ls, n_lc), np.int64)
    np.add.at(counts, (np.asarray(val_ls, np.int64), np.asarray(val_lc, np.int64)), 1)
    names: list[str] = []
    of_pair = np.full((n_ls, n_lc), -1, np.int64)
    pooled: dict[str, int] = {}
    for b in range(n_ls):
        big = [c for c in range(n_lc) if counts[b, c] >= min_count]
        for c in big:
            of_pair[b, c] = len(names)
            names.append(f"{LS_BUCKETS[b]}/{LC_CLASSES[c]}")
        small = [c for c in range(n_lc) if c not in big]
        if counts[b, small].sum() > 0:
            for c in small:
                if counts[b, c] > 0:
                    pooled[f"{LS_BUCKETS[b]}/{LC_CLASSES[c]}"] = int(counts[b, c])
            of_pair[b, small] = len(names)
            names.append(f"{LS_BUCKETS[b]}/other")
        elif big:
            of_pair[b, small] = of_pair[b, big[int(np.argmax(counts[b, big]))]]
    seen = np.flatnonzero(counts.sum(axis=1) > 0)
    for b in range(n_ls):  # an LS bucket with no val photo (a test photo may be predicted there)
        if seen.size and b not in seen:
            of_pair[b] = of_pair[seen[np.argmin(np.abs(seen - b))]]
    return TupleLabels(tuple(names), of_pair, pooled)


def merge_absent(
    val_true: npt.ArrayLike, names: Sequence[str]
) -> tuple[IntArray, tuple[str, ...], dict[str, str]]:
    """Merge each label absent from val into the nearest present one (by index), so the rest can be estimated.

    Returns:
        ``(new label of each original label, the present labels' names, {absent name: name merged into})``.

    Raises:
        ValueError: If no label is present.

    """
    counts = np.bincount(np.asarray(val_true, np.int64), minlength=len(names))
    present = np.flatnonzero(counts > 0)
    if present.size == 0:
        raise ValueError("no calibration photo: every label is absent from val")
    into = present[np.argmin(np.abs(np.arange(len(names))[:, None] - present[None, :]), axis=1)]
    merged = {names[j]: names[int(into[j])] for j in range(len(names)) if counts[j] == 0}
    return np.searchsorted(present, into).astype(np.int64), tuple(names[int(j)] for j in present), merged


def tuple_probs(ls_probs: FloatArray, lc_probs: FloatArray, labels: TupleLabels) -> FloatArray:
    """``photos x labels`` probabilities of the tuple labels (LS and LC predictors taken as independent)."""
    joint = np.asarray(ls_probs, np.float64)[:, :, None] * np.asarray(lc_probs, np.float64)[:, None, :]
    out = np.zeros((joint.shape[0], len(labels.names)))
    for b in range(joint.shape[1]):
        for c in range(joint.shape[2]):
            j = int(labels.of_pair[b, c])
            if j >= 0:
                out[:, j] += joint[:, b, c]
    return out


# --------------------------------------------------------------------------------------------------
# Covariate shift: val-vs-test classifier
# --------------------------------------------------------------------------------------------------
def prob_features(*probs: FloatArray) -> FloatArray:
    """Classifier features of each photo: the log of each predictor's probabilities, side by side."""
    logs = [np.log(np.clip(np.asarray(p, np.float64), PROB_FLOOR, 1.0)) for p in probs]
    return np.concatenate(logs, axis=1)


def covariate_weights(val_x: FloatArray, test_x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Likelihood-ratio weights ``dP_test / dP_val`` of val and test photos from a logistic regression.

    An L2-penalised logistic regression (Newton steps, standardised features, intercept) tells test (1)
    from val (0) photos; ``w(x) = odds(x) * n_val / n_test``.

    Returns:
        ``(weights of the val photos, weights of the test photos)``.

    """
    x = np.vstack([val_x, test_x]).astype(np.float64)
    y = np.r_[np.zeros(len(val_x)), np.ones(len(test_x))]
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    x = np.hstack([np.ones((x.shape[0], 1)), x])
    beta = np.zeros(x.shape[1])
    pen = np.full(x.shape[1], LOGREG_L2)
    pen[0] = 0.0
    for _ in range(LOGREG_STEPS):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        grad = x.T @ (p - y) + pen * beta
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(pen) + 1e-9 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    odds = np.exp(x @ beta) * (len(val_x) / max(len(test_x), 1))
    return odds[: len(val_x)], odds[len(val_x) :]


# --------------------------------------------------------------------------------------------------
# Explicit mixes (``geoens search --mix``)
# --------------------------------------------------------------------------------------------------
def parse_mix(text: str, names: Sequence[str] = LS_BUCKETS) -> dict[str, float]:
    """Parse ``lowest=0.5,low=0.2,...`` into shares (buckets left out get 0).

    Raises:
        ValueError: On a malformed item, an unknown bucket, a negative share, shares not summing to 1, or a
            zero-share bucket (its val photos would weigh 0 and photos of it would have no guarantee).

    """
    out: dict[str, float] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        key, sep, val = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--mix: {item!r} is not bucket=share")
        if key not in names:
            raise ValueError(f"--mix: unknown bucket {key!r}; buckets are {', '.join(names)}")
        try:
            out[key] = float(val)
        except ValueError:
            raise ValueError(f"--mix: share of {key!r} is not a number: {val!r}") from None
    total = sum(out.values())
    if any(v < 0 or not math.isfinite(v) for v in out.values()) or abs(total - 1.0) > 1e-3:
        raise ValueError(f"--mix: shares must be >= 0 and sum to 1, got {total:g} ({text})")
    zero = [n for n in names if out.get(n, 0.0) == 0.0]
    if zero:
        raise ValueError(
            f"--mix: bucket(s) {zero} have share 0: their val photos would weigh 0 and a photo from them "
            "would have no guarantee; give every bucket a positive share"
        )
    return {n: out[n] / total for n in names}
