"""Datasets over msgpack shards and image folders: index, random access, skipping bad images, transforms."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import msgpack
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fakes import image_records, noise_jpeg, write_msgpack_shards
from geoens.data.labeltable import LabelTableError, read_label_table
from geoens.data.shards import ShardFormatError
from geoens.models.datasets import (
    AugmentConfig,
    FolderSource,
    ImageDataset,
    ShardIndex,
    ShardSource,
    collate_skip,
    decode_image,
    make_transforms,
)


def write_shards(
    root: Path, n_shards: int = 3, per_shard: int = 5, bad: set[str] | None = None
) -> dict[str, bytes]:
    """Shards of ``{"id", "image"}``; ids in ``bad`` get undecodable bytes. Returns id -> bytes."""
    records: dict[str, bytes] = {}
    for k in range(n_shards * per_shard):
        image_id = f"{k // 10:02d}/img_{k:04d}.jpg"
        records[image_id] = (
            b"\xff\xd8\xff\xe0 this is not a jpeg" if bad and image_id in bad else noise_jpeg(k)
        )
    items = image_records(records)
    write_msgpack_shards(root, [items[s * per_shard : (s + 1) * per_shard] for s in range(n_shards)])
    return records


def test_index_random_access_matches_records(tmp_path: Path) -> None:
    records = write_shards(tmp_path / "shards")
    index = ShardIndex.build(tmp_path / "shards")
    assert len(index) == len(records)
    assert list(index.ids) == list(records)
    assert index.shard.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    source = ShardSource(tmp_path / "shards", index)
    # random order, repeated reads
    for image_id in reversed(list(records)):
        assert source.read(image_id) == records[image_id]
    assert source.read("not-there") is None
    # saved and loaded index gives the same locations
    index.save(tmp_path / "index.parquet")
    loaded = ShardIndex.load(tmp_path / "index.parquet", tmp_path / "shards")
    for image_id in records:
        assert loaded.locate(image_id) == index.locate(image_id)


def test_index_file_format_is_stable(tmp_path: Path) -> None:
    """An index as earlier versions wrote it (plain Parquet, shard names under ``geoens.shards``) loads."""
    records = write_shards(tmp_path / "shards", n_shards=2)
    built = ShardIndex.build(tmp_path / "shards")
    table = pa.table(
        {
            "id": pa.array(built.ids.tolist(), pa.string()),
            "shard": pa.array(built.shard, pa.int32()),
            "offset": pa.array(built.offset, pa.int64()),
            "length": pa.array(built.length, pa.int64()),
        }
    ).replace_schema_metadata({b"geoens.shards": b"shard-000.msgpack\nshard-001.msgpack"})
    pq.write_table(table, tmp_path / "old.parquet")
    loaded = ShardIndex.load(tmp_path / "old.parquet", tmp_path / "shards")
    assert [loaded.locate(i) for i in records] == [built.locate(i) for i in records]
    built.save(tmp_path / "new.parquet")
    assert (
        pq.read_schema(tmp_path / "new.parquet").metadata[b"geoens.shards"]
        == b"shard-000.msgpack\nshard-001.msgpack"
    )


def test_index_load_detects_other_shards(tmp_path: Path) -> None:
    write_shards(tmp_path / "a", n_shards=2)
    write_shards(tmp_path / "b", n_shards=3)
    ShardIndex.build(tmp_path / "a").save(tmp_path / "index.parquet")
    with pytest.raises(ShardFormatError, match="indexes shards"):
        ShardIndex.load(tmp_path / "index.parquet", tmp_path / "b")


def test_truncated_shard_and_bad_record_are_clear_errors(tmp_path: Path) -> None:
    write_shards(tmp_path / "s", n_shards=1)
    path = tmp_path / "s" / "shard-000.msgpack"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ShardFormatError, match=r"shard-000\.msgpack.*truncated"):
        ShardIndex.build(tmp_path / "s")
    path.write_bytes(msgpack.packb([1, 2, 3]))
    with pytest.raises(ShardFormatError, match="not a map"):
        ShardIndex.build(tmp_path / "s")
    with pytest.raises(ShardFormatError, match="no \\*.msgpack"):
        ShardIndex.build(tmp_path)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_and_missing_images_are_skipped_and_counted(tmp_path: Path, num_workers: int) -> None:
    bad = {"00/img_0003.jpg", "01/img_0011.jpg"}
    records = write_shards(tmp_path / "shards", bad=bad)
    source = ShardSource(tmp_path / "shards")
    ids = [*records, "missing.jpg"]
    targets = np.arange(len(ids))
    ds = ImageDataset(source, ids, targets, make_transforms(16, train=False))
    loader = DataLoader(ds, batch_size=4, num_workers=num_workers, collate_fn=collate_skip)
    kept, skipped = [], []
    for batch in loader:
        assert batch.images.shape[1:] == (3, 16, 16) or len(batch) == 0
        assert torch.equal(batch.targets, batch.indices)  # targets follow their images
        kept += batch.indices.tolist()
        skipped += batch.skipped
    assert sorted(ds.ids[i] for i in skipped) == sorted([*bad, "missing.jpg"])
    assert len(kept) + len(skipped) == len(ids)


def test_all_bad_batch_collates_to_empty() -> None:
    batch = collate_skip([(None, torch.tensor(1), 0), (None, torch.tensor(2), 1)])
    assert len(batch) == 0 and batch.skipped == [0, 1]


def test_folder_source(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.jpg").write_bytes(noise_jpeg(1))
    (tmp_path / "sub" / "b.jpg").write_bytes(noise_jpeg(2))
    (tmp_path / "c.jpg").write_bytes(noise_jpeg(3)[:50])  # truncated
    src = FolderSource(tmp_path)
    assert decode_image(src.read("a.jpg")) is not None
    assert decode_image(src.read("sub/b.jpg")) is not None
    assert decode_image(src.read("c.jpg")) is None
    assert src.read("nope.jpg") is None
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        FolderSource(tmp_path / "nowhere")


def test_transforms_shapes_and_seeded_augmentation(tmp_path: Path) -> None:
    records = write_shards(tmp_path / "shards", n_shards=1)
    source = ShardSource(tmp_path / "shards")
    ids = list(records)
    ds = ImageDataset(source, ids, None, make_transforms(24, train=True), seed=7)
    a = ds[2][0]
    torch.manual_seed(123)  # the global RNG must not matter
    b = ds[2][0]
    assert a is not None and b is not None and a.shape == (3, 24, 24)
    assert torch.equal(a, b)
    ds.set_epoch(1)
    c = ds[2][0]
    assert c is not None and not torch.equal(a, c)
    ev = make_transforms(20, train=False)(Image.new("RGB", (50, 30), (255, 0, 0)))
    assert ev.shape == (3, 20, 20)
    # red channel of a pure red image after ImageNet normalisation
    assert ev[0].mean().item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-4)


def _bright_quadrants(aug: AugmentConfig, trials: int = 40) -> tuple[set[tuple[int, int]], set[float]]:
    """Where the bright top-left quadrant of a test image ends up, and its mean value, over seeded draws."""
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[:16, :16] = 200
    img = Image.fromarray(arr)
    tf = make_transforms(32, train=True, augment=aug)
    where, level = set(), set()
    for k in range(trials):
        torch.manual_seed(k)
        x = tf(img)[0]
        q = x.reshape(2, 16, 2, 16).mean(dim=(1, 3))
        r, c = divmod(int(q.argmax()), 2)
        where.add((r, c))
        level.add(round(float(q.max()), 4))
    return where, level


def test_augment_config_switches_each_augmentation() -> None:
    fixed = AugmentConfig(crop_scale_min=1.0, hflip=False, vflip=False, color_jitter=0.0)
    where, level = _bright_quadrants(fixed)
    assert where == {(0, 0)} and len(level) == 1  # nothing moves, nothing changes brightness
    where, _ = _bright_quadrants(dataclasses.replace(fixed, hflip=True))
    assert where == {(0, 0), (0, 1)}
    where, _ = _bright_quadrants(dataclasses.replace(fixed, vflip=True))
    assert where == {(0, 0), (1, 0)}
    _, level = _bright_quadrants(dataclasses.replace(fixed, color_jitter=0.4))
    assert len(level) > 10
    default = make_transforms(32, train=True)
    assert default(Image.fromarray(np.zeros((40, 40, 3), np.uint8))).shape == (3, 32, 32)
    assert AugmentConfig.from_mapping(None) == AugmentConfig()
    with pytest.raises(ValueError, match="color_jitter must be >= 0"):
        AugmentConfig(color_jitter=-0.1)
    with pytest.raises(ValueError, match="unknown augment key"):
        AugmentConfig.from_mapping({"rotate": 10})


def test_read_label_table(tmp_path: Path) -> None:
    folder = tmp_path / "labels"
    folder.mkdir()
    pd.DataFrame({"image_id": ["b", "c"], "ls_bucket": [1, 2]}).to_parquet(folder / "part-00001.parquet")
    pd.DataFrame({"image_id": ["a"], "ls_bucket": [0]}).to_parquet(folder / "part-00000.parquet")
    df = read_label_table(folder, ["image_id", "ls_bucket"])
    assert df["image_id"].tolist() == ["a", "b", "c"]
    with pytest.raises(LabelTableError, match=r"part-00000\.parquet.*lc7"):
        read_label_table(folder, ["image_id", "lc7"])
    with pytest.raises(FileNotFoundError, match="no part-"):
        read_label_table(tmp_path)
