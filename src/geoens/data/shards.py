"""msgpack shards (streams of ``{"id": str, "image": JPEG bytes}`` records): the one module that parses them.

* :func:`list_shards` lists the shard files of a folder (:data:`SHARD_PATTERNS`); a folder or record that
  breaks the format raises :class:`ShardFormatError`;
* :func:`shard_ids` / :func:`available_ids` list the image ids present (streaming; shards read in parallel
  processes), :func:`folder_ids` those of an image folder;
* :func:`scan_records` gives the id, byte offset and byte length of every record of a shard (for
  :class:`geoens.models.datasets.ShardIndex`), :func:`record_image` the image bytes of one record read back by
  offset;
* :func:`write_shards` / :func:`read_shards` write and stream ``(id, image)`` records (the demo world).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa

from geoens.core.io import atomic_path

#: File patterns of msgpack shards (``{"id", "image"}`` records) in a shards folder.
SHARD_PATTERNS: tuple[str, ...] = ("*.msgpack", "*.msg")


class ShardFormatError(ValueError):
    """A shards folder or shard record that does not follow the ``{"id", "image"}`` msgpack format."""


def list_shards(shards_dir: str | Path) -> list[Path]:
    """The shard files of a folder, sorted by name.

    Raises:
        FileNotFoundError: If the folder does not exist.
        ShardFormatError: If it holds no shard file.

    """
    root = Path(shards_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"shards folder not found: {root}")
    paths = sorted({p for pat in SHARD_PATTERNS for p in root.glob(pat)})
    if not paths:
        raise ShardFormatError(f"no *.msgpack shard in {root}")
    return paths


def _shard_id_array(path: Path) -> pa.Array:
    """Ids of one shard as an Arrow string array (one streaming pass, :func:`scan_records`)."""
    return pa.array(scan_records(path, offsets=False)[0], pa.string())


def shard_ids(shards_dir: str | Path, processes: int = 1) -> pa.Array:
    """Ids of every record in the msgpack shards of a folder (shard order), streaming.

    Args:
        shards_dir: The folder.
        processes: Shards read in parallel by this many processes.

    Raises:
        ValueError: Naming the shard and record index of a record that is not a map with an ``id``.

    """
    paths = list_shards(shards_dir)
    if processes > 1 and len(paths) > 1:
        with ProcessPoolExecutor(max_workers=min(processes, len(paths))) as pool:
            arrays = list(pool.map(_shard_id_array, paths))
    else:
        arrays = [_shard_id_array(p) for p in paths]
    return pa.concat_arrays(arrays)


def folder_ids(folder: str | Path) -> list[str]:
    """Image ids of an image folder: file paths relative to it (POSIX separators), hidden files skipped.

    Raises:
        FileNotFoundError: If the folder does not exist.

    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            if not name.startswith("."):
                out.append((rel / name).as_posix())
    return out


def available_ids(path: str | Path, processes: int = 1) -> pa.Array:
    """Ids of the images present (Arrow strings): msgpack shards if the folder holds some, else the files."""
    root = Path(path)
    has_shards = root.is_dir() and any(next(root.glob(p), None) is not None for p in SHARD_PATTERNS)
    return shard_ids(root, processes) if has_shards else pa.array(folder_ids(root), pa.string())


def _record_id(record: Any, shard: Path, index: int, offset: int) -> str:
    """The id of one unpacked record (a text or bytes ``id`` key; bytes ids decoded as UTF-8).

    Raises:
        ShardFormatError: Naming the shard, the record's index and byte offset, if it is not a map with an id.

    """
    where = f"{shard}: record {index} (byte {offset})"
    if not isinstance(record, dict):
        raise ShardFormatError(f"{where} is {type(record).__name__}, not a map with an 'id'")
    rid = record.get("id", record.get(b"id"))
    if rid is None:
        raise ShardFormatError(f"{where} is not a map with an 'id' (keys {list(record)[:5]})")
    return rid.decode() if isinstance(rid, bytes) else str(rid)


def scan_records(path: Path, offsets: bool = True) -> tuple[list[str], list[int], list[int]]:
    """(ids, offsets, lengths) of every record of one shard, in file order (one streaming pass).

    Args:
        path: The shard.
        offsets: Also collect each record's byte offset and length (the shard index needs them; listing the
            ids does not, and the two lists are then empty).

    Raises:
        ShardFormatError: On a record that is not a map with an id (naming shard, record and byte offset),
            on bytes that do not unpack, or on a truncated shard.

    """
    ids: list[str] = []
    starts: list[int] = []
    lengths: list[int] = []
    start = 0
    with open(path, "rb") as fh:
        unpacker = msgpack.Unpacker(fh, raw=False, max_buffer_size=1 << 30)
        try:
            for record in unpacker:  # stops silently at a record cut short: checked below
                end = unpacker.tell()
                rid = record.get("id") if type(record) is dict else None
                if type(rid) is not str:  # bytes or other ids, and every error: the one slow path
                    rid = _record_id(record, path, len(ids), start)
                ids.append(rid)
                if offsets:
                    starts.append(start)
                    lengths.append(end - start)
                start = end
        except ShardFormatError:
            raise
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise ShardFormatError(f"{path} at byte {start}: cannot unpack ({exc})") from exc
    size = path.stat().st_size
    if start != size:
        raise ShardFormatError(
            f"{path}: truncated record {len(ids)} at byte {start} (file has {size} bytes; "
            f"{len(ids)} complete records before it)"
        )
    return ids, starts, lengths


def record_image(data: bytes) -> bytes | None:
    """The image bytes of one packed record; None if it does not unpack or is not a map with an image."""
    try:
        record = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        return None
    if not isinstance(record, dict):
        return None
    image = record.get("image", record.get(b"image"))
    return bytes(image) if isinstance(image, bytes | bytearray) else None


def write_shards(folder: str | Path, records: Iterable[tuple[str, bytes]], n_shards: int) -> None:
    """Write ``(id, jpeg)`` records round-robin into ``shard-NNN.msgpack`` files (MP-16's layout), streaming.

    Each shard is a stream of msgpack maps ``{"id": str, "image": bytes}``, one after another; record ``i``
    goes to shard ``i mod n_shards``.
    """
    packer = msgpack.Packer(use_bin_type=True)
    with atomic_path(folder, is_dir=True) as tmp, contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(tmp / f"shard-{k:03d}.msgpack", "wb")) for k in range(n_shards)]
        for i, (img_id, data) in enumerate(records):
            files[i % n_shards].write(packer.pack({"id": img_id, "image": data}))


def read_shards(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """Yield ``(id, jpeg bytes)`` from one msgpack shard or from every ``*.msgpack`` in a folder (sorted).

    Raises:
        ShardFormatError: Naming the shard and record, on a record that is not a map with ``id`` and
            ``image``.

    """
    p = Path(path)
    files = sorted(p.glob("*.msgpack")) if p.is_dir() else [p]
    for f in files:
        with open(f, "rb") as fh:
            unpacker = msgpack.Unpacker(fh, raw=False, max_buffer_size=1 << 30)
            offset = 0
            for i, rec in enumerate(unpacker):
                rid = _record_id(rec, f, i, offset)
                if "image" not in rec:
                    raise ShardFormatError(f"{f}: record {i} (byte {offset}) has no 'image'")
                yield rid, bytes(rec["image"])
                offset = unpacker.tell()
