"""The trainer settings of every predictor and the label rows each one trains on."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Self

import numpy as np
import pandas as pd

from geoens.core.constants import LC_CLASSES, LS_BUCKETS
from geoens.models.datasets import AugmentConfig

#: Predictors :mod:`geoens.models.predictors` trains.
MODELS: tuple[str, ...] = ("ls", "lc", "geoest")
#: Class names of the attribute heads (for plots and metadata).
CLASS_NAMES: dict[str, tuple[str, ...]] = {"ls": LS_BUCKETS, "lc": LC_CLASSES}
#: Label column of each attribute model.
LABEL_COLUMN: dict[str, str] = {"ls": "ls_bucket", "lc": "lc7"}
#: Cell label columns of the geoest heads, coarse first.
CELL_COLUMNS: tuple[str, ...] = ("cell_coarse", "cell_middle", "cell_fine")


class TrainingError(RuntimeError):
    """Training cannot proceed (no usable rows, no image found in the shards...)."""


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Per-predictor settings (``train.models.<name>`` in the config; see the schema for meanings)."""

    backbone: str = "resnet18"
    pretrained: bool = False
    pretrained_file: str | None = None
    image_size: int = 64
    epochs: int = 6
    batch_size: int = 64
    lr: float = 0.002
    weight_decay: float = 1e-4
    patience: int = 3
    gpus: int = 0
    max_train_images: int | None = None
    augment: AugmentConfig = AugmentConfig()

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | str) -> Self:
        """Build from a config mapping or its JSON string.

        Raises:
            ValueError: On a key that is not a trainer or augment setting (naming it).

        """
        data = json.loads(cfg) if isinstance(cfg, str) else dict(cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown trainer config key(s) {unknown}; known: {sorted(names)}")
        if "augment" in data and not isinstance(data["augment"], AugmentConfig):
            data["augment"] = AugmentConfig.from_mapping(data["augment"])
        return cls(**data)


def select_rows(labels: pd.DataFrame, model: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows a predictor trains on and their targets.

    ``ls``/``lc``: rows with ``attr_keep`` and a label ``>= 0`` (targets ``(n,)``); ``geoest``: rows whose
    three ``cell_*`` labels are ``>= 0`` (targets ``(n, 3)``, coarse, middle, fine). Rows are sorted by
    ``image_id`` so the order does not depend on how the label parts were written.

    Raises:
        KeyError: If a needed column is missing.
        ValueError: For an unknown model.

    """
    if model in LABEL_COLUMN:
        need = ["image_id", "split", "attr_keep", LABEL_COLUMN[model]]
    elif model == "geoest":
        need = ["image_id", "split", *CELL_COLUMNS]
    else:
        raise ValueError(f"unknown predictor '{model}' (expected one of {MODELS})")
    missing = [c for c in need if c not in labels.columns]
    if missing:
        raise KeyError(f"label table lacks column(s) {missing} needed by model '{model}'")
    if model in LABEL_COLUMN:
        col = LABEL_COLUMN[model]
        keep = labels["attr_keep"].astype(bool).to_numpy() & (labels[col].to_numpy() >= 0)
    else:
        keep = np.logical_and.reduce([labels[c].to_numpy() >= 0 for c in CELL_COLUMNS])
    rows = labels.loc[keep].sort_values("image_id", kind="stable").reset_index(drop=True)
    targets: np.ndarray
    if model in LABEL_COLUMN:
        targets = rows[LABEL_COLUMN[model]].to_numpy().astype(np.int64)
    else:
        targets = rows[list(CELL_COLUMNS)].to_numpy().astype(np.int64)
    return rows, targets
