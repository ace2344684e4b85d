"""Label tables, the Parquet artifacts of the relabel stage: written and read here only.

A label table is one Parquet file (a test set) or a folder of ``part-NNNNN.parquet`` files (the training set,
read in name order), with the columns of :data:`LABEL_SCHEMA` (docs/ARCHITECTURE.md, "label columns").

* :func:`write_label_shards` / :func:`write_label_table` write them (atomically, through :func:`to_table`);
* :func:`read_label_table` reads them, all columns or some, and names the file on a missing column;
* :func:`read_label_points` gives one row per image (``image_id, lat, lon`` and the rest), optionally of one
  ``split``: what evaluation, calibration and the figures need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geoens.core.io import atomic_path

#: Parquet schema of the label tables (docs/ARCHITECTURE.md, "label columns").
LABEL_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("lat", pa.float64()),
        ("lon", pa.float64()),
        ("ls_value", pa.float64()),
        ("ls_bucket", pa.int8()),
        ("lc_code", pa.uint8()),
        ("lc22", pa.uint8()),
        ("lc7", pa.int8()),
        ("cell_coarse", pa.int32()),
        ("cell_middle", pa.int32()),
        ("cell_fine", pa.int32()),
        ("split", pa.string()),
        ("attr_keep", pa.bool_()),
    ]
)
LABEL_COLUMNS: tuple[str, ...] = tuple(LABEL_SCHEMA.names)


class LabelTableError(ValueError):
    """A label table lacks a column a stage needs, or a split has no row (the message names the file)."""


def to_table(labels: pd.DataFrame) -> pa.Table:
    """Convert the label frame to an Arrow table with :data:`LABEL_SCHEMA` (raises on a wrong dtype)."""
    return pa.Table.from_pandas(labels.loc[:, list(LABEL_COLUMNS)], schema=LABEL_SCHEMA, preserve_index=False)


def write_label_shards(labels: pd.DataFrame, out_dir: str | Path, rows_per_shard: int) -> list[Path]:
    """Write ``part-NNNNN.parquet`` files of ``rows_per_shard`` rows into a new folder, atomically.

    Returns:
        The shard paths (in the final folder).

    """
    table = to_table(labels)
    final = Path(out_dir)
    names: list[str] = []
    with atomic_path(final, is_dir=True) as tmp:
        n_shards = max(1, math.ceil(table.num_rows / rows_per_shard))
        for k in range(n_shards):
            name = f"part-{k:05d}.parquet"
            pq.write_table(table.slice(k * rows_per_shard, rows_per_shard), tmp / name)
            names.append(name)
    return [final / nm for nm in names]


def write_label_table(labels: pd.DataFrame, path: str | Path) -> None:
    """Write one label Parquet file atomically."""
    table = to_table(labels)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def label_files(path: str | Path) -> list[Path]:
    """The Parquet files of a label table: the file itself, or a folder's ``part-*.parquet`` in name order.

    Raises:
        FileNotFoundError: If the path is missing or the folder holds no ``part-*.parquet``.

    """
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("part-*.parquet"))
        if not files:
            raise FileNotFoundError(f"no part-*.parquet in label folder {p}")
        return files
    if not p.exists():
        raise FileNotFoundError(f"label file or folder not found: {p}")
    return [p]


def read_label_table(path: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a label table (every column, or ``columns``), ``image_id`` as str, rows in file order.

    Raises:
        FileNotFoundError: If the path is missing or the folder holds no ``part-*.parquet``.
        LabelTableError: Naming the file, if a requested column is missing.

    """
    frames = []
    for f in label_files(path):
        if columns is not None:
            names = pq.read_schema(str(f)).names
            missing = [c for c in columns if c not in names]
            if missing:
                raise LabelTableError(f"{f}: missing label column(s) {missing} (has {names})")
        frames.append(pq.read_table(str(f), columns=list(columns) if columns else None).to_pandas())
    df: pd.DataFrame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    df["image_id"] = df["image_id"].astype(str)
    return df


def read_label_points(path: str | Path, split: str | None = None) -> pd.DataFrame:
    """One row per image of a label table (the first of a repeated id), optionally only one ``split``.

    Every column is kept; ``image_id``, ``lat`` and ``lon`` (and ``split`` when one is asked for) must exist.

    Raises:
        FileNotFoundError: If the path is missing or the folder holds no ``part-*.parquet``.
        LabelTableError: Naming the file, on a missing column or a split without rows.

    """
    names = pq.read_schema(str(label_files(path)[0])).names
    need = ["image_id", "lat", "lon"] + (["split"] if split is not None else [])
    missing = [c for c in need if c not in names]
    if missing:
        raise LabelTableError(f"{path}: missing label column(s) {missing} (has {names})")
    df = read_label_table(path)
    if split is not None:
        df = df[df["split"] == split]
        if df.empty:
            raise LabelTableError(f"{path}: no row with split == {split!r}")
    return df.drop_duplicates("image_id")
