"""Coverage under a shift of the population mix (DESIGN section 12): mix estimation, weighted conformal.

Seeded simulations: the weighted quantile against a brute-force enumeration, recovery of a known mix from
predictions with a known confusion, the coverage guarantee under a simulated label shift over many seeds,
clear errors for a zero-share bucket and a bucket absent from val, and the demo's mixed test sets.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geoens.core.config import ConfigError
from geoens.core.constants import LS_BUCKETS
from geoens.demo.generate import generate_mixed_testset
from geoens.demo.spec import output_paths, spec_from_config
from geoens.evaluation.conformal import conformal_quantile
from geoens.evaluation.shift import (
    bbse_mix,
    confusion,
    covariate_weights,
    em_mix,
    estimate_mix,
    label_weights,
    merge_absent,
    parse_mix,
    tuple_labels,
    weighted_quantile,
)
from geoens.evaluation.shiftcal import (
    ORACLE_MODE,
    SHIFT_MODES,
    mix_threshold,
    resolve_mix,
    shift_record,
    shift_thresholds,
)


# --------------------------------------------------------------------------------------------------
# Weighted quantile
# --------------------------------------------------------------------------------------------------
def _brute(s: np.ndarray, w: np.ndarray, wt: float, level: float) -> float:
    """The smallest candidate t whose weighted CDF (test weight at +inf) reaches the level."""
    total = w.sum() + wt
    for t in sorted(set(s.tolist())):
        if w[s <= t].sum() >= level * total * (1 - 1e-12):
            return float(t)
    return math.inf


@pytest.mark.parametrize("seed", range(40))
def test_weighted_quantile_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 25))
    s = rng.integers(0, 8, n).astype(float)  # ties on purpose
    w = rng.choice([0.0, 0.5, 1.0, 3.0], n)
    if w.sum() == 0:
        w[0] = 1.0
    wt = float(rng.choice([0.0, 1.0, 5.0]))
    for level in (0.1, 0.5, 0.8, 0.9, 0.95):
        assert weighted_quantile(s, w, wt, level)[0] == _brute(s, w, wt, level)


def test_weighted_quantile_with_equal_weights_is_split_conformal() -> None:
    rng = np.random.default_rng(1)
    for n in (1, 9, 10, 19, 100):
        s = rng.random(n)
        for level in (0.5, 0.9, 0.95):
            assert weighted_quantile(s, np.ones(n), 1.0, level)[0] == conformal_quantile(s, level)


def test_weighted_quantile_per_test_weight_is_monotone() -> None:
    s = np.arange(10.0)
    thr = weighted_quantile(s, np.ones(10), np.array([0.0, 1.0, 2.0, 50.0]), 0.8)
    assert list(thr) == [7.0, 8.0, 9.0, math.inf]  # 0.8 x (10 + w_test) photos needed


def test_weighted_quantile_errors() -> None:
    with pytest.raises(ValueError, match="every calibration weight is 0"):
        weighted_quantile([1.0, 2.0], [0.0, 0.0], 1.0, 0.9)
    with pytest.raises(ValueError, match="must be in"):
        weighted_quantile([1.0], [1.0], 1.0, 1.0)
    with pytest.raises(ValueError, match="finite and >= 0"):
        weighted_quantile([1.0], [-1.0], 1.0, 0.5)


# --------------------------------------------------------------------------------------------------
# Mix estimation
# --------------------------------------------------------------------------------------------------
CONF = np.array(  # P(predicted i | true j): columns sum to 1
    [[0.7, 0.2, 0.05, 0.0], [0.2, 0.6, 0.15, 0.05], [0.1, 0.15, 0.6, 0.25], [0.0, 0.05, 0.2, 0.7]]
)


def _simulate(n: int, shares: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.choice(4, size=n, p=shares)
    cum = np.cumsum(CONF[:, y].T, axis=1)
    pred = np.minimum((rng.random(n)[:, None] > cum).sum(axis=1), 3)
    return y, pred


def test_bbse_recovers_a_known_mix() -> None:
    rng = np.random.default_rng(0)
    p, q = np.array([0.15, 0.2, 0.35, 0.3]), np.array([0.5, 0.25, 0.15, 0.1])
    vy, vp = _simulate(200_000, p, rng)
    ty, tp = _simulate(200_000, q, rng)
    c = confusion(vp, vy, LS_BUCKETS)
    assert np.allclose(c, CONF, atol=0.01)
    est = bbse_mix(c, np.bincount(tp, minlength=4) / tp.size)
    assert np.allclose(est, q, atol=0.015)
    naive = np.bincount(tp, minlength=4) / tp.size  # the predicted shares are off by more
    assert np.max(np.abs(naive - q)) > 0.05
    assert abs(est.sum() - 1) < 1e-12


def test_em_recovers_a_known_mix_from_calibrated_probabilities() -> None:
    rng = np.random.default_rng(2)
    p, q = np.array([0.25, 0.25, 0.25, 0.25]), np.array([0.6, 0.2, 0.1, 0.1])
    centres = np.array([0.0, 1.5, 3.0, 4.5])
    y = rng.choice(4, 20000, p=q)
    x = rng.normal(centres[y], 1.0)
    lik = np.exp(-0.5 * (x[:, None] - centres[None, :]) ** 2)
    post = lik * p / (lik * p).sum(axis=1, keepdims=True)  # the posterior under val's mix p
    assert np.allclose(em_mix(post, p), q, atol=0.03)
    # the predicted shares alone are biased towards p: the EM step is what corrects them
    assert abs(post.mean(axis=0)[0] - q[0]) > 0.05


def test_estimate_mix_interval_covers_the_truth_and_is_seeded() -> None:
    rng = np.random.default_rng(3)
    p, q = np.array([0.15, 0.2, 0.35, 0.3]), np.array([0.5, 0.25, 0.15, 0.1])
    vy, vp = _simulate(3000, p, rng)
    ty, tp = _simulate(3000, q, rng)
    probs = np.eye(4)[tp]
    a = estimate_mix(vp, vy, probs, LS_BUCKETS, n_boot=100, seed=7)
    b = estimate_mix(vp, vy, probs, LS_BUCKETS, n_boot=100, seed=7)
    assert np.array_equal(a.lo["bbse"], b.lo["bbse"])
    assert np.all(a.lo["bbse"] <= q + 0.01) and np.all(q - 0.01 <= a.hi["bbse"])
    rec = a.record()
    assert set(rec) >= {"bbse", "em", "val", "predicted"} and rec["n_test"] == 3000


def test_bucket_absent_from_val_is_a_clear_error() -> None:
    vy = np.array([0, 1, 1, 3, 3])
    with pytest.raises(ValueError, match=r"\['medium'\] absent from val"):
        confusion(vy, vy, LS_BUCKETS)
    with pytest.raises(ValueError, match=r"\['medium'\] have a positive share but no val photo"):
        label_weights({"lowest": 0.25, "low": 0.25, "medium": 0.25, "high": 0.25}, vy, LS_BUCKETS)
    into, names, merged = merge_absent(vy, LS_BUCKETS)
    assert names == ("lowest", "low", "high") and merged == {"medium": "low"} and list(into) == [0, 1, 1, 2]


def test_zero_weight_bucket_gives_zero_weights_not_a_division() -> None:
    vy = np.array([0, 1, 2, 3, 3])
    w = label_weights({"lowest": 0.0, "low": 0.0, "medium": 0.5, "high": 0.5}, vy, LS_BUCKETS)
    assert list(w) == [0.0, 0.0, 2.5, 1.25]
    with pytest.raises(ValueError, match="every calibration weight is 0"):
        weighted_quantile(np.arange(2.0), w[vy[:2]], float(w.max()), 0.9)


def test_parse_mix_errors_name_the_problem() -> None:
    assert parse_mix("lowest=0.5, low=0.2,medium=0.2,high=0.1") == pytest.approx(
        {"lowest": 0.5, "low": 0.2, "medium": 0.2, "high": 0.1}
    )
    with pytest.raises(ValueError, match="unknown bucket 'rural'"):
        parse_mix("rural=1")
    with pytest.raises(ValueError, match="sum to 1, got 0.9"):
        parse_mix("lowest=0.5,low=0.2,medium=0.1,high=0.1")
    with pytest.raises(ValueError, match=r"bucket\(s\) \['low'\] have share 0"):
        parse_mix("lowest=0.5,low=0,medium=0.3,high=0.2")
    with pytest.raises(ValueError, match="is not bucket=share"):
        parse_mix("lowest")


# --------------------------------------------------------------------------------------------------
# The guarantee under a simulated label shift
# --------------------------------------------------------------------------------------------------
def test_weighted_conformal_covers_under_label_shift_over_many_seeds() -> None:
    """Scores depend on the label (rural photos are harder); the weights restore the nominal coverage."""
    p, q = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.6, 0.2, 0.1, 0.1])
    scale = np.array([4.0, 2.0, 1.0, 0.5])
    level, n_cal, n_test, seeds = 0.9, 400, 400, 300
    cov_w, cov_plain = [], []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        yc, yt = rng.choice(4, n_cal, p=p), rng.choice(4, n_test, p=q)
        sc, st = rng.exponential(scale[yc]), rng.exponential(scale[yt])
        w = label_weights(dict(zip(LS_BUCKETS, q, strict=True)), yc, LS_BUCKETS)
        thr = weighted_quantile(sc, w[yc], float(w.max()), level)[0]
        cov_w.append(np.mean(st <= thr))
        cov_plain.append(np.mean(st <= conformal_quantile(sc, level)))
    assert np.mean(cov_w) >= level - 0.005  # the guarantee, up to simulation error (sd ~0.001)
    assert np.mean(cov_w) <= level + 0.04  # and not by taking the whole sphere
    assert np.mean(cov_plain) < level - 0.05  # without the weights it fails


def test_covariate_weights_estimate_a_known_ratio() -> None:
    rng = np.random.default_rng(5)
    xv, xt = rng.normal(0, 1, (4000, 1)), rng.normal(1, 1, (3000, 1))
    wv, wt = covariate_weights(xv, xt)
    truth = np.exp(xv[:, 0] - 0.5)  # N(1, 1) / N(0, 1)
    assert np.corrcoef(np.log(wv), np.log(truth))[0, 1] > 0.99
    assert abs(np.mean(wv) - 1.0) < 0.1  # E_val[w] = 1
    assert wt.shape == (3000,)


def test_tuple_labels_pool_thin_tuples_and_say_so() -> None:
    ls = np.array([0] * 30 + [0] * 5 + [3] * 25)
    lc = np.array([1] * 30 + [2] * 5 + [5] * 25)
    t = tuple_labels(ls, lc, 20)
    assert t.names == ("lowest/broadleaf tree", "lowest/other", "high/urban")
    assert t.pooled == {"lowest/other tree": 5}
    assert list(t.label([0, 0, 3, 3], [1, 2, 5, 0])) == [0, 1, 2, 2]  # unseen high pair -> largest high tuple
    assert list(t.label([1, 2], [1, 5])) == [0, 2]  # LS buckets without val images: the nearest one's


def test_mix_threshold_for_an_explicit_mix() -> None:
    rows = []
    for i in range(40):
        b = i % 4
        rows.append({"image_id": f"v{i}", "base": "geoest", "method": "GeoEst.+LS+LC", "area_hit": 0.0,
                     "mass_hit": (b + 1) / 10 + i / 1000, "gcd_km": np.nan, "zero_prob": False,
                     "ls_pred": b, "ls_true": b})  # fmt: skip
    val = pd.DataFrame(rows)
    urban = mix_threshold(val, {"lowest": 0.01, "low": 0.01, "medium": 0.01, "high": 0.97}, "geoest_ls_lc",
                          "adaptive", 0.8)  # fmt: skip
    rural = mix_threshold(val, {"lowest": 0.97, "low": 0.01, "medium": 0.01, "high": 0.01}, "geoest_ls_lc",
                          "adaptive", 0.8)  # fmt: skip
    assert rural < urban  # rural val images score low masses here, so a rural mix needs less
    assert rural == pytest.approx(0.1 + 36 / 1000)
    with pytest.raises(ValueError, match="no method 'geoest_nothing'"):
        mix_threshold(val, {"high": 1.0}, "geoest_nothing", "adaptive", 0.8)


# --------------------------------------------------------------------------------------------------
# The demo's mixed test sets
# --------------------------------------------------------------------------------------------------
def _cfg(mix: dict[str, float]) -> dict:
    return {
        "seed": 0,
        "grid": {"height": 18, "width": 36},
        "demo": {"ls_factor": 2, "lc_factor": 4, "image_size": 16, "n_train": 300,
                 "testsets": {"plain": {"n": 5, "style": "flickr"},
                              "mixed": {"n": 40, "style": "flickr", "mix": mix}}},
        "inputs": {"landscan": "w/ls.tif", "landcover": "w/lc.nc",
                   "train": {"shards_dir": "w/shards", "metadata": "w/m.csv"},
                   "testsets": {"plain": {"images": "w/p/images", "metadata": "w/p/metadata.csv"},
                                "mixed": {"images": "w/x/images", "metadata": "w/x/metadata.csv"}}},
    }  # fmt: skip


def test_mixed_testset_spec_and_paths() -> None:
    cfg = _cfg({"lowest": 0.5, "high": 0.5})
    spec = spec_from_config(cfg)
    assert spec.mixes == {"mixed": {"lowest": 0.5, "low": 0.0, "medium": 0.0, "high": 0.5}}
    assert "mixed_images" not in output_paths(cfg) and "plain_images" in output_paths(cfg)
    assert set(output_paths(cfg, mixed=True)) == {"mixed_images", "mixed_metadata", "mixed_contact_sheet"}
    with pytest.raises(ConfigError, match=r"demo.testsets.mixed.mix'.*unknown bucket"):
        spec_from_config(_cfg({"rural": 1.0}))
    with pytest.raises(ConfigError, match="sum to 1"):
        spec_from_config(_cfg({"lowest": 0.5}))


def test_mixed_testset_is_drawn_in_the_asked_shares(tmp_path: Path) -> None:
    cfg = _cfg({"lowest": 0.25, "high": 0.75})
    out = {k: tmp_path / p.name if not k.endswith("_images") else tmp_path / "images"
           for k, p in output_paths(cfg, mixed=True).items()}  # fmt: skip
    summary = generate_mixed_testset(cfg, "mixed", out)
    assert summary["mixed_n_lowest"] == 10 and summary["mixed_n_high"] == 30
    meta = pd.read_csv(out["mixed_metadata"])
    assert len(meta) == 40 and len(list((tmp_path / "images").iterdir())) == 40
    again = tmp_path / "again"
    out2 = {k: again / Path(v).name for k, v in out.items()}
    generate_mixed_testset(cfg, "mixed", out2)
    assert (again / "metadata.csv").read_bytes() == Path(out["mixed_metadata"]).read_bytes()
    with pytest.raises(ConfigError, match="not a mixed test set"):
        generate_mixed_testset(cfg, "plain", out)


def test_resolve_mix_reads_a_testsets_estimate_or_says_what_is_missing(tmp_path: Path) -> None:
    shares, source = resolve_mix("lowest=0.4,low=0.3,medium=0.2,high=0.1", tmp_path)
    assert shares["lowest"] == pytest.approx(0.4) and source == "given"
    with pytest.raises(
        FileNotFoundError, match=r"--mix nowhere: .*calibration/nowhere/shift.json is missing"
    ):
        resolve_mix("nowhere", tmp_path)
    rec = {
        "estimator": "bbse",
        # "low" had no val photo: merged into "lowest", so it gets no share of its own
        "ls": {"names": ["lowest", "medium", "high"], "of_bucket": [0, 0, 1, 2],
               "bbse": {"share": {"lowest": 0.6, "medium": 0.3, "high": 0.1}}},
    }  # fmt: skip
    (tmp_path / "calibration" / "sv").mkdir(parents=True)
    (tmp_path / "calibration" / "sv" / "shift.json").write_text(json.dumps(rec))
    shares, source = resolve_mix("sv", tmp_path)
    assert shares == {"lowest": 0.6, "low": 0.0, "medium": 0.3, "high": 0.1} and "estimated for sv" in source


def test_bbse_without_a_non_negative_solution_falls_back_and_says_so() -> None:
    """The val predictor never predicts label 1 but every test photo gets it: no mix explains that."""
    names = ("a", "b")
    with pytest.raises(ValueError, match="every share is <= 0"):
        bbse_mix(confusion(np.zeros(4, int), np.array([0, 1, 0, 1]), names), np.array([0.0, 1.0]))
    est = estimate_mix(np.zeros(4, int), np.array([0, 1, 0, 1]), np.tile([0.2, 0.8], (6, 1)), names, 20, 0)
    assert list(est.estimates["bbse"]) == [0.0, 1.0]  # the predicted shares stand in
    assert "no non-negative solution" in est.record()["notes"][0]


def test_shift_record_and_thresholds_handle_unlabelled_and_absent_buckets() -> None:
    """A val split without "medium" photos and with truths of no LS label still gives every region mode."""
    rng = np.random.default_rng(11)
    n, ids = 80, [f"v{i}" for i in range(80)]
    ls_true = rng.choice([0, 1, 3, -1], n, p=[0.3, 0.3, 0.3, 0.1])
    val = pd.DataFrame(
        {
            "image_id": ids,
            "base": "geoest",
            "method": "GeoEst.+LS+LC",
            "area_hit": rng.random(n),
            "mass_hit": rng.random(n),
            "gcd_km": np.nan,
            "zero_prob": False,
            "ls_pred": rng.integers(0, 4, n),
            "ls_true": ls_true,
            "lc_pred": rng.integers(0, 7, n),
            "lc_true": np.where(ls_true < 0, -1, rng.integers(0, 3, n)),
        }
    )
    t_ids = [f"t{i}" for i in range(30)]
    probs = {f: (ids, rng.dirichlet(np.ones(k), n)) for f, k in (("ls", 4), ("lc", 7))}
    test = {f: (t_ids, rng.dirichlet(np.ones(k), 30)) for f, k in (("ls", 4), ("lc", 7))}
    rec = json.loads(json.dumps(shift_record(val, probs, test, min_tuple=8, n_boot=20, seed=0)))
    assert rec["ls"]["merged"] == {"medium": "low"} and rec["n_val_unlabelled"] == int((ls_true < 0).sum())
    oracle = {"lowest": 0.4, "low": 0.3, "medium": 0.1, "high": 0.2}
    extra = shift_thresholds(rec, val, [0.5, 0.9], oracle=oracle)
    out = extra("geoest_ls_lc", "adaptive", t_ids[:5])
    assert {m for m, _, _ in out} == {*SHIFT_MODES, ORACLE_MODE}
    for _, lv, thr in out:
        assert thr.shape == (5,) and np.all((thr >= 0) & (thr <= 1) | np.isinf(thr)), lv
