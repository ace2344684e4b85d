"""Metadata CSVs (``IMG_ID, LAT, LON``): reading, cleaning and bad-row accounting (ARCHITECTURE "labels").

:func:`read_metadata` reads an ``IMG_ID, LAT, LON`` CSV (Arrow's multithreaded reader), drops and counts bad
rows (:class:`BadRows`, by the reasons of :data:`BAD_REASONS`) and fails, naming the file and the first bad
lines, past ``max_bad_fraction`` (:class:`MetadataError`).
"""

from __future__ import annotations

import csv as csv_module
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from geoens.core.types import BoolArray, FloatArray

log = logging.getLogger(__name__)


#: Required metadata columns.
METADATA_COLUMNS: tuple[str, str, str] = ("IMG_ID", "LAT", "LON")
#: Reasons a metadata row is dropped, in the order they are checked (a row counts under its first reason).
BAD_REASONS: tuple[str, ...] = (
    "missing_id",
    "missing_coordinates",
    "non_numeric_coordinates",
    "lat_out_of_range",
    "lon_out_of_range",
    "no_image",
    "duplicate_id",
)
#: Strings read as a missing coordinate.
_NA_STRINGS: list[str] = ["", "NA", "N/A", "NaN", "nan", "NAN", "null", "NULL", "None", "-nan", "#N/A"]
#: How many bad rows an error message or summary names.
N_BAD_EXAMPLES = 10


class MetadataError(ValueError):
    """A metadata CSV that lacks a column, cannot be parsed or has too many bad rows."""


@dataclass
class BadRows:
    """Bad rows of one metadata file, counted per reason.

    Attributes:
        file: The CSV.
        n_rows: Data rows in the file.
        counts: Bad rows per reason (every reason of :data:`BAD_REASONS`, zero included).
        examples: The first bad rows as ``(line, reason)``; ``line`` is the 1-based line of the file
            (the header is line 1, the first data row line 2).

    """

    file: str
    n_rows: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BAD_REASONS, 0))
    examples: list[tuple[int, str]] = field(default_factory=list)

    @property
    def n_bad(self) -> int:
        """Number of dropped rows."""
        return int(sum(self.counts.values()))

    @property
    def fraction(self) -> float:
        """Share of dropped rows (0 for an empty file)."""
        return self.n_bad / self.n_rows if self.n_rows else 0.0

    def describe(self) -> str:
        """One line naming the non-zero counts and the first bad lines."""
        counts = ", ".join(f"{k}={v}" for k, v in self.counts.items() if v)
        lines = ", ".join(f"line {ln} ({why})" for ln, why in self.examples)
        return f"{counts}; first bad rows: {lines}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "file": self.file,
            "rows_total": self.n_rows,
            "rows_bad": self.n_bad,
            "bad_fraction": self.fraction,
            "bad_by_reason": dict(self.counts),
            "first_bad_rows": [{"line": ln, "reason": why} for ln, why in self.examples],
        }


def _undecodable_line(path: Path) -> str:
    """``"line N, byte B"`` of the first line of ``path`` that is not UTF-8 (a UTF-8 BOM is accepted)."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                return f"line {number}, byte {exc.start + 1} ({raw[exc.start : exc.start + 1]!r})"
    return "no line"  # pragma: no cover - only called after a decoding error


def _read_header(path: Path) -> list[str]:
    try:
        with open(path, "rb") as fh:
            line = fh.readline()
    except OSError as exc:
        raise MetadataError(f"{path}: cannot read the CSV header: {exc}") from exc
    try:
        # utf-8-sig: the byte-order mark that spreadsheet programs write is not part of the first name
        first = next(csv_module.reader([line.decode("utf-8-sig")]), None)
    except UnicodeDecodeError as exc:
        raise MetadataError(f"{path}: not UTF-8 text at {_undecodable_line(path)}: save it as UTF-8") from exc
    if not first:
        raise MetadataError(f"{path}: empty file (expected a header with {', '.join(METADATA_COLUMNS)})")
    return [c.strip() for c in first]


def _read_columns(path: Path, numeric: bool, names: tuple[str, str, str]) -> pa.Table:
    """The file's columns ``names`` (id, lat, lon) as IMG_ID, LAT, LON.

    IMG_ID as string; LAT, LON as float64 (``numeric``) or as strings; NA spellings -> null.
    """
    coord_type = pa.float64() if numeric else pa.string()
    convert = pacsv.ConvertOptions(
        include_columns=list(names),
        column_types={names[0]: pa.string(), names[1]: coord_type, names[2]: coord_type},
        null_values=_NA_STRINGS,
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    table = pacsv.read_csv(path, convert_options=convert)
    return table.select(list(names)).rename_columns(list(METADATA_COLUMNS))


def metadata_names(path: Path, columns: Mapping[str, str] | None) -> tuple[str, str, str]:
    """The file's column names for IMG_ID, LAT and LON: ``columns`` maps any of them to another name.

    Raises:
        MetadataError: Naming the file: a key that is not IMG_ID, LAT or LON, or one file column mapped twice.

    """
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(METADATA_COLUMNS))
    if unknown:
        raise MetadataError(
            f"{path}: unknown metadata column key(s) {unknown}: the keys are {list(METADATA_COLUMNS)}"
        )
    names = (
        columns.get("IMG_ID", "IMG_ID"),
        columns.get("LAT", "LAT"),
        columns.get("LON", "LON"),
    )
    if len(set(names)) < 3:
        roles = dict(zip(METADATA_COLUMNS, names, strict=True))
        raise MetadataError(f"{path}: one file column serves two of IMG_ID, LAT, LON: {roles}")
    return names


def _coords(col: pa.ChunkedArray) -> tuple[FloatArray, BoolArray, BoolArray]:
    """``(values, missing, non_numeric)`` of a coordinate column read as float64 or as strings."""
    if pa.types.is_floating(col.type):
        vals = np.asarray(col.to_numpy(), dtype=np.float64)
        missing = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        return vals, missing, np.zeros(vals.size, dtype=bool)
    text = pc.utf8_trim_whitespace(col)
    missing = np.asarray(
        pc.or_(pc.is_null(text), pc.is_in(text, value_set=pa.array(_NA_STRINGS)))
        .fill_null(True)
        .to_numpy(zero_copy_only=False),
        dtype=bool,
    )
    num = pd.to_numeric(pd.Series(text.to_numpy(zero_copy_only=False), dtype=object), errors="coerce")
    vals = num.to_numpy(dtype=np.float64, na_value=np.nan)
    return vals, missing, np.isnan(vals) & ~missing


def _read_table(path: Path, names: tuple[str, str, str] = METADATA_COLUMNS) -> pa.Table:
    """The metadata columns of a CSV as IMG_ID, LAT, LON, its header checked first (:func:`_read_header`).

    ``names``: the file's columns for IMG_ID, LAT and LON (:func:`metadata_names`).

    Raises:
        MetadataError: Naming the file: a missing column, an unparsable or non-UTF-8 file, no rows.

    """
    header = _read_header(path)
    for role, col in zip(METADATA_COLUMNS, names, strict=True):
        if col not in header:
            mapped = "" if col == role else f" (mapped to {role})"
            raise MetadataError(f"{path}: missing column {col!r}{mapped} (columns: {header})")
    try:
        try:
            table = _read_columns(path, numeric=True, names=names)
        except pa.ArrowInvalid as exc:
            if "conversion error" not in str(exc).lower():
                raise
            table = _read_columns(path, numeric=False, names=names)
    except (pa.ArrowInvalid, pa.ArrowKeyError, UnicodeDecodeError) as exc:
        if "utf8" in str(exc).lower().replace("-", ""):
            where = _undecodable_line(path)
            raise MetadataError(f"{path}: not UTF-8 text at {where}: save it as UTF-8") from exc
        raise MetadataError(f"{path}: cannot parse the CSV: {exc}") from exc
    if table.num_rows == 0:
        raise MetadataError(f"{path}: no data rows")
    return table


def _id_codes(
    ids: pa.ChunkedArray, available_ids: Iterable[str] | pa.Array | pa.ChunkedArray | None
) -> tuple[npt.NDArray[np.int64], BoolArray | None]:
    """One hash pass over the ids -> ``(codes, no image)``.

    The codes are the ids' positions in the available ids (-1: no image), or their dictionary codes when
    ``available_ids`` is ``None`` (then "no image" is ``None``); duplicates are then found among integers.
    """
    if available_ids is not None:
        if isinstance(available_ids, pa.ChunkedArray):
            value_set = available_ids.combine_chunks()
        elif isinstance(available_ids, pa.Array):
            value_set = available_ids
        else:
            value_set = pa.array(list(available_ids), pa.string())
        pos = pc.index_in(ids, value_set=value_set).combine_chunks()
        no_image = ~np.asarray(pos.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        codes = np.asarray(pos.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
        return codes, no_image
    codes = np.asarray(pc.dictionary_encode(ids).combine_chunks().indices.to_numpy(), dtype=np.int64)
    return codes, None


def _bad_reasons(
    table: pa.Table, available_ids: Iterable[str] | pa.Array | pa.ChunkedArray | None
) -> tuple[pa.ChunkedArray, npt.NDArray[np.int8], FloatArray, FloatArray]:
    """``(trimmed ids, reason per row (index into BAD_REASONS, -1 good), lat, lon)``, checked in order."""
    n = table.num_rows
    ids = pc.utf8_trim_whitespace(table.column("IMG_ID"))
    reason = np.full(n, -1, dtype=np.int8)

    def mark(mask: npt.ArrayLike, name: str) -> None:
        m = np.asarray(mask, dtype=bool) & (reason < 0)
        reason[m] = BAD_REASONS.index(name)

    mark(pc.equal(ids, "").to_numpy(zero_copy_only=False), "missing_id")
    lat, lat_missing, lat_bad = _coords(table.column("LAT"))
    lon, lon_missing, lon_bad = _coords(table.column("LON"))
    mark(lat_missing | lon_missing, "missing_coordinates")
    mark(lat_bad | lon_bad | np.isinf(lat) | np.isinf(lon), "non_numeric_coordinates")
    with np.errstate(invalid="ignore"):
        mark(~((lat >= -90.0) & (lat <= 90.0)), "lat_out_of_range")
        mark(~((lon >= -180.0) & (lon <= 180.0)), "lon_out_of_range")
    codes, no_image = _id_codes(ids, available_ids)
    if no_image is not None:
        mark(no_image, "no_image")
    good = np.flatnonzero(reason < 0)
    _, first = np.unique(codes[good], return_index=True)
    dup = np.zeros(n, dtype=bool)
    dup[good] = True
    dup[good[first]] = False
    mark(dup, "duplicate_id")
    return ids, reason, lat, lon


def _count_bad(path: Path, reason: npt.NDArray[np.int8]) -> BadRows:
    """The :class:`BadRows` report of the per-row reasons (-1 = good)."""
    bad = BadRows(file=str(path), n_rows=int(reason.size))
    reasons, cnts = np.unique(reason[reason >= 0], return_counts=True)
    for code, cnt in zip(reasons.tolist(), cnts.tolist(), strict=True):
        bad.counts[BAD_REASONS[code]] = int(cnt)
    first_bad = np.flatnonzero(reason >= 0)[:N_BAD_EXAMPLES]
    bad.examples = [(int(i) + 2, BAD_REASONS[reason[i]]) for i in first_bad]
    return bad


def read_metadata(
    csv: str | Path,
    available_ids: Iterable[str] | pa.Array | pa.ChunkedArray | None = None,
    max_bad_fraction: float | None = None,
    columns: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, BadRows]:
    """Read and clean an ``IMG_ID, LAT, LON`` metadata CSV (other columns are ignored).

    Rows are dropped (and counted in :class:`BadRows`) for, in this order: an empty id, a missing or
    non-numeric coordinate, a latitude outside [-90, 90], a longitude outside [-180, 180], an id with no
    image in ``available_ids``, and an id already seen in an earlier good row (the first is kept). The file
    is parsed by Arrow's multithreaded CSV reader (coordinates straight to float64; only a file with a
    non-numeric coordinate is re-read as text); the ids go through one hash pass (Arrow ``index_in`` against
    the available ids, or ``dictionary_encode``), duplicates are then found among integer codes.

    Args:
        csv: The metadata file.
        available_ids: Ids of the images that exist (:func:`geoens.data.shards.available_ids`, or any iterable
            of str); ``None`` skips that check.
        max_bad_fraction: Fail when more than this share of rows is bad; ``None`` never fails.
        columns: The file's names for any of ``IMG_ID``, ``LAT``, ``LON`` (e.g. ``{"LAT": "latitude"}``);
            the others keep their names.

    Returns:
        ``(frame, bad)``: the kept rows as columns ``image_id`` (str), ``lat``, ``lon`` (float64) in file
        order with a fresh index, and the bad-row report.

    Raises:
        MetadataError: Naming the file: a missing column, an unparsable file, no rows, or too many bad rows
            (naming the first bad lines).

    """
    path = Path(csv)
    table = _read_table(path, metadata_names(path, columns))
    n = table.num_rows
    ids, reason, lat, lon = _bad_reasons(table, available_ids)
    bad = _count_bad(path, reason)
    if max_bad_fraction is not None and bad.fraction > max_bad_fraction:
        raise MetadataError(
            f"{path}: {bad.n_bad} of {n} rows are bad ({bad.fraction:.2%} > labels.max_bad_fraction = "
            f"{max_bad_fraction:.2%}): {bad.describe()}"
        )
    keep = reason < 0
    kept = pa.table(
        {
            "image_id": ids.filter(pa.array(keep)),
            "lat": pa.array(lat[keep], pa.float64()),
            "lon": pa.array(lon[keep], pa.float64()),
        }
    )
    frame = kept.to_pandas()
    if bad.n_bad:
        log.warning("%s: dropped %d of %d rows: %s", path, bad.n_bad, n, bad.describe())
    return frame, bad
