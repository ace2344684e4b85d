"""Tables (CSV, Markdown, LaTeX) and figures (RvA curves, per-bucket recall, probability maps).

Tables follow the paper's layout (Tables 1-2): one row per method, grouped by base model; columns RvA recall
at the five spherical-cap areas, then GCD accuracy at 1/25/200/750/2500 km, in percent. The CSV keeps the
bootstrap 95% interval of every number (``<metric>_lo``, ``<metric>_hi``); Markdown and LaTeX print
``x [lo, hi]``. Every table notes the number of images per ground-truth LS bucket.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from geoens import rva  # noqa: E402
from geoens.constants import (  # noqa: E402
    BASE_MODELS,
    CAP_AREAS_KM2,
    DISPLAY_NAMES,
    EARTH_RADIUS_KM,
    GCD_THRESHOLD_NAMES,
    GCD_THRESHOLDS_KM,
    LS_BUCKETS,
    N_CLASSES,
)
from geoens.grid import Grid  # noqa: E402
from geoens.io import atomic_path  # noqa: E402

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("original", "balanced")
#: Budgets used when only the tables are needed (the curves are then just the cap areas).
CAP_ALPHAS = np.asarray(CAP_AREAS_KM2)
DEMO_NOTE = "synthetic demo world"
#: Line style per method variant suffix.
STYLES: dict[str, dict[str, object]] = {
    "": {"color": "black", "linestyle": "-", "linewidth": 1.8},
    "+LS": {"color": "#1f77b4", "linestyle": "-", "linewidth": 1.4},
    "+LS urban prior": {"color": "#1f77b4", "linestyle": ":", "linewidth": 1.6},
    "+LC": {"color": "#2ca02c", "linestyle": "-", "linewidth": 1.4},
    "+LS+LC": {"color": "#d62728", "linestyle": "-", "linewidth": 1.4},
}


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


def table_frame(summary: rva.Summary) -> pd.DataFrame:
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
    for name in rva.metric_names():
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


def _note(summary: rva.Summary, kind: str, n_boot: int) -> str:
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


def markdown_table(summary: rva.Summary, title: str, kind: str, n_boot: int) -> str:
    """Format the table as GitHub Markdown, ``x [lo, hi]`` cells, with a note of the bucket counts."""
    df = table_frame(summary)
    head = ["Method", *_headers()]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in df.iterrows():
        cells = [str(r["label"])]
        for name in rva.metric_names():
            cells.append(_cell(r[name], r[name + "_lo"], r[name + "_hi"], n_boot > 0))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _note(summary, kind, n_boot), ""]
    return "\n".join(lines)


def _tex_escape(s: str) -> str:
    return s.replace("&", r"\&").replace("%", r"\%").replace("_", r"\_").replace("#", r"\#")


def latex_table(summary: rva.Summary, title: str, kind: str, n_boot: int) -> str:
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
        for name in rva.metric_names():
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


def write_tables(
    per_image: pd.DataFrame,
    testset: str,
    outputs: Mapping[str, Mapping[str, str | Path]],
    n_boot: int,
    seed: int,
    balanced_seed: int,
    demo: bool = False,
) -> dict[str, rva.Summary]:
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
        summ = rva.summarise(per_image, kind == "balanced", n_boot, seed, balanced_seed, alphas=CAP_ALPHAS)
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
            (:func:`geoens.train.train_model`).

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


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------
def _theme() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.0)


def _mark_caps(ax: plt.Axes, labels: bool) -> None:
    for r, a in zip(GCD_THRESHOLDS_KM, CAP_AREAS_KM2, strict=True):
        ax.axvline(a, color="0.3", linestyle="--", linewidth=0.7, zorder=0)
        if labels:
            ax.text(
                a,
                0.98,
                f" {int(r)} km",
                transform=ax.get_xaxis_transform(),
                ha="right",
                va="top",
                rotation=90,
                fontsize=6,
                color="0.3",
            )


def gain_curves(
    summary: rva.Summary, per_image: pd.DataFrame, n_boot: int, seed: int, balanced_seed: int, balanced: bool
) -> pd.DataFrame:
    """Recall gain of every method over its base model's curve, with paired bootstrap 95% intervals."""
    al = np.asarray(summary.curves["alpha"].drop_duplicates())
    images = per_image.drop_duplicates("image_id")[["image_id", "ls_bucket"]].sort_values("image_id")
    images = images.reset_index(drop=True)
    if balanced:
        idx, _ = rva.balanced_sample(images["ls_bucket"].to_numpy(), balanced_seed)
        images = images.iloc[idx].reset_index(drop=True)
    n = len(images)
    pos = pd.Series(np.arange(n), index=images["image_id"].to_numpy())
    w = rva.bootstrap_weights(n, n_boot, seed)

    def hits(method: str) -> np.ndarray:
        sub = per_image[(per_image["method"] == method) & per_image["image_id"].isin(pos.index)]
        sub = sub.iloc[np.argsort(pos[sub["image_id"]].to_numpy())]
        a = sub["area_km2"].to_numpy(np.float64)
        return (np.where(np.isnan(a), np.inf, a)[:, None] <= al[None, :]).astype(np.float64)

    rows = []
    for base in dict.fromkeys(per_image["base"]):
        base_name = rva.method_name(str(base), "")
        hb = hits(base_name)
        for m in rva.all_methods([str(base)])[1:]:
            if m.name not in set(per_image["method"]):
                continue
            d = hits(m.name) - hb
            lo, hi = rva.bootstrap_ci(d, w) if n_boot else (np.full(al.size, np.nan),) * 2
            rows.append(
                pd.DataFrame(
                    {
                        "base": base,
                        "method": m.name,
                        "alpha": al,
                        "gain": d.mean(axis=0) if n else np.nan,
                        "lo": lo,
                        "hi": hi,
                    }
                )
            )
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def rva_figure(
    per_image: Mapping[str, pd.DataFrame],
    out_pdf: str | Path,
    out_png: str | Path | None,
    n_boot: int,
    seed: int,
    balanced_seed: int,
    demo: bool = False,
    n_alphas: int = 120,
) -> None:
    """Plot RvA curves: a row per (test set, base model); panels original, balanced, gain (balanced).

    Curves on a log-area axis with bootstrap 95% bands, the cap areas as dashed lines, the urban prior dotted.
    """
    _theme()
    al = rva.curve_alphas(n_alphas)
    panels = [(ts, b) for ts in per_image for b in BASE_MODELS if b in set(per_image[ts]["base"])]
    fig, axes = plt.subplots(len(panels), 3, figsize=(11, 3.0 * len(panels) + 0.6), squeeze=False)
    for row, (ts, base) in enumerate(panels):
        df = per_image[ts][per_image[ts]["base"] == base]
        for col, kind in enumerate(KINDS):
            ax = axes[row, col]
            s = rva.summarise(df, kind == "balanced", n_boot, seed, balanced_seed, alphas=al)
            for m in rva.all_methods([base]):
                c = s.curves[s.curves["method"] == m.name]
                if c.empty:
                    continue
                st = STYLES[m.suffix]
                ax.plot(c["alpha"], 100 * c["recall"], label=row_label(m.name, base), **st)
                if n_boot:
                    ax.fill_between(
                        c["alpha"], 100 * c["lo"], 100 * c["hi"], color=st["color"], alpha=0.12, linewidth=0
                    )
            ax.set_xscale("log")
            ax.set_xlim(1.0, al[-1])
            ax.set_ylim(0, 100)
            _mark_caps(ax, labels=row == 0)
            ax.set_title(f"{ts}: {DISPLAY_NAMES.get(base, base)}, {kind} (n={s.n_images})", fontsize=8)
            ax.set_ylabel("recall (%)")
            if row == len(panels) - 1:
                ax.set_xlabel("area budget (km$^2$)")
            if col == 0:
                ax.legend(fontsize=6, loc="center left")
        ax = axes[row, 2]
        sb = rva.summarise(df, True, 0, seed, balanced_seed, alphas=al)
        g = gain_curves(sb, df, n_boot, seed, balanced_seed, balanced=True)
        for m in rva.all_methods([base])[1:]:
            c = g[g["method"] == m.name] if not g.empty else g
            if c.empty:
                continue
            st = STYLES[m.suffix]
            ax.plot(c["alpha"], 100 * c["gain"], label=row_label(m.name, base), **st)
            if n_boot:
                ax.fill_between(
                    c["alpha"], 100 * c["lo"], 100 * c["hi"], color=st["color"], alpha=0.12, linewidth=0
                )
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlim(1.0, al[-1])
        _mark_caps(ax, labels=row == 0)
        ax.set_title(f"{ts}: gain over {DISPLAY_NAMES.get(base, base)} (balanced)", fontsize=8)
        ax.set_ylabel("recall gain (points)")
        if row == len(panels) - 1:
            ax.set_xlabel("area budget (km$^2$)")
    title = "Recall vs Area" + (f" — {DEMO_NOTE}" if demo else "")
    fig.suptitle(title, fontsize=11)
    foot = f"Bands: bootstrap 95% ({n_boot} resamples). Dashed: spherical caps of 1/25/200/750/2500 km."
    if demo:
        foot = f"{DEMO_NOTE.capitalize()}: not real data. " + foot
    fig.text(0.5, 0.005, foot, ha="center", va="bottom", fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    _save(fig, out_pdf, out_png)


def _save(fig: plt.Figure, out_pdf: str | Path, out_png: str | Path | None, dpi: int = 150) -> None:
    with atomic_path(out_pdf) as tmp:
        fig.savefig(tmp, format="pdf", metadata={"CreationDate": None, "ModDate": None})
    if out_png is not None:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)


def buckets_figure(
    per_image: Mapping[str, pd.DataFrame],
    out_pdf: str | Path,
    out_png: str | Path | None = None,
    demo: bool = False,
) -> None:
    """Recall at the cap areas per ground-truth LS bucket: rows (test set, base), columns cap radii."""
    _theme()
    panels = [(ts, b) for ts in per_image for b in BASE_MODELS if b in set(per_image[ts]["base"])]
    caps = list(zip(GCD_THRESHOLDS_KM, CAP_AREAS_KM2, strict=True))[1:]
    fig, axes = plt.subplots(len(panels), len(caps), figsize=(12, 2.6 * len(panels) + 0.6), squeeze=False)
    for row, (ts, base) in enumerate(panels):
        df = per_image[ts][per_image[ts]["base"] == base]
        br = rva.bucket_recall(df)
        counts = df.drop_duplicates("image_id")["ls_bucket"].value_counts()
        for col, (r, _) in enumerate(caps):
            ax = axes[row, col]
            sub = br[br["radius_km"] == r].copy() if not br.empty else br
            if not sub.empty:
                sub["recall"] *= 100
                sub["label"] = [row_label(m, base) for m in sub["method"]]
                order = [row_label(m.name, base) for m in rva.all_methods([base])]
                palette = {
                    row_label(m.name, base): str(STYLES[m.suffix]["color"]) for m in rva.all_methods([base])
                }
                palette[row_label(rva.method_name(base, "+LS urban prior"), base)] = "#9ecae1"
                sns.barplot(
                    data=sub,
                    x="bucket",
                    y="recall",
                    hue="label",
                    order=list(LS_BUCKETS),
                    hue_order=order,
                    palette=palette,
                    ax=ax,
                    legend=(row == 0 and col == 0),
                )
            ax.set_ylim(0, 100)
            ax.set_title(f"{ts}: {DISPLAY_NAMES.get(base, base)}, cap {int(r)} km", fontsize=8)
            ax.set_xlabel("")
            ax.set_ylabel("recall (%)" if col == 0 else "")
            ax.set_xticks(range(len(LS_BUCKETS)))
            ax.set_xticklabels(
                [f"{b}\n(n={int(counts.get(k, 0))})" for k, b in enumerate(LS_BUCKETS)], fontsize=6
            )
    if axes[0, 0].get_legend() is not None:
        sns.move_legend(axes[0, 0], "upper left", fontsize=6, title=None)
    fig.suptitle("Recall at the cap areas per ground-truth LS bucket" + (f" — {DEMO_NOTE}" if demo else ""))
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    _save(fig, out_pdf, out_png)


def probmap_figure(
    atoms_path: str | Path,
    atom_index_path: str | Path,
    absorption_path: str | Path,
    labels_path: str | Path,
    fine_csv_path: str | Path,
    predictions: Mapping[str, str | Path],
    out_png: str | Path,
    n_examples: int,
    base: str = "geoest",
    earth_radius_km: float = EARTH_RADIUS_KM,
    demo: bool = False,
    max_width: int = 720,
) -> None:
    """Plot the ensembled probability maps of a few test images (as the paper's Fig. 1B), log colour.

    Columns: base, +LS, +LC, +LS+LC; rows: images (evenly spaced in the label file's order). The ground
    truth is a white star, the grid top-1 a cross. Maps are painted from the atoms through the atom index
    (subsampled to at most ``max_width`` columns for display).
    """
    _theme()
    atoms = rva.read_atoms(atoms_path)
    atom_index = rva.read_atom_index(atom_index_path, atoms.n)
    grid = Grid(atom_index.shape[0], atom_index.shape[1], earth_radius_km)
    centre_lat, _ = rva.read_partition_centres(fine_csv_path)
    labels = pd.read_parquet(labels_path)
    labels["image_id"] = labels["image_id"].astype(str)
    lab = labels.drop_duplicates("image_id").set_index("image_id")
    # only the picked rows of the (possibly large) base predictions are kept in memory
    ids_all = [str(i) for i in pq.read_table(predictions[base], columns=["image_id"]).column(0).to_pylist()]
    attr = {f: rva.read_probs(predictions[f]) for f in ("ls", "lc")}
    pos = {f: {i: k for k, i in enumerate(attr[f][0])} for f in attr}
    ok = [k for k, i in enumerate(ids_all) if i in lab.index and all(i in pos[f] for f in pos)]
    n_ex = min(n_examples, len(ok))
    chosen = sorted({ok[int(k)] for k in np.linspace(0, len(ok) - 1, n_ex).round()}) if n_ex else []
    rows_b, seen = [], 0
    for _, p in rva.iter_prob_batches(predictions[base], 1024):
        rows_b += [p[k - seen] for k in chosen if seen <= k < seen + len(p)]
        seen += len(p)
    ids_b = [ids_all[k] for k in chosen]
    p_b = np.stack(rows_b) if rows_b else np.zeros((0, centre_lat.size), np.float32)
    pick = list(range(len(chosen)))
    n_ex = len(pick)
    methods = [m for m in rva.all_methods([base]) if not m.urban_prior]
    step = max(1, math.ceil(grid.width / max_width))
    disp = atom_index[step // 2 :: step, step // 2 :: step]
    ev = rva.Evaluator(
        atoms,
        {"s2": centre_lat.size, **N_CLASSES},
        rva.PixelLookup(atom_index, grid),
        grid.total_area(),
        rva.read_absorption(absorption_path),
    )
    fig, axes = plt.subplots(
        max(1, n_ex), len(methods), figsize=(3.2 * len(methods), 1.9 * max(1, n_ex) + 0.6), squeeze=False
    )
    norm = LogNorm(vmin=1e-8, vmax=1.0)
    im = None
    for r, k in enumerate(pick):
        iid = ids_b[k]
        probs = {"s2": p_b[k : k + 1], **{f: attr[f][1][pos[f][iid]][None, :] for f in attr}}
        sc = ev.scores(probs, [iid])
        lat = lab.loc[[iid], "lat"].to_numpy(np.float64)
        lon = lab.loc[[iid], "lon"].to_numpy(np.float64)
        gt = ev.lookup.atom_at(lat, lon)
        for c, m in enumerate(methods):
            g = ev.groups(m.families)
            P = rva.group_scores_t(g, sc)[:, 0][g.of_atom]
            res = ev.evaluate(m, sc, gt)
            pmax = float(P.max())
            img = P[disp] / pmax if pmax > 0 else np.zeros(disp.shape)
            ax = axes[r, c]
            im = ax.imshow(
                np.ma.masked_less_equal(img, 0),
                cmap="magma",
                norm=norm,
                extent=(-180, 180, -90, 90),
                interpolation="nearest",
            )
            ax.set_facecolor("0.85")
            ax.plot(lon, lat, marker="*", color="white", markeredgecolor="black", markersize=9, linestyle="")
            if np.isfinite(res.top1_lat[0]):
                ax.plot(res.top1_lon, res.top1_lat, marker="x", color="cyan", markersize=6, linestyle="")
            ax.set_xticks([])
            ax.set_yticks([])
            area = res.area[0]
            ax.set_title(f"{row_label(m.name, base)}  (area {area:.3g} km$^2$)", fontsize=7)
            if c == 0:
                ax.set_ylabel(str(iid)[:24], fontsize=6)
    fig.suptitle(
        f"Ensembled probability maps, {DISPLAY_NAMES.get(base, base)} (log; star: truth, x: top-1)"
        + (f" — {DEMO_NOTE}" if demo else ""),
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 0.93, 0.95))
    if im is not None:
        cax = fig.add_axes((0.94, 0.15, 0.012, 0.7))
        fig.colorbar(im, cax=cax, label="P / max P")
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=130, metadata={"Software": None})
    plt.close(fig)


def read_per_image(
    paths: Mapping[str, str | Path] | Sequence[tuple[str, str | Path]],
) -> dict[str, pd.DataFrame]:
    """Read per-image Parquets keyed by test set name."""
    items = paths.items() if isinstance(paths, Mapping) else paths
    return {str(k): pd.read_parquet(v) for k, v in items}
