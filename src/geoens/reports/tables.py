"""Tables (CSV, Markdown, LaTeX) of a test set's metrics, and the table of the trained predictors.

Tables follow the paper's layout (Tables 1-2): one row per method, grouped by base model; columns RvA recall
at the five spherical-cap areas, then GCD accuracy at 1/25/200/750/2500 km, in percent. The CSV keeps the
bootstrap 95% interval of every number (``<metric>_lo``, ``<metric>_hi``); Markdown and LaTeX print
``x [lo, hi]``. Every table notes the number of images per ground-truth LS bucket.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoens.core.constants import (
    CAP_AREAS_KM2,
    DISPLAY_NAMES,
    GCD_THRESHOLD_NAMES,
    GCD_THRESHOLDS_KM,
    LS_BUCKETS,
)
from geoens.core.io import atomic_path
from geoens.evaluation.metrics import Summary, metric_names, summarise

log = logging.getLogger(__name__)

#: Kinds of table: every image, or the balanced set.
KINDS: tuple[str, ...] = ("original", "balanced")
#: Budgets used when only the tables are needed (the curves are then just the cap areas).
CAP_ALPHAS = np.asarray(CAP_AREAS_KM2)
DEMO_NOTE = "synthetic demo world"


def _suffix(method: str, base: str) -> str:
    disp = DISPLAY_NAMES.get(base, base)
    return method[len(disp) :] if method.startswith(disp) else method


def row_label(method: str, base: str) -> str:
    """Row label as in the paper: the base name, then ``+LS``, ``+LS, urban prior``, ... ."""
    suffix = _suffix(method, base)
    if suffix == "":
        return DISPLAY_NAMES.get(base, base)
    if suffix.startswith(" ("):
        return method
    return suffix.replace(" urban prior", ", urban prior")


def _headers() -> list[str]:
    names = [f"{n.title()} {int(r)} km" for n, r in zip(GCD_THRESHOLD_NAMES, GCD_THRESHOLDS_KM, strict=True)]
    return [f"RvA {n}" for n in names] + [f"GCD {n}" for n in names]


def table_frame(summary: Summary) -> pd.DataFrame:
    """Build the CSV table: ``base, method, label, n, zero_prob_pct`` and each metric (%) with its CI."""
    t = summary.table
    out = pd.DataFrame(
        {
            "base": t["base"],
            "method": t["method"],
            "label": [row_label(m, b) for m, b in zip(t["method"], t["base"], strict=True)],
            "n": t["n"].astype(int),
            "zero_prob_pct": 100.0 * t["zero_prob"],
        }
    )
    for name in metric_names():
        for sfx in ("", "_lo", "_hi"):
            out[name + sfx] = (100.0 * t[name + sfx]).round(4)
    for k, b in enumerate(LS_BUCKETS):
        out[f"n_bucket_{b}"] = summary.bucket_counts[k]
    return out


def _cell(v: float, lo: float, hi: float, with_ci: bool) -> str:
    if not np.isfinite(v):
        return "—"
    if with_ci and np.isfinite(lo) and np.isfinite(hi):
        return f"{v:.2f} [{lo:.2f}, {hi:.2f}]"
    return f"{v:.2f}"


def _note(summary: Summary, kind: str, n_boot: int) -> str:
    counts = ", ".join(f"{b} {c}" for b, c in zip(LS_BUCKETS, summary.bucket_counts, strict=True))
    text = f"Images per ground-truth LS bucket: {counts}."
    if kind == "balanced":
        per = summary.n_images // max(1, sum(1 for c in summary.bucket_counts if c))
        text += f" Balanced: {per} per bucket, {summary.n_images} images."
    else:
        text += f" {summary.n_images} images."
    if n_boot:
        text += f" Brackets: bootstrap 95% intervals ({n_boot} resamples)."
    return text + " Percent. RvA at the spherical-cap areas of the GCD radii."


def markdown_table(summary: Summary, title: str, kind: str, n_boot: int) -> str:
    """Format the table as GitHub Markdown, ``x [lo, hi]`` cells, with a note of the bucket counts."""
    df = table_frame(summary)
    head = ["Method", *_headers()]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in df.iterrows():
        cells = [str(r["label"])]
        for name in metric_names():
            cells.append(_cell(r[name], r[name + "_lo"], r[name + "_hi"], n_boot > 0))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _note(summary, kind, n_boot), ""]
    return "\n".join(lines)


def _tex_escape(s: str) -> str:
    return s.replace("&", r"\&").replace("%", r"\%").replace("_", r"\_").replace("#", r"\#")


def latex_table(summary: Summary, title: str, kind: str, n_boot: int) -> str:
    """Format the table as a LaTeX ``table`` (booktabs), intervals in small type under each value."""
    df = table_frame(summary)
    names = [f"{n.title()} {int(r)} km" for n, r in zip(GCD_THRESHOLD_NAMES, GCD_THRESHOLDS_KM, strict=True)]
    lines = [
        r"\begin{table*}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{l" + "r" * 10 + "}",
        r"\toprule",
        r" & \multicolumn{5}{c}{RvA} & \multicolumn{5}{c}{GCD} \\",
        r"\cmidrule(lr){2-6}\cmidrule(lr){7-11}",
        "Method & " + " & ".join(names + names) + r" \\",
        r"\midrule",
    ]
    prev_base = None
    for _, r in df.iterrows():
        if prev_base is not None and r["base"] != prev_base:
            lines.append(r"\midrule")
        prev_base = r["base"]
        cells = [_tex_escape(str(r["label"]))]
        for name in metric_names():
            v, lo, hi = r[name], r[name + "_lo"], r[name + "_hi"]
            if not np.isfinite(v):
                cells.append("---")
            elif n_boot and np.isfinite(lo):
                cells.append(f"\\shortstack{{{v:.2f}\\\\\\tiny[{lo:.1f}, {hi:.1f}]}}")
            else:
                cells.append(f"{v:.2f}")
        lines.append(" & ".join(cells) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\caption{" + _tex_escape(title) + ". " + _tex_escape(_note(summary, kind, n_boot)) + "}",
        r"\end{table*}",
        "",
    ]
    return "\n".join(lines)


def with_external(per_image: pd.DataFrame, external: Mapping[str, str | Path]) -> pd.DataFrame:
    """A test set's per-image table with the external models' rows appended, in name order.

    Args:
        per_image: The built-in models' per-image table (rule ``evaluate``).
        external: External model name -> its per-image Parquet on the same test set (rule
            ``evaluate_external``).

    Every model of a table is scored on the same images: an external model's images that the built-in
    table does not have (e.g. a built-in model could not read them) are left out and counted in the log.

    Raises:
        ValueError: Naming the file if its rows belong to another base model or it lacks images of the
            built-in table (counted, with examples).

    """
    frames = [per_image]
    images = pd.Index(per_image["image_id"].unique())
    for name in sorted(external):
        df = pd.read_parquet(external[name])
        other = sorted(set(df["base"]) - {name})
        if other:
            raise ValueError(f"{external[name]}: rows of base model(s) {other}, expected only {name!r}")
        missing = images.difference(pd.Index(df["image_id"].unique()))
        if len(missing):
            raise ValueError(
                f"{external[name]}: {len(missing)} of {len(images)} test images have no prediction of "
                f"{name!r} (e.g. {list(missing[:5])}); every model of a table is scored on the same images"
            )
        extra = ~df["image_id"].isin(images)
        if extra.any():
            log.warning("%s: %d image(s) not in the built-in models' table left out",
                        external[name], int(df.loc[extra, "image_id"].nunique()))  # fmt: skip
        frames.append(df[~extra])
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else per_image


def write_tables(
    per_image: pd.DataFrame,
    testset: str,
    outputs: Mapping[str, Mapping[str, str | Path]],
    n_boot: int,
    seed: int,
    balanced_seed: int,
    demo: bool = False,
) -> dict[str, Summary]:
    """Write the original and balanced tables of one test set.

    Args:
        per_image: The test set's per-image results.
        testset: Its name (for titles).
        outputs: Kind (``original``, ``balanced``) -> format (``csv``, ``md``, ``tex``) -> path.
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.
        balanced_seed: Seed of the balanced sampling.
        demo: Say "synthetic demo world" in the titles.

    Returns:
        Kind -> summary.

    """
    out = {}
    for kind, paths in outputs.items():
        summ = summarise(per_image, kind == "balanced", n_boot, seed, balanced_seed, alphas=CAP_ALPHAS)
        title = f"Results on {testset} ({kind})" + (f", {DEMO_NOTE}" if demo else "")
        for fmt, path in paths.items():
            with atomic_path(path) as tmp:
                if fmt == "csv":
                    table_frame(summ).to_csv(tmp, index=False, float_format="%.4f")
                elif fmt == "md":
                    tmp.write_text(markdown_table(summ, title, kind, n_boot), encoding="utf-8")
                elif fmt == "tex":
                    tmp.write_text(latex_table(summ, title, kind, n_boot), encoding="utf-8")
                else:
                    raise ValueError(f"unknown table format {fmt!r} for {path}")
        out[kind] = summ
    return out


def training_frame(summaries: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per predictor head: validation accuracy at the best epoch against the majority baseline.

    Args:
        summaries: Model name -> its ``results/models/<model>/summary.json``
            (:func:`geoens.models.predictors.train_model`).

    Returns:
        Columns ``model, head, backbone, image_size, n_train, n_val, best_epoch, epochs, val_acc,
        majority_acc, ratio`` (accuracies as fractions; ``ratio`` = ``val_acc / majority_acc``).

    Raises:
        KeyError: Naming the model and key when a summary lacks one.

    """
    rows = []
    for model, summ in summaries.items():
        try:
            acc = dict(summ["val_acc"])
            maj = dict(summ["val_majority_acc"])
            common = {
                k: summ[k] for k in ("backbone", "image_size", "n_train", "n_val", "best_epoch", "epochs")
            }
        except KeyError as exc:
            raise KeyError(f"training summary of model '{model}' lacks key {exc}") from None
        order = list(summ.get("heads") or acc)
        for head in order:
            a, m = acc.get(head), maj.get(head)
            a_f = math.nan if a is None else float(a)
            m_f = math.nan if m is None else float(m)
            ratio = a_f / m_f if m_f and math.isfinite(m_f) and m_f > 0 else math.nan
            rows.append(
                {"model": model, "head": head, **common, "val_acc": a_f, "majority_acc": m_f, "ratio": ratio}
            )
    return pd.DataFrame(rows)


def write_training_table(
    summaries: Mapping[str, Mapping[str, Any]], out_csv: str | Path, out_md: str | Path, demo: bool = False
) -> pd.DataFrame:
    """Write :func:`training_frame` as CSV and as a Markdown table (accuracies in percent)."""
    df = training_frame(summaries)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")
    title = "Validation accuracy of the trained predictors" + (f", {DEMO_NOTE}" if demo else "")
    lines = [
        f"### {title}",
        "",
        "| model | head | backbone | train / val images | best epoch | val accuracy | majority baseline "
        "| ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    records: list[dict[Any, Any]] = df.to_dict(orient="records")
    for r in records:
        lines.append(
            f"| {r['model']} | {r['head']} | {r['backbone']} @ {r['image_size']} px | {r['n_train']} / "
            f"{r['n_val']} | {r['best_epoch']} of {r['epochs']} | {100 * r['val_acc']:.1f}% | "
            f"{100 * r['majority_acc']:.1f}% | {r['ratio']:.2f}x |"
        )
    lines += [
        "",
        "Majority baseline: validation accuracy of always answering the training split's most common class.",
        "",
    ]
    with atomic_path(out_md) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    return df
