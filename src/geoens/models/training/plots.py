"""Training curves and the validation confusion matrix of a predictor (PNG; matplotlib deferred)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoens.core.io import atomic_path
from geoens.models.training.config import CLASS_NAMES


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | Path, model: str) -> None:
    """Training/validation loss and validation accuracy per epoch (PNG)."""
    import matplotlib  # deferred: matplotlib is heavy and only the final outputs plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after choosing the Agg backend

    df = pd.DataFrame(list(history))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    if len(df):
        ax1.plot(df["epoch"], df["train_loss"], "o-", label="train")
        ax1.plot(df["epoch"], df["val_loss"], "o-", label="validation")
        for col in [c for c in df.columns if c.startswith("val_acc")]:
            ax2.plot(
                df["epoch"],
                df[col],
                "o-",
                label="validation " + (col.removeprefix("val_acc").strip("_") or "top-1"),
            )
        ax2.plot(df["epoch"], df["train_acc"], "o--", color="grey", label="train (augmented)")
    ax1.set(xlabel="epoch", ylabel="loss", title=f"{model}: loss")
    ax2.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1), title=f"{model}: top-1 accuracy")
    from matplotlib.ticker import MaxNLocator  # deferred: matplotlib is heavy

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.legend()
    ax2.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def plot_confusion(
    state: Mapping[str, Any],
    heads: Mapping[str, int],
    path: str | Path,
    model: str,
    majority: Mapping[str, float] | None = None,
) -> None:
    """Plot the best epoch's validation confusion matrix (``ls``, ``lc``) or head accuracies (``geoest``).

    With ``majority`` (head -> majority-baseline accuracy) the baseline is shown beside the accuracy.
    """
    import matplotlib  # deferred: matplotlib is heavy and only the final outputs plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after choosing the Agg backend

    base = dict(majority or {})
    conf = state.get("best_confusion")
    epoch = state.get("best_epoch")
    if model in CLASS_NAMES and conf is not None and np.asarray(conf).size:
        conf = np.asarray(conf)
        names = CLASS_NAMES[model]
        share = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2.5, 0.9 * len(names) + 2.3))
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{share[i, j]:.2f}\n({conf[i, j]})", ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")  # fmt: skip
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        acc = np.trace(conf) / max(conf.sum(), 1)
        title = f"{model}: validation (epoch {epoch})\naccuracy {100 * acc:.1f}%"
        if model in base:
            title += f", majority baseline {100 * base[model]:.1f}%"
        ax.set(xlabel="predicted", ylabel="true", title=title)
    else:
        accs = state.get("best_acc") or [math.nan] * len(heads)
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        xs = np.arange(len(heads))
        ax.bar(xs - 0.2, accs, width=0.4, color="tab:blue", label="model")
        maj = [base.get(h, math.nan) for h in heads]
        ax.bar(xs + 0.2, maj, width=0.4, color="lightgrey", label="majority baseline")
        for k, (h, a) in enumerate(zip(heads, accs, strict=True)):
            label = f"{a:.3f}\n{heads[h]} cells"
            ax.text(k - 0.2, (a if a == a else 0) + 0.02, label, ha="center", fontsize=7)
        ax.set_xticks(xs, list(heads))
        ax.legend(fontsize=7, loc="upper right")
        ax.set(ylim=(0, 1.15), ylabel="validation top-1 accuracy",
               title=f"{model}: per-partition accuracy (epoch {epoch})")  # fmt: skip
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
