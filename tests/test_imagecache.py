"""Decoded-image cache and batched augmentation (geoens.models.imagecache): same pixels and augmentations."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as tvf

from fakes import colour_jpeg, image_records, jpeg_bytes, round_robin, write_label_parts, write_msgpack_shards
from geoens.models.datasets import AugmentConfig, ShardIndex, ShardSource, decode_image, make_transforms
from geoens.models.imagecache import (
    CachedLoader,
    ImageCacheError,
    SeededOrder,
    augment_batch,
    build_shard_cache,
    color_jitter_batch,
    eval_batch,
    image_cache_enabled,
    load_image_cache,
    sample_params,
)
from geoens.models.predictors import train_model

NO_AUG = AugmentConfig(crop_scale_min=1.0, hflip=False, vflip=False, color_jitter=0.0)


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    """Training with ``threads=1`` sets torch's global thread count: give later tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def textured_jpeg(seed: int, size: tuple[int, int] = (24, 32)) -> bytes:
    """A JPEG with structure in both directions (so crops and flips change it)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (size[0] // 4, size[1] // 4, 3), dtype=np.uint8)
    return jpeg_bytes(Image.fromarray(low).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def write_shards(root: Path, records: dict[str, bytes]) -> ShardIndex:
    write_msgpack_shards(root, round_robin(image_records(records), 2))
    return ShardIndex.build(root)


def cached_world(
    tmp_path: Path, n: int = 12, size: tuple[int, int] = (24, 32)
) -> tuple[Path, Path, list[str]]:
    records = {f"img{k:03d}": textured_jpeg(k, size) for k in range(n)}
    records["img_bad"] = b"not a jpeg"
    shards = tmp_path / "shards"
    index = write_shards(shards, records)
    meta = build_shard_cache(shards, index, tmp_path / "cache")
    assert meta["cached"] and meta["n_invalid"] == 1
    return shards, tmp_path / "cache", list(records)


def test_cache_holds_the_decoded_jpeg_pixels(tmp_path: Path) -> None:
    shards, cache_dir, ids = cached_world(tmp_path)
    cache = load_image_cache(cache_dir)
    assert cache is not None and cache.images.shape == (13, 24, 32, 3) and cache.images.dtype == np.uint8
    source = ShardSource(shards)
    for image_id in ids[:-1]:
        expected = np.asarray(decode_image(source.read(image_id)))
        np.testing.assert_array_equal(cache.images[cache.positions([image_id])[0]], expected)
    # the undecodable record and an id that is not in the shards have no row
    np.testing.assert_array_equal(cache.positions(["img_bad", "nowhere", "img003"]) < 0, [True, True, False])
    # the evaluation transform on the cache equals the per-image one on the JPEGs, resized or not
    for size in (24, 16):
        tf = make_transforms(size, train=False, mean=(0.0,) * 3, std=(1.0,) * 3)
        per_image = torch.stack([tf(decode_image(source.read(i))) for i in ids[:4]])
        batched = eval_batch(torch.from_numpy(cache.images[cache.positions(ids[:4])]), size)
        torch.testing.assert_close(batched, per_image, rtol=0, atol=1e-6)


def test_large_or_mixed_images_are_not_cached(tmp_path: Path) -> None:
    index = write_shards(tmp_path / "big", {"a": textured_jpeg(0, (40, 48)), "b": textured_jpeg(1, (40, 48))})
    meta = build_shard_cache(tmp_path / "big", index, tmp_path / "big_cache", max_side=32)
    assert not meta["cached"] and "larger than 32 px" in meta["reason"]
    assert load_image_cache(tmp_path / "big_cache") is None
    assert sorted(p.name for p in (tmp_path / "big_cache").iterdir()) == ["meta.json"]
    index = write_shards(
        tmp_path / "mixed", {"a": textured_jpeg(0, (24, 32)), "b": textured_jpeg(1, (32, 24))}
    )
    meta = build_shard_cache(tmp_path / "mixed", index, tmp_path / "mixed_cache")
    assert not meta["cached"] and "mixed sizes" in meta["reason"]
    meta = build_shard_cache(tmp_path / "mixed", index, tmp_path / "tiny_budget", max_bytes=1000)
    assert not meta["cached"] and "exceed" in meta["reason"]


def test_bad_cache_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageCacheError, match="no meta.json"):
        load_image_cache(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ImageCacheError, match="format 'other'"):
        load_image_cache(tmp_path)
    _, cache_dir, _ = cached_world(tmp_path / "w")
    (cache_dir / "ids.txt").write_text("img000\n")
    with pytest.raises(ImageCacheError, match="do not match meta.json"):
        load_image_cache(cache_dir)
    assert image_cache_enabled("auto") and not image_cache_enabled("off") and not image_cache_enabled(False)
    with pytest.raises(ValueError, match="train.image_cache must be one of"):
        image_cache_enabled("on")


def test_batched_crop_is_torchvisions_resized_crop(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.integers(0, 256, (16, 30, 40, 3), dtype=np.uint8))
    idx = np.arange(16)
    for out_size, scale_min in ((32, 0.35), (12, 0.2)):  # upsampling crops, and downsampling (antialiased)
        aug = dataclasses.replace(NO_AUG, crop_scale_min=scale_min)
        got = augment_batch(pixels, aug, out_size, seed=3, epoch=1, indices=idx)
        p = sample_params(aug, 30, 40, 3, 1, idx)
        for i in range(16):
            img = pixels[i].permute(2, 0, 1)
            box = (int(p.top[i]), int(p.left[i]), int(p.height[i]), int(p.width[i]))
            ref = tvf.resized_crop(img.float() / 255, *box, [out_size, out_size], antialias=True)
            torch.testing.assert_close(got[i], ref, rtol=0, atol=1e-5)
            # the per-image path works on uint8: equal up to its rounding
            ref8 = tvf.resized_crop(img, *box, [out_size, out_size], antialias=True).float() / 255
            assert float((got[i] - ref8).abs().max()) <= 1.0 / 255 + 1e-6


def test_sampled_augmentation_keeps_the_config_meaning() -> None:
    idx = np.arange(4000)
    h, w = 48, 64
    aug = AugmentConfig(crop_scale_min=0.35, hflip=True, vflip=False, color_jitter=0.3)
    p = sample_params(aug, h, w, seed=0, epoch=0, indices=idx)
    share = p.height * p.width / (h * w)
    ratio = p.width / p.height
    # torchvision rounds the box to whole pixels: allow that much beyond the nominal ranges
    assert share.min() >= 0.35 - 0.03 and share.max() <= 1.0 and share.min() < 0.4 and share.max() > 0.95
    assert ratio.min() >= 0.75 - 0.05 and ratio.max() <= 4 / 3 + 0.05
    assert (p.top >= 0).all() and (p.top + p.height <= h).all() and (p.left + p.width <= w).all()
    assert 0.45 < p.hflip.mean() < 0.55 and not p.vflip.any()
    for f in (p.brightness, p.contrast, p.saturation):
        assert f.min() >= 0.7 and f.max() <= 1.3 and f.std() > 0.15
    assert len({tuple(o) for o in p.order}) == 6  # every order of the three jitters occurs
    # crop_scale_min 1 keeps a square image whole (as torchvision: a box of another aspect ratio cannot fit)
    full = sample_params(NO_AUG, h, h, 0, 0, idx)
    assert (full.height == h).all() and (full.width == h).all() and (full.brightness == 1).all()
    # each image's draws depend on (seed, epoch, index) only, not on the batch it falls in
    again = sample_params(aug, h, w, 0, 0, idx[[17, 5]])
    assert (again.top[0], again.left[0], again.height[0]) == (p.top[17], p.left[17], p.height[17])
    other_epoch = sample_params(aug, h, w, 0, 1, idx)
    assert (other_epoch.top != p.top).mean() > 0.5


def test_batched_flips_and_jitter(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pixels = torch.from_numpy(rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8))
    idx = np.arange(64)
    plain = eval_batch(pixels, 16)
    # everything off: the image itself
    torch.testing.assert_close(augment_batch(pixels, NO_AUG, 16, 0, 0, idx), plain, rtol=0, atol=1e-6)
    for flag, dim in (("hflip", -1), ("vflip", -2)):
        aug = dataclasses.replace(NO_AUG, **{flag: True})
        got = augment_batch(pixels, aug, 16, 0, 0, idx)
        flipped = getattr(sample_params(aug, 16, 16, 0, 0, idx), flag)
        assert 0 < flipped.sum() < 64
        torch.testing.assert_close(got[flipped], plain[flipped].flip(dim), rtol=0, atol=1e-6)
        torch.testing.assert_close(got[~flipped], plain[~flipped], rtol=0, atol=1e-6)
    # jitter: each image gets torchvision's three adjustments with its factors, in its order
    aug = dataclasses.replace(NO_AUG, color_jitter=0.4)
    got = augment_batch(pixels, aug, 16, 0, 0, idx)
    p = sample_params(aug, 16, 16, 0, 0, idx)
    fns = (tvf.adjust_brightness, tvf.adjust_contrast, tvf.adjust_saturation)
    factors = np.stack([p.brightness, p.contrast, p.saturation], axis=1)
    for i in range(64):
        ref = plain[i]
        for op in p.order[i]:
            ref = fns[op](ref, float(factors[i, op]))
        torch.testing.assert_close(got[i], ref, rtol=0, atol=1e-5)
    assert float((got - plain).abs().mean()) > 0.01
    assert color_jitter_batch(plain.clone(), sample_params(NO_AUG, 16, 16, 0, 0, idx)).equal(plain)


def test_cached_loader_batches_like_the_dataloader(tmp_path: Path) -> None:
    _, cache_dir, ids = cached_world(tmp_path, n=10)
    cache = load_image_cache(cache_dir)
    assert cache is not None
    order = SeededOrder(len(ids), seed=4)
    loader = CachedLoader(cache, ids, np.arange(len(ids)), order, batch_size=4, image_size=16,
                          mean=(0.5,) * 3, std=(0.5,) * 3, augment=AugmentConfig(), seed=4)  # fmt: skip
    assert len(loader) == 3
    seen, skipped = [], []
    for batch in loader:
        assert batch.images.shape[1:] == (3, 16, 16) and batch.images.min() >= -1 - 1e-6
        torch.testing.assert_close(batch.targets, batch.indices)
        seen += batch.indices.tolist()
        skipped += batch.skipped
    assert sorted(seen + skipped) == list(range(len(ids))) and skipped == [ids.index("img_bad")]
    first = [b.indices.tolist() for b in loader]
    # a mid-epoch resume gets the remaining batches, the same images with the same augmentation
    rest = list(loader.iter_from(1))
    assert [b.indices.tolist() for b in rest] == first[1:]
    assert torch.equal(rest[0].images, list(loader)[1].images)
    order.set_epoch(1)
    assert [b.indices.tolist() for b in loader] != first
    order.set_epoch(0)
    assert [b.indices.tolist() for b in loader] == first


def _train_world(root: Path, n: int = 20) -> dict[str, Path]:
    """Shards + labels + the cache of ``n`` images whose LC class is their dominant colour."""
    colours = np.array([[220, 30, 30], [30, 200, 40], [40, 60, 230], [230, 220, 40]])
    records, rows = {}, []
    for k in range(n):
        records[f"img{k:03d}"] = colour_jpeg(colours[k % 4], np.random.default_rng(k), (20, 20), sd=25.0)
        rows.append({"image_id": f"img{k:03d}", "split": "val" if k >= n - 4 else "train",
                     "attr_keep": True, "lc7": np.int8(k % 4)})  # fmt: skip
    index = write_shards(root / "shards", records)
    write_label_parts(root / "labels", pd.DataFrame(rows))
    build_shard_cache(root / "shards", index, root / "cache")
    return {"shards": root / "shards", "labels": root / "labels", "cache": root / "cache"}


def test_cached_training_is_deterministic_and_resumes(tmp_path: Path) -> None:
    w = _train_world(tmp_path)
    cfg = {"backbone": "test_resnet", "image_size": 16, "batch_size": 4, "lr": 0.003, "patience": 100,
           "epochs": 3}  # fmt: skip
    common = {"num_workers": 0, "threads": 1, "image_cache": w["cache"]}

    def run(out: str, seed: int, **kw: object) -> dict[str, torch.Tensor]:
        summary = train_model("lc", w["labels"], w["shards"], tmp_path / out, cfg, seed=seed, **common, **kw)  # type: ignore[arg-type]
        assert summary["skipped_train_images"] == 0 and math.isfinite(summary["best_val_loss"])
        return torch.load(tmp_path / out / "checkpoint.pt", weights_only=False)["model"]

    a, b, other = run("a", 1), run("b", 1), run("c", 2)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["heads.lc.weight"], other["heads.lc.weight"])
    # killed after two epochs, then resumed: the same weights as the uninterrupted run
    part = train_model(
        "lc", w["labels"], w["shards"], tmp_path / "p", cfg, seed=1, stop_after_epochs=2, **common
    )  # type: ignore[arg-type]
    assert part["interrupted"]
    resumed = run("p", 1)
    for key in a:
        torch.testing.assert_close(a[key], resumed[key], rtol=1e-5, atol=1e-6)
    log_a = pd.read_csv(tmp_path / "a" / "metrics.csv")
    assert (log_a["skipped_train"] == 0).all() and len(log_a) == 3


def test_cached_geoclip_tower_training_is_deterministic(tmp_path: Path) -> None:
    from geoens.models.geoclip.stage import cached_gps_batches, run_train_tower
    from geoens.models.geoclip.training import TowerTrainConfig

    shards, cache_dir, ids = cached_world(tmp_path, n=18)
    rng = np.random.default_rng(0)
    labels = pd.DataFrame({"image_id": ids, "lat": rng.uniform(-60, 60, len(ids)),
                           "lon": rng.uniform(-180, 180, len(ids)),
                           "split": ["val" if k % 4 == 0 else "train" for k in range(len(ids))]})  # fmt: skip
    (tmp_path / "labels").mkdir()
    labels.to_parquet(tmp_path / "labels" / "part-00000.parquet", index=False)
    cfg = TowerTrainConfig(backbone="test_resnet", image_size=16, epochs=2, batch_size=4, lr=0.003,
                              queue_size=8, gallery_negatives=16, device="cpu")  # fmt: skip
    models = []
    for run in ("a", "b"):
        out = tmp_path / run / "model.pt"
        history = run_train_tower(shards, tmp_path / "labels", out, cfg, image_cache=cache_dir)
        assert len(history) == 2 and all(math.isfinite(h["val_loss"]) for h in history)
        models.append(torch.load(out, weights_only=False)["state_dict"])
    for key in models[0]:
        assert torch.equal(models[0][key], models[1][key]), key
    # every training image once per epoch, in a seeded order that changes with the epoch
    train = labels[labels["split"] == "train"].reset_index(drop=True)
    cache = load_image_cache(cache_dir)
    skipped: list[int] = []
    batches = cached_gps_batches(cache, train, cfg, True, skipped)
    seen = [torch.cat([gps for _, gps in batches(e)]) for e in (0, 0, 1)]
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], seen[2])
    assert len(seen[0]) + len(skipped) // 3 == len(train) and len(skipped) == 3  # img_bad, each epoch
