"""Figures: RvA curves with the gain over the base model, recall per LS bucket, probability maps.

The curves and bands come from :func:`geoens.evaluation.metrics.summarise` (bootstrap 95% intervals), the row
labels and the "synthetic demo world" note from :mod:`geoens.reports.tables`; the probability maps are painted
from the atoms through the atom index. The tables themselves are :mod:`geoens.reports.tables`'.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from geoens.core.constants import (  # noqa: E402
    CAP_AREAS_KM2,
    DISPLAY_NAMES,
    EARTH_RADIUS_KM,
    GCD_THRESHOLDS_KM,
    LS_BUCKETS,
    N_CLASSES,
)
from geoens.core.grid import Grid  # noqa: E402
from geoens.core.io import atomic_path  # noqa: E402
from geoens.core.types import BoolArray, F32Array, FloatArray, I32Array, IntArray  # noqa: E402
from geoens.data.labeltable import read_label_points  # noqa: E402
from geoens.evaluation.evaluator import Evaluator  # noqa: E402
from geoens.evaluation.methods import Method, absorb, all_methods, method_name, ordered_bases  # noqa: E402
from geoens.evaluation.metrics import (  # noqa: E402
    Summary,
    bootstrap_ci,
    bootstrap_weights,
    bucket_recall,
    curve_alphas,
    image_positions,
    method_rows,
    summarise,
)
from geoens.evaluation.rva import group_scores_t  # noqa: E402
from geoens.evaluation.testset import iter_prob_batches, read_absorption, read_prediction_ids, read_probs  # noqa: E402
from geoens.geo.atoms import AtomTable, read_atom_index, read_atoms  # noqa: E402
from geoens.geo.lookup import PixelLookup  # noqa: E402
from geoens.geo.partitions import read_partition_csv  # noqa: E402
from geoens.reports.landmap import draw_coastline, shade_land  # noqa: E402
from geoens.reports.tables import DEMO_NOTE, KINDS, row_label, with_external  # noqa: E402

log = logging.getLogger(__name__)

#: Line style per method variant suffix.
STYLES: dict[str, dict[str, object]] = {
    "": {"color": "black", "linestyle": "-", "linewidth": 1.8},
    "+LS": {"color": "#1f77b4", "linestyle": "-", "linewidth": 1.4},
    "+LS urban prior": {"color": "#1f77b4", "linestyle": ":", "linewidth": 1.6},
    "+LC": {"color": "#2ca02c", "linestyle": "-", "linewidth": 1.4},
    "+LS+LC": {"color": "#d62728", "linestyle": "-", "linewidth": 1.4},
}


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------
def _theme() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.0)


def _mark_caps(ax: Axes, labels: bool) -> None:
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
    summary: Summary, per_image: pd.DataFrame, n_boot: int, seed: int, balanced_seed: int, balanced: bool
) -> pd.DataFrame:
    """Recall gain of every method over its base model's curve, with paired bootstrap 95% intervals."""
    al = np.asarray(summary.curves["alpha"].drop_duplicates())
    pos, _ = image_positions(per_image, balanced, balanced_seed)
    n = len(pos)
    w = bootstrap_weights(n, n_boot, seed)

    def hits(method: str) -> np.ndarray:
        sub = method_rows(per_image, method, pos)
        a = sub["area_km2"].to_numpy(np.float64)
        return (np.where(np.isnan(a), np.inf, a)[:, None] <= al[None, :]).astype(np.float64)

    rows = []
    for base in dict.fromkeys(per_image["base"]):
        base_name = method_name(str(base), "")
        hb = hits(base_name)
        for m in all_methods([str(base)])[1:]:
            if m.name not in set(per_image["method"]):
                continue
            d = hits(m.name) - hb
            lo, hi = bootstrap_ci(d, w) if n_boot else (np.full(al.size, np.nan),) * 2
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


def _plot_curve(
    ax: Axes, c: pd.DataFrame, column: str, label: str, style: dict[str, Any], n_boot: int
) -> None:
    """One method's curve (``column`` in percent) and, with bootstrap resamples, its 95% band."""
    ax.plot(c["alpha"], 100 * c[column], label=label, **style)
    if n_boot:
        ax.fill_between(
            c["alpha"], 100 * c["lo"], 100 * c["hi"], color=style["color"], alpha=0.12, linewidth=0
        )


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
    al = curve_alphas(n_alphas)
    panels = [(ts, b) for ts in per_image for b in ordered_bases(per_image[ts]["base"])]
    fig, axes = plt.subplots(len(panels), 3, figsize=(11, 3.0 * len(panels) + 0.6), squeeze=False)
    for row, (ts, base) in enumerate(panels):
        df = per_image[ts][per_image[ts]["base"] == base]
        for col, kind in enumerate(KINDS):
            ax = axes[row, col]
            s = summarise(df, kind == "balanced", n_boot, seed, balanced_seed, alphas=al)
            for m in all_methods([base]):
                c = s.curves[s.curves["method"] == m.name]
                if c.empty:
                    continue
                _plot_curve(ax, c, "recall", row_label(m.name, base), STYLES[m.suffix], n_boot)
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
        sb = summarise(df, True, 0, seed, balanced_seed, alphas=al)
        g = gain_curves(sb, df, n_boot, seed, balanced_seed, balanced=True)
        for m in all_methods([base])[1:]:
            c = g[g["method"] == m.name] if not g.empty else g
            if c.empty:
                continue
            _plot_curve(ax, c, "gain", row_label(m.name, base), STYLES[m.suffix], n_boot)
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


def _save(fig: Figure, out_pdf: str | Path, out_png: str | Path | None, dpi: int = 150) -> None:
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
    panels = [(ts, b) for ts in per_image for b in ordered_bases(per_image[ts]["base"])]
    caps = list(zip(GCD_THRESHOLDS_KM, CAP_AREAS_KM2, strict=True))[1:]
    fig, axes = plt.subplots(len(panels), len(caps), figsize=(12, 2.6 * len(panels) + 0.6), squeeze=False)
    for row, (ts, base) in enumerate(panels):
        df = per_image[ts][per_image[ts]["base"] == base]
        br = bucket_recall(df)
        counts = df.drop_duplicates("image_id")["ls_bucket"].value_counts()
        for col, (r, _) in enumerate(caps):
            ax = axes[row, col]
            sub = br[br["radius_km"] == r].copy() if not br.empty else br
            if not sub.empty:
                sub["recall"] *= 100
                sub["label"] = [row_label(m, base) for m in sub["method"]]
                order = [row_label(m.name, base) for m in all_methods([base])]
                palette = {
                    row_label(m.name, base): str(STYLES[m.suffix]["color"]) for m in all_methods([base])
                }
                palette[row_label(method_name(base, "+LS urban prior"), base)] = "#9ecae1"
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


@dataclass
class _ProbmapInputs:
    """What the probability maps paint: the atoms, the picked images and their predictions."""

    atoms: AtomTable
    atom_index: I32Array
    grid: Grid
    lab: pd.DataFrame
    ids: list[str]
    base_probs: F32Array
    attr: dict[str, tuple[list[str], F32Array]]
    pos: dict[str, dict[str, int]]
    n_cells: int


def _truth_has_mass(
    atoms: AtomTable,
    lookup: PixelLookup,
    lab: pd.DataFrame,
    ids_all: Sequence[str],
    ok: Sequence[int],
    attr: Mapping[str, tuple[list[str], F32Array]],
    pos: Mapping[str, Mapping[str, int]],
    base_path: str | Path,
    absorption: tuple[IntArray, IntArray],
) -> BoolArray:
    """For each image ``ids_all[k]``, ``k`` in ``ok``: does its truth get P > 0 under every mapped method?

    It does when the truth's pixel lies in a partition cell and on an LS bucket and an LC class, and the base
    model (after absorption) and the LS and LC predictors give those classes mass. The base predictions are
    streamed in batches, so only one batch is in memory.
    """
    ok_ids = [ids_all[k] for k in ok]
    gt = lookup.atom_at(
        lab.loc[ok_ids, "lat"].to_numpy(np.float64), lab.loc[ok_ids, "lon"].to_numpy(np.float64)
    )
    lbl = {f: np.where(gt >= 0, atoms.labels[f][np.maximum(gt, 0)], -1) for f in ("s2", *attr)}
    good = np.all([lbl[f] >= 0 for f in lbl], axis=0)
    for f, (_, probs) in attr.items():
        rows = np.array([pos[f][i] for i in ok_ids], np.int64)
        good &= probs[rows, np.maximum(lbl[f], 0)] > 0
    where = np.asarray(ok, np.int64)
    seen = 0
    for _, p in iter_prob_batches(base_path, 1024):
        lo, hi = np.searchsorted(where, [seen, seen + len(p)])
        if hi > lo:
            pa = absorb(p[where[lo:hi] - seen].astype(np.float64), *absorption)
            good[lo:hi] &= pa[np.arange(hi - lo), np.maximum(lbl["s2"][lo:hi], 0)] > 0
        seen += len(p)
    return np.asarray(good, bool)


def _probmap_inputs(
    atoms_path: str | Path,
    atom_index_path: str | Path,
    absorption_path: str | Path,
    labels_path: str | Path,
    fine_csv_path: str | Path,
    predictions: Mapping[str, str | Path],
    n_examples: int,
    base: str,
    earth_radius_km: float,
) -> _ProbmapInputs:
    """Read the atoms and pick ``n_examples`` images, evenly spaced in the label file's order.

    The picks are made among the images whose truth gets P > 0 under every mapped method
    (:func:`_truth_has_mass`), so that each map shows where the truth's mass is; only when there are
    none, among all images with labels and predictions.
    """
    atoms = read_atoms(atoms_path)
    atom_index = read_atom_index(atom_index_path, atoms.n)
    grid = Grid(atom_index.shape[0], atom_index.shape[1], earth_radius_km)
    absorption = read_absorption(absorption_path)
    centre_lat = read_partition_csv(fine_csv_path).lat_mean
    lab = read_label_points(labels_path).set_index("image_id")
    # only the picked rows of the (possibly large) base predictions are kept in memory
    ids_all = read_prediction_ids(predictions[base])
    attr = {f: read_probs(predictions[f]) for f in ("ls", "lc")}
    pos = {f: {i: k for k, i in enumerate(attr[f][0])} for f in attr}
    ok = [k for k, i in enumerate(ids_all) if i in lab.index and all(i in pos[f] for f in pos)]
    good = _truth_has_mass(
        atoms, PixelLookup(atom_index, grid), lab, ids_all, ok, attr, pos, predictions[base], absorption
    )
    pool = [k for k, g in zip(ok, good, strict=True) if g]
    if not pool:
        log.warning("probability maps: no image's truth has P > 0 under every method; picking among all")
        pool = ok
    n_ex = min(n_examples, len(pool))
    chosen = sorted({pool[int(k)] for k in np.linspace(0, len(pool) - 1, n_ex).round()}) if n_ex else []
    rows_b, seen = [], 0
    for _, p in iter_prob_batches(predictions[base], 1024):
        rows_b += [p[k - seen] for k in chosen if seen <= k < seen + len(p)]
        seen += len(p)
    ids_b = [ids_all[k] for k in chosen]
    p_b = np.stack(rows_b) if rows_b else np.zeros((0, centre_lat.size), np.float32)
    return _ProbmapInputs(atoms, atom_index, grid, lab, ids_b, p_b, attr, pos, int(centre_lat.size))


def _probmap_panel(
    ax: Axes,
    P: FloatArray,
    disp: I32Array,
    norm: LogNorm,
    lat: FloatArray,
    lon: FloatArray,
    top1: tuple[FloatArray, FloatArray],
    title: str,
    land: BoolArray,
) -> Any:
    """Paint one map: the land, ``P / max P`` on the display pixels (log colours), the truth and the top-1."""
    pmax = float(P.max())
    img = P[disp] / pmax if pmax > 0 else np.zeros(disp.shape)
    shade_land(ax, land)
    im = ax.imshow(
        np.ma.masked_less_equal(img, 0),
        cmap="magma",
        norm=norm,
        extent=(-180, 180, -90, 90),
        interpolation="nearest",
    )
    draw_coastline(ax, land)
    ax.plot(lon, lat, marker="*", color="white", markeredgecolor="black", markersize=9, linestyle="")
    if np.isfinite(top1[0][0]):
        ax.plot(top1[1], top1[0], marker="x", color="cyan", markersize=6, linestyle="")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7)
    return im


def _probmap_row(
    axes: Any,
    ev: Evaluator,
    inp: _ProbmapInputs,
    k: int,
    methods: Sequence[Method],
    disp: I32Array,
    norm: LogNorm,
    base: str,
) -> Any:
    """Paint the maps of picked image ``k`` (one per method) in the row ``axes``; return the last image."""
    land = np.where(disp >= 0, inp.atoms.labels["ls"][np.maximum(disp, 0)], -1) >= 0
    iid = inp.ids[k]
    probs = {
        "s2": inp.base_probs[k : k + 1],
        **{f: inp.attr[f][1][inp.pos[f][iid]][None, :] for f in inp.attr},
    }
    sc = ev.scores(probs, [iid])
    lat = inp.lab.loc[[iid], "lat"].to_numpy(np.float64)
    lon = inp.lab.loc[[iid], "lon"].to_numpy(np.float64)
    gt = ev.lookup.atom_at(lat, lon)
    im = None
    for c, m in enumerate(methods):
        g = ev.groups(m.families)
        P = group_scores_t(g, sc)[:, 0][g.of_atom]
        res = ev.evaluate(m, sc, gt)
        area = res.area[0]
        title = f"{row_label(m.name, base)}  (area {area:.3g} km$^2$)"
        im = _probmap_panel(axes[c], P, disp, norm, lat, lon, (res.top1_lat, res.top1_lon), title, land)
        if c == 0:
            axes[c].set_ylabel(str(iid)[:24], fontsize=6)
    return im


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

    Columns: base, +LS, +LC, +LS+LC; rows: images whose truth gets P > 0 under every column, evenly spaced
    in the label file's order. The ground truth is a white star, the grid top-1 a cross, over the land
    (grey, with its coastline) of the run's LS mask. Maps are painted from the atoms through the atom index
    (subsampled to at most ``max_width`` columns for display).
    """
    _theme()
    inp = _probmap_inputs(
        atoms_path,
        atom_index_path,
        absorption_path,
        labels_path,
        fine_csv_path,
        predictions,
        n_examples,
        base,
        earth_radius_km,
    )
    n_ex = len(inp.ids)
    methods = [m for m in all_methods([base]) if not m.urban_prior]
    step = max(1, math.ceil(inp.grid.width / max_width))
    disp = inp.atom_index[step // 2 :: step, step // 2 :: step]
    ev = Evaluator(
        inp.atoms,
        {"s2": inp.n_cells, **N_CLASSES},
        PixelLookup(inp.atom_index, inp.grid),
        inp.grid.total_area(),
        read_absorption(absorption_path),
    )
    fig, axes = plt.subplots(
        max(1, n_ex), len(methods), figsize=(3.2 * len(methods), 1.9 * max(1, n_ex) + 0.6), squeeze=False
    )
    norm = LogNorm(vmin=1e-8, vmax=1.0)
    im = None
    for r in range(n_ex):
        im = _probmap_row(axes[r], ev, inp, r, methods, disp, norm, base)
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
    external: Mapping[str, Mapping[str, str | Path]] | None = None,
) -> dict[str, pd.DataFrame]:
    """Read per-image Parquets keyed by test set name.

    Args:
        paths: Test set -> its per-image Parquet (rule ``evaluate``).
        external: Test set -> external model name -> its per-image Parquet (rule ``evaluate_external``),
            appended to the test set's rows (:func:`geoens.reports.tables.with_external`).

    """
    items = paths.items() if isinstance(paths, Mapping) else paths
    ext = external or {}
    return {str(k): with_external(pd.read_parquet(v), ext.get(str(k), {})) for k, v in items}
