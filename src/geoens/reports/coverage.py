"""Tables and the figure of the calibrated regions and of the tempered ensemble (DESIGN section 9).

* Coverage table of a test set: per base, method, region kind and nominal level, the empirical coverage
  with a bootstrap 95% interval, the mean and median region area, and the coverage per true LS bucket.
* Tempered table: recall at the five cap areas of the plain product ``+LS+LC`` and of the tempered
  ensemble, and their paired difference with a bootstrap interval (the same resamples for both).
* Figure: coverage against mean region area, one curve per method (points: the nominal levels), the
  nominal levels marked, one panel per test set and base.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from geoens.core.constants import (  # noqa: E402
    CAP_AREAS_KM2,
    CAP_SUFFIX,
    DISPLAY_NAMES,
    GCD_THRESHOLDS_KM,
    LS_BUCKETS,
    TEMPERED_SUFFIX,
)
from geoens.core.io import atomic_path  # noqa: E402
from geoens.evaluation.calibrate import REGION_COLUMNS, SCORE_COLUMNS  # noqa: E402
from geoens.evaluation.methods import method_name  # noqa: E402
from geoens.evaluation.metrics import bootstrap_ci, bootstrap_weights  # noqa: E402

#: Curves of the figure: (variant suffix, region kind).
FIGURE_CURVES: tuple[tuple[str, str], ...] = (
    ("", "adaptive"),
    ("+LS+LC", "fixed"),
    ("+LS+LC", "adaptive"),
    ("+LS+LC", "adaptive per bucket"),
    ("+LS+LC", "adaptive weighted LS+LC"),
    ("+LS+LC", "adaptive weighted covariate"),
    (TEMPERED_SUFFIX, "adaptive"),
    (CAP_SUFFIX, "cap"),
)


def _check(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}")


def coverage_table(regions: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Coverage, its bootstrap interval, region areas and per-bucket coverage per method, kind and level.

    The bootstrap resamples images (seeded; the same resamples for every row, so rows are paired).
    """
    _check(regions, REGION_COLUMNS, "region table")
    ids = np.sort(regions["image_id"].astype(str).unique())
    pos = pd.Series(np.arange(ids.size), index=ids)
    w = bootstrap_weights(ids.size, n_boot, seed)
    rows = []
    for key, sub in regions.groupby(["base", "method", "mode", "level"], sort=False):
        sub = sub.iloc[np.argsort(pos[sub["image_id"].astype(str)].to_numpy())]
        if len(sub) != ids.size:
            raise ValueError(f"region table: {key} has {len(sub)} of {ids.size} images")
        cov = sub["covered"].to_numpy(bool)
        lo, hi = bootstrap_ci(cov[:, None], w)
        area = sub["region_km2"].to_numpy(np.float64)
        row: dict[str, object] = {
            "base": key[0],
            "method": key[1],
            "mode": key[2],
            "level": float(str(key[3])),
            "n": len(sub),
            "coverage": float(cov.mean()),
            "coverage_lo": float(lo[0]),
            "coverage_hi": float(hi[0]),
            "mean_km2": float(area.mean()),
            "median_km2": float(np.median(area)),
            "whole_sphere": float((sub["threshold"] == np.inf).mean()),
        }
        for b, name in enumerate(LS_BUCKETS):
            true_b = sub["ls_true"].to_numpy() == b
            pred_b = sub["ls_pred"].to_numpy() == b
            row[f"cov_true_{name}"] = float(cov[true_b].mean()) if true_b.any() else math.nan
            row[f"n_true_{name}"] = int(true_b.sum())
            row[f"cov_pred_{name}"] = float(cov[pred_b].mean()) if pred_b.any() else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def coverage_markdown(table: pd.DataFrame, testset: str, n_boot: int, demo: bool) -> str:
    """Markdown of the coverage table (all rows), areas in km^2, coverage in percent."""
    buckets = (
        " | ".join(f"{b} (n={int(table[f'n_true_{b}'].iloc[0])})" for b in LS_BUCKETS) if len(table) else ""
    )
    lines = [
        f"## Calibrated regions on {testset}" + (" (synthetic demo world)" if demo else ""),
        "",
        f"Coverage in % with bootstrap 95% intervals ({n_boot} resamples); regions calibrated on the val "
        "split; per-bucket columns: coverage by the truth's LS bucket.",
        "",
        f"| method | region | nominal | coverage | mean km^2 | median km^2 | {buckets} |",
        "|---|---|---|---|---|---|" + "---|" * len(LS_BUCKETS),
    ]
    for r in table.to_dict("records"):
        per = " | ".join(_pct(r[f"cov_true_{b}"]) for b in LS_BUCKETS)
        lines.append(
            f"| {r['method']} | {r['mode']} | {r['level']:.0%} | {_pct(r['coverage'])} "
            f"[{_pct(r['coverage_lo'])}, {_pct(r['coverage_hi'])}] | {r['mean_km2']:.3g} | "
            f"{r['median_km2']:.3g} | {per} |"
        )
    return "\n".join(lines) + "\n"


def _pct(x: object) -> str:
    v = float(x)  # type: ignore[arg-type]
    return "–" if math.isnan(v) else f"{100 * v:.1f}"


def mix_markdown(record: Mapping[str, Any], scores: pd.DataFrame, testset: str) -> str:
    """Markdown of a test set's estimated mix (``shift.json``) against its true shares (from the labels).

    One table for the LS buckets, one for the ``(LS, LC)`` labels (with the tuples pooled for having too
    few val images); shares in %, BBSE and EM with their bootstrap 95% intervals.
    """
    one = scores.drop_duplicates("image_id")
    ls = one["ls_true"].to_numpy(np.int64)
    lines = [f"## Estimated vs true mix of {testset}", ""]
    t = record["ls_lc"]
    of_pair = np.asarray(t["of_pair"], np.int64)
    labels = {
        "LS bucket": (record["ls"], np.asarray(record["ls"]["of_bucket"], np.int64)[ls]),
        "(LS, LC)": (t, of_pair[ls, one["lc_true"].to_numpy(np.int64)] if "lc_true" in one else None),
    }
    for title, (rec, true) in labels.items():
        lines += [
            f"{title} shares in % ({rec['n_val']} val images, {rec['n_test']} test images; the true shares "
            "come from the test labels and are used for this table only).",
            "",
            "| label | val | predicted | BBSE | EM | true |",
            "|---|---|---|---|---|---|",
        ]
        for j, name in enumerate(rec["names"]):
            est = " | ".join(
                f"{_pct(rec[m]['share'][name])} [{_pct(rec[m]['lo'][name])}, {_pct(rec[m]['hi'][name])}]"
                for m in ("bbse", "em")
            )
            tr = _pct(float(np.mean(true == j))) if true is not None and true.size else "–"
            lines.append(
                f"| {name} | {_pct(rec['val'][name])} | {_pct(rec['predicted'][name])} | {est} | {tr} |"
            )
        lines.append("")
    for title, (rec, _) in labels.items():
        lines += [f"{title}: {note}." for note in rec.get("notes", [])]
    if record["ls"].get("merged"):
        lines.append(f"LS buckets absent from val, merged into a neighbour: {record['ls']['merged']}.")
    pooled = ", ".join(f"{k} ({v})" for k, v in t["pooled"].items()) or "none"
    lines.append(
        f"(LS, LC) tuples with fewer than {t['min_count']} val images, pooled per LS bucket: {pooled}."
    )
    lines.append(f"Deliberately wrong mix (the `weighted wrong mix` rows): {record['wrong_mix']}.")
    return "\n".join(lines) + "\n"


def tempered_table(scores: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Recall at each cap area of ``+LS+LC`` and ``+LS+LC (tempered)``, with paired bootstrap intervals.

    Raises:
        ValueError: On missing columns.

    """
    _check(scores, SCORE_COLUMNS, "score table")
    rows = []
    for base in list(dict.fromkeys(scores["base"])):
        plain = scores[scores["method"] == method_name(base, "+LS+LC")].set_index("image_id")
        temp = scores[scores["method"] == method_name(base, TEMPERED_SUFFIX)].set_index("image_id")
        if plain.empty or temp.empty:
            continue
        ids = np.sort(plain.index.intersection(temp.index).astype(str))
        w = bootstrap_weights(ids.size, n_boot, seed)
        a_p = plain.loc[ids, "area_hit"].to_numpy(np.float64)
        a_t = temp.loc[ids, "area_hit"].to_numpy(np.float64)
        caps = np.asarray(CAP_AREAS_KM2)
        hp = a_p[:, None] <= caps[None, :]
        ht = a_t[:, None] <= caps[None, :]
        diff = ht.astype(np.int8) - hp.astype(np.int8)
        lo_p, hi_p = bootstrap_ci(hp, w)
        lo_t, hi_t = bootstrap_ci(ht, w)
        lo_d, hi_d = bootstrap_ci(diff, w)
        for k, (r, c) in enumerate(zip(GCD_THRESHOLDS_KM, caps, strict=True)):
            rows.append(
                {
                    "base": base,
                    "radius_km": r,
                    "cap_km2": float(c),
                    "n": int(ids.size),
                    "product": float(hp[:, k].mean()),
                    "product_lo": float(lo_p[k]),
                    "product_hi": float(hi_p[k]),
                    "tempered": float(ht[:, k].mean()),
                    "tempered_lo": float(lo_t[k]),
                    "tempered_hi": float(hi_t[k]),
                    "diff": float(diff[:, k].mean()),
                    "diff_lo": float(lo_d[k]),
                    "diff_hi": float(hi_d[k]),
                }
            )
    return pd.DataFrame(rows)


def tempered_markdown(
    table: pd.DataFrame, testset: str, weights: Mapping[str, Mapping[str, float]], n_boot: int, demo: bool
) -> str:
    """Markdown of the tempered table: recall in %, the difference in points with its interval, a verdict."""
    lines = [
        f"## Tempered vs plain product on {testset}" + (" (synthetic demo world)" if demo else ""),
        "",
        f"RvA recall in % at the cap areas; paired bootstrap 95% intervals ({n_boot} resamples). "
        "`better`/`worse`: the interval of the difference excludes 0.",
        "",
        "| base | weights (s2, ls, lc) | cap (r km) | +LS+LC | tempered | difference | |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table.to_dict("records"):
        wb = weights.get(str(r["base"]), {})
        wtxt = ", ".join(f"{wb[f]:.2f}" for f in ("s2", "ls", "lc") if f in wb)
        verdict = "better" if r["diff_lo"] > 0 else ("worse" if r["diff_hi"] < 0 else "n.s.")
        lines.append(
            f"| {DISPLAY_NAMES.get(str(r['base']), r['base'])} | {wtxt} | {r['radius_km']:g} | "
            f"{_pct(r['product'])} | {_pct(r['tempered'])} | {100 * r['diff']:+.1f} "
            f"[{100 * r['diff_lo']:+.1f}, {100 * r['diff_hi']:+.1f}] | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, md: str, csv_path: str | Path, md_path: str | Path) -> None:
    """Write a table as CSV and its Markdown, atomically."""
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(md_path) as tmp:
        tmp.write_text(md, encoding="utf-8")


def coverage_figure(
    tables: Mapping[str, pd.DataFrame], out_pdf: str | Path, out_png: str | Path, demo: bool = False
) -> None:
    """Coverage vs mean region area: rows = base models, columns = test sets, curves = methods.

    Points are the nominal levels, vertical bars the bootstrap intervals, dotted lines the nominal levels.
    """
    testsets = list(tables)
    bases = list(dict.fromkeys(b for t in tables.values() for b in t["base"]))
    nr, nc = max(1, len(bases)), max(1, len(testsets))
    fig, axes = plt.subplots(nr, nc, figsize=(5.2 * nc + 2.6, 4.0 * nr), squeeze=False)
    colours = plt.get_cmap("tab10")
    for c, ts in enumerate(testsets):
        t = tables[ts]
        for r, base in enumerate(bases):
            ax = axes[r, c]
            levels = sorted(set(t["level"]))
            for lv in levels:
                ax.axhline(lv, color="0.6", linestyle=":", linewidth=0.8)
            for k, (suffix, mode) in enumerate(FIGURE_CURVES):
                name = method_name(base, suffix)
                sub = t[(t["base"] == base) & (t["method"] == name) & (t["mode"] == mode)].sort_values(
                    "level"
                )
                if sub.empty:
                    continue
                x = sub["mean_km2"].to_numpy()
                y = sub["coverage"].to_numpy()
                err = np.vstack([y - sub["coverage_lo"].to_numpy(), sub["coverage_hi"].to_numpy() - y])
                ax.errorbar(
                    x, y, yerr=err, marker="o", markersize=3.5, linewidth=1.2, capsize=2,
                    color=colours(k), label=name if mode == "cap" else f"{name} ({mode})",
                )  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlabel("mean region area (km$^2$)")
            ax.set_ylabel("empirical coverage")
            ax.set_title(f"{ts}: {DISPLAY_NAMES.get(base, base)}", fontsize=9)
            shown = t[t["base"] == base]["coverage_lo"]
            ax.set_ylim(max(0.0, min([min(levels) - 0.1, *shown.dropna().tolist()]) - 0.05), 1.01)
            if c == len(testsets) - 1:  # one legend per row, outside the last panel
                ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.suptitle(
        "Calibrated search regions: coverage vs mean area (dotted: nominal levels)"
        + (" — synthetic demo world" if demo else ""),
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    with atomic_path(out_pdf) as tmp:
        fig.savefig(tmp, format="pdf", metadata={"CreationDate": None, "Producer": None, "Creator": None})
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=130, metadata={"Software": None})
    plt.close(fig)
