"""Image datasets for training and prediction: msgpack shards (MP-16 layout) and image folders.

Shards are streams of msgpack maps ``{"id": str, "image": JPEG bytes}``. :class:`ShardIndex` maps every id to
``(shard, byte offset, byte length)`` in one streaming pass (:func:`geoens.data.shards.scan_records`);
afterwards a record is read by one ``seek`` + ``read``. File handles are opened lazily in each process, so a
:class:`ShardSource` can be handed to DataLoader worker processes (fork or spawn).

Images that are missing or do not decode are *skipped and counted*, never fatal: :class:`ImageDataset` returns
``(None, target, index)`` for them and :func:`collate_skip` drops them, reporting the skipped indices in the
:class:`Batch`.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from geoens.core.io import atomic_path
from geoens.core.logs import setup_logging
from geoens.data.shards import ShardFormatError, list_shards, record_image, scan_records

log = logging.getLogger(__name__)

#: The shard index's Parquet metadata key listing its shard files. A key of the file format, not a module
#: path: indexes written by earlier versions carry it, so it never follows the package layout.
SHARD_INDEX_META_KEY = b"geoens.shards"

#: ImageNet normalisation (timm's default); BiT models use 0.5/0.5 (passed through ``make_transforms``).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass
class ShardIndex:
    """Where each image id sits in a folder of msgpack shards.

    Attributes:
        shards: Shard file names (relative to ``root``), sorted.
        ids: Image ids, in shard then file order.
        shard: Shard number of each id (index into ``shards``).
        offset: Byte offset of each record.
        length: Byte length of each record.
        root: The shards folder.

    """

    shards: list[str]
    ids: np.ndarray
    shard: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    root: Path
    _pos: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self._pos:
            self._pos = {str(i): k for k, i in enumerate(self.ids)}
        if len(self._pos) != len(self.ids):
            log.warning(
                "shard index: %d duplicate ids (the last record wins)", len(self.ids) - len(self._pos)
            )

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._pos

    def locate(self, image_id: str) -> tuple[int, int, int] | None:
        """``(shard, offset, length)`` of an id, or ``None`` if it is not in the shards."""
        k = self._pos.get(image_id)
        if k is None:
            return None
        return int(self.shard[k]), int(self.offset[k]), int(self.length[k])

    @classmethod
    def build(cls, shards_dir: str | Path, show_progress: bool = False) -> ShardIndex:
        """Index a shards folder by one streaming pass over every shard.

        Args:
            shards_dir: Folder of ``*.msgpack`` shards.
            show_progress: Show a tqdm bar over shards.

        Raises:
            ShardFormatError: On a record that is not a map with an ``id`` (naming shard and byte offset),
                or on a truncated shard.

        """
        paths = list_shards(shards_dir)
        ids: list[str] = []
        shard_no: list[int] = []
        offsets: list[int] = []
        lengths: list[int] = []
        iterator: Any = enumerate(paths)
        if show_progress:
            iterator = tqdm(iterator, total=len(paths), desc="index shards", mininterval=10)
        for s, path in iterator:
            rec_ids, rec_offsets, rec_lengths = scan_records(path)
            ids.extend(rec_ids)
            shard_no.extend([s] * len(rec_ids))
            offsets.extend(rec_offsets)
            lengths.extend(rec_lengths)
        return cls(
            shards=[p.name for p in paths],
            ids=np.asarray(ids, dtype=object),
            shard=np.asarray(shard_no, dtype=np.int32),
            offset=np.asarray(offsets, dtype=np.int64),
            length=np.asarray(lengths, dtype=np.int64),
            root=Path(shards_dir),
        )

    def save(self, path: str | Path) -> None:
        """Write the index as Parquet (``id, shard, offset, length``; shard names in the metadata)."""
        table = pa.table(
            {
                "id": pa.array(self.ids.tolist(), pa.string()),
                "shard": pa.array(self.shard, pa.int32()),
                "offset": pa.array(self.offset, pa.int64()),
                "length": pa.array(self.length, pa.int64()),
            }
        )
        meta = {SHARD_INDEX_META_KEY: "\n".join(self.shards).encode()}
        pq.write_table(table.replace_schema_metadata(meta), str(path))

    @classmethod
    def load(cls, path: str | Path, shards_dir: str | Path) -> ShardIndex:
        """Read an index written by :meth:`save` for the shards in ``shards_dir``.

        Raises:
            ShardFormatError: If the shard files listed in the index differ from the folder's.

        """
        table = pq.read_table(str(path))
        raw = (table.schema.metadata or {}).get(SHARD_INDEX_META_KEY, b"").decode()
        shards = raw.split("\n") if raw else []
        actual = [p.name for p in list_shards(shards_dir)]
        if shards != actual:
            raise ShardFormatError(
                f"{path}: indexes shards {shards[:3]}..., folder {shards_dir} holds {actual[:3]}..."
            )
        return cls(
            shards=shards,
            ids=np.asarray(table.column("id").to_pylist(), dtype=object),
            shard=table.column("shard").to_numpy(),
            offset=table.column("offset").to_numpy(),
            length=table.column("length").to_numpy(),
            root=Path(shards_dir),
        )


class ImageSource(Protocol):
    """Anything that returns an image's encoded bytes by id (``None`` when missing)."""

    def read(self, image_id: str) -> bytes | None:
        """Return the encoded bytes of the image, or ``None`` if the source does not hold it."""
        ...


class FolderSource:
    """Images stored as files ``<folder>/<image_id>`` (test sets; ids may contain sub-folders)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.folder}")

    def read(self, image_id: str) -> bytes | None:
        """Bytes of ``<folder>/<image_id>``, ``None`` if the file is missing or unreadable."""
        try:
            return (self.folder / image_id).read_bytes()
        except OSError:
            return None

    def __repr__(self) -> str:
        return f"FolderSource({str(self.folder)!r})"


class ShardSource:
    """Random access to the images of a msgpack shards folder, through a :class:`ShardIndex`.

    File handles are opened lazily and per process (re-opened after a fork), and dropped when pickled.
    """

    def __init__(self, shards_dir: str | Path, index: ShardIndex | None = None) -> None:
        self.root = Path(shards_dir)
        self.index = index if index is not None else ShardIndex.build(self.root)
        self._handles: dict[int, IO[bytes]] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def _handle(self, shard: int) -> IO[bytes]:
        if self._pid != os.getpid():  # forked: never share a file position with the parent
            self._handles = {}
            self._pid = os.getpid()
        fh = self._handles.get(shard)
        if fh is None:
            fh = open(self.root / self.index.shards[shard], "rb")  # noqa: SIM115 (kept open on purpose)
            self._handles[shard] = fh
        return fh

    def read(self, image_id: str) -> bytes | None:
        """Image bytes of ``image_id``; ``None`` if the id is not in the shards or the record is bad."""
        loc = self.index.locate(image_id)
        if loc is None:
            return None
        shard, offset, length = loc
        try:
            fh = self._handle(shard)
            fh.seek(offset)
            data = fh.read(length)
        except (OSError, ValueError):
            return None
        return record_image(data)

    def close(self) -> None:
        """Close the open shard files of this process."""
        for fh in self._handles.values():
            fh.close()
        self._handles = {}

    def __repr__(self) -> str:
        return f"ShardSource({str(self.root)!r}, {len(self.index)} images)"


def decode_image(data: bytes | None) -> Image.Image | None:
    """Decode image bytes into an RGB PIL image; ``None`` if missing or undecodable (truncated, not JPEG)."""
    if data is None:
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except Exception:  # noqa: BLE001 - PIL raises many types for bad data; any of them means "skip"
        return None


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation of one predictor (``train.models.<name>.augment`` in the config).

    The defaults are the paper's recipe for the attribute classifiers (section 5.1: random crop and rescale,
    horizontal and vertical flips, colour jitter). A geolocation model may want less: colour and
    orientation can be location cues (GeoEstimation trained with crops and horizontal flips only).

    Attributes:
        crop_scale_min: Smallest share of the image area a random resized crop keeps (1.0: no cropping).
        hflip: Random horizontal flips.
        vflip: Random vertical flips.
        color_jitter: Strength of brightness, contrast and saturation jitter (0: none).

    """

    crop_scale_min: float = 0.35
    hflip: bool = True
    vflip: bool = True
    color_jitter: float = 0.3

    def __post_init__(self) -> None:
        """Check the ranges (the config schema checks them too; this guards direct use)."""
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ValueError(f"augment.crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        if self.color_jitter < 0.0:
            raise ValueError(f"augment.color_jitter must be >= 0, got {self.color_jitter}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> AugmentConfig:
        """Build from the config's ``augment`` mapping (``None``: defaults).

        Raises:
            ValueError: On a key that is not an augmentation setting (naming it).

        """
        data = dict(cfg or {})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown augment key(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)


def make_transforms(
    image_size: int,
    train: bool,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    augment: AugmentConfig | None = None,
) -> v2.Compose:
    """Build torchvision v2 transforms: PIL image -> normalised float tensor ``(3, image_size, image_size)``.

    Training: the augmentations of ``augment`` (default :class:`AugmentConfig`, the paper's recipe), always
    ending at ``image_size`` squared. Evaluation: resize the shorter side to ``image_size``, then centre crop.
    """
    head: list[Any]
    if train:
        aug = augment if augment is not None else AugmentConfig()
        head = [v2.RandomResizedCrop(image_size, scale=(aug.crop_scale_min, 1.0), antialias=True)]
        if aug.hflip:
            head.append(v2.RandomHorizontalFlip())
        if aug.vflip:
            head.append(v2.RandomVerticalFlip())
        if aug.color_jitter > 0:
            # No hue jitter: hue carries regional style (a location cue), and it is the costliest jitter.
            j = aug.color_jitter
            head.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    else:
        head = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(
        [
            v2.ToImage(),
            *head,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


class ImageDataset(Dataset[tuple[torch.Tensor | None, torch.Tensor, int]]):
    """Images of ``ids`` from ``source`` with their integer ``targets``.

    Items are ``(image tensor or None, target tensor, index)``; ``None`` marks a missing/undecodable image
    (dropped and counted by :func:`collate_skip`).

    Args:
        source: Where the image bytes come from (:class:`ShardSource`, :class:`FolderSource`).
        ids: Image ids.
        targets: ``(n,)`` or ``(n, k)`` integer labels, or ``None`` (prediction: targets are ``-1``).
        transform: PIL -> tensor transform (:func:`make_transforms`).
        seed: If given, each item's random augmentation is seeded by ``(seed, epoch, index)``, so it does not
            depend on the worker count or the order items are drawn in.

    """

    def __init__(
        self,
        source: ImageSource,
        ids: Sequence[str],
        targets: np.ndarray | None,
        transform: Any,
        seed: int | None = None,
    ) -> None:
        self.source = source
        self.ids = [str(i) for i in ids]
        if targets is None:
            targets = np.full(len(self.ids), -1, dtype=np.int64)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.int64))
        if len(self.targets) != len(self.ids):
            raise ValueError(f"ImageDataset: {len(self.ids)} ids but {len(self.targets)} targets")
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the augmentation draws of ``epoch`` (call before creating the epoch's DataLoader iterator)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, torch.Tensor, int]:
        image = decode_image(self.source.read(self.ids[index]))
        target = self.targets[index]
        if image is None:
            return None, target, index
        if self.seed is None:
            return self.transform(image), target, index
        item_seed = zlib.crc32(f"{self.seed}:{self.epoch}:{index}".encode())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            tensor = self.transform(image)
        return tensor, target, index


@dataclass
class Batch:
    """A collated batch without the skipped images.

    Attributes:
        images: ``(b, 3, h, w)`` float tensor (``b`` may be 0).
        targets: ``(b,)`` or ``(b, k)`` long tensor.
        indices: Dataset indices of the kept images.
        skipped: Dataset indices of the images that were missing or did not decode.

    """

    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    skipped: list[int]

    def __len__(self) -> int:
        return int(self.indices.numel())

    def pin_memory(self) -> Batch:
        """Pinned copy (DataLoader ``pin_memory=True``)."""
        return Batch(self.images.pin_memory(), self.targets.pin_memory(), self.indices, self.skipped)


def collate_skip(items: Sequence[tuple[torch.Tensor | None, torch.Tensor, int]]) -> Batch:
    """Collate dataset items, dropping the ``None`` images and recording their indices."""
    kept = [it for it in items if it[0] is not None]
    skipped = [int(it[2]) for it in items if it[0] is None]
    if not kept:
        target_shape = tuple(items[0][1].shape) if items else ()
        return Batch(
            torch.empty(0, 3, 1, 1),
            torch.empty((0, *target_shape), dtype=torch.long),
            torch.empty(0, dtype=torch.long),
            skipped,
        )
    images = torch.stack([it[0] for it in kept if it[0] is not None])
    targets = torch.stack([it[1] for it in kept])
    indices = torch.tensor([int(it[2]) for it in kept], dtype=torch.long)
    return Batch(images, targets, indices, skipped)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m geoens.models.datasets SHARDS_DIR OUT.parquet``: build and save a :class:`ShardIndex`."""
    parser = argparse.ArgumentParser(
        prog="python -m geoens.models.datasets", description="Index a folder of msgpack shards"
    )
    parser.add_argument("shards_dir")
    parser.add_argument("out")
    parser.add_argument("--log", default=None)
    args = parser.parse_args(argv)
    logger = setup_logging(args.log)
    index = ShardIndex.build(args.shards_dir, show_progress=True)
    with atomic_path(args.out) as tmp:
        index.save(tmp)
    logger.info("indexed %d images in %d shards of %s", len(index), len(index.shards), args.shards_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
