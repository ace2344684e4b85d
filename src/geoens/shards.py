"""MP-16's msgpack shards: streams of ``{"id": str, "image": bytes}`` maps, written and read here only."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgpack

from geoens.io import atomic_path


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
        ValueError: Naming the shard, on a record that is not a map with ``id`` and ``image``.

    """
    p = Path(path)
    files = sorted(p.glob("*.msgpack")) if p.is_dir() else [p]
    for f in files:
        with open(f, "rb") as fh:
            unpacker = msgpack.Unpacker(fh, raw=False, max_buffer_size=1 << 30)
            for i, rec in enumerate(unpacker):
                if not isinstance(rec, dict) or "id" not in rec or "image" not in rec:
                    raise ValueError(f"{f}: record {i} is not a map with 'id' and 'image'")
                yield str(rec["id"]), bytes(rec["image"])
