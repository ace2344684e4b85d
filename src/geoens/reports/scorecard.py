"""The scorecard of external geolocators: point metrics beside RvA (CSV, Markdown, LaTeX) and RvA curves.

One row per model (and method): accuracy at 1/25/200/750/2500 km, median and mean error, GeoGuessr score,
country accuracy, RvA at the five cap areas and the median RvA area (:mod:`geoens.evaluation.pointmetrics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from geoens.core.constants import GCD_THRESHOLDS_KM  # noqa: E402
from geoens.core.io import atomic_path  # noqa: E402
from geoens.evaluation.metrics import curve_alphas, recall_at  # noqa: E402
from geoens.evaluation.pointmetrics import POINT_SUMMARY_COLUMNS  # noqa: E402

_RADII = [f"{r:g}km" for r in GCD_THRESHOLDS_KM]


def _headers(strict_less: bool) -> list[tuple[str, str]]:
    op = "<" if strict_less else "<="
    cols = [(f"acc_{r}", f"acc {op}{r[:-2]} km") for r in _RADII]
    cols += [("median_km", "median km"), ("mean_km", "mean km"), ("geoguessr", "GeoGuessr")]
    cols += [("country_acc", "country")]
    cols += [(f"rva_{r}", f"RvA cap {r[:-2]} km") for r in _RADII]
    return [*cols, ("median_rva_km2", "median RvA km^2")]


def _fmt(col: str, v: float) -> str:
    if not np.isfinite(v):
        return "—" if col != "median_rva_km2" else "sphere"
    if col.startswith(("acc_", "rva_")) or col == "country_acc":
        return f"{100 * v:.1f}"
    if col == "geoguessr":
        return f"{v:.0f}"
    if col == "median_rva_km2":
        return f"{v:.3g}"
    return f"{v:.1f}"


def scorecard_markdown(frame: pd.DataFrame, title: str, strict_less: bool = False, note: str = "") -> str:
    """The scorecard as a Markdown table (percent for accuracies and RvA)."""
    heads = _headers(strict_less)
    lines = [f"### {title}", "", "| model | n | " + " | ".join(h for _, h in heads) + " |"]
    lines.append("|" + "---|" * (len(heads) + 2))
    for _, r in frame.iterrows():
        cells = [str(r["model"]), f"{int(r['n'])}"] + [_fmt(c, float(r[c])) for c, _ in heads]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", note, ""] if note else [*lines, ""])


def scorecard_latex(frame: pd.DataFrame, title: str, strict_less: bool = False, note: str = "") -> str:
    """The scorecard as a LaTeX ``table`` (booktabs)."""
    heads = _headers(strict_less)

    def esc(s: str) -> str:
        return s.replace("&", r"\&").replace("%", r"\%").replace("_", r"\_").replace("^2", r"$^2$")

    lines = [r"\begin{table*}[t]", r"\centering", r"\small", r"\begin{tabular}{lr" + "r" * len(heads) + "}"]
    lines += [r"\toprule", "model & n & " + " & ".join(esc(h) for _, h in heads) + r" \\", r"\midrule"]
    for _, r in frame.iterrows():
        cells = [esc(str(r["model"])), f"{int(r['n'])}"] + [esc(_fmt(c, float(r[c]))) for c, _ in heads]
        lines.append(" & ".join(cells) + r" \\")
    cap = esc(title + (". " + note if note else ""))
    return "\n".join(
        [*lines, r"\bottomrule", r"\end{tabular}", r"\caption{" + cap + "}", r"\end{table*}", ""]
    )


def write_scorecard(
    frame: pd.DataFrame,
    paths: Mapping[str, str | Path],
    title: str,
    strict_less: bool = False,
    note: str = "",
) -> None:
    """Write the scorecard: format (``csv``, ``md``, ``tex``) -> path; CSV keeps fractions, full precision.

    Raises:
        ValueError: On an unknown format or a frame without the summary columns.
    """
    missing = [c for c in ("model", *POINT_SUMMARY_COLUMNS) if c not in frame.columns]
    if missing:
        raise ValueError(f"scorecard: missing column(s) {missing}")
    for fmt, path in paths.items():
        with atomic_path(path) as tmp:
            if fmt == "csv":
                frame.to_csv(tmp, index=False)
            elif fmt == "md":
                tmp.write_text(scorecard_markdown(frame, title, strict_less, note), encoding="utf-8")
            elif fmt == "tex":
                tmp.write_text(scorecard_latex(frame, title, strict_less, note), encoding="utf-8")
            else:
                raise ValueError(f"unknown table format {fmt!r} for {path}")


def scorecard_figure(
    areas: Mapping[str, np.ndarray],
    budgets_km2: np.ndarray,
    out_pdf: str | Path,
    out_png: str | Path,
    title: str,
) -> None:
    """RvA curves of each model's per-image areas (log area axis), the cap budgets as dashed lines."""
    al = curve_alphas(160)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, a in areas.items():
        ax.plot(al, 100 * recall_at(a, al), label=name, linewidth=1.4)
    for b, r in zip(budgets_km2, GCD_THRESHOLDS_KM, strict=True):
        ax.axvline(float(b), color="grey", linestyle="--", linewidth=0.7)
        ax.text(float(b), 101, f"{r:g} km", fontsize=6, ha="center", va="bottom")
    ax.set_xscale("log")
    ax.set_xlim(1.0, al[-1])
    ax.set_ylim(0, 100)
    ax.set_xlabel("area budget (km$^2$)")
    ax.set_ylabel("recall (%)")
    ax.set_title(title, fontsize=9, pad=14)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    for path in (out_pdf, out_png):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=150, format=Path(path).suffix.lstrip("."))
    plt.close(fig)
