"""Decoded-image cache for small training images, and augmentation on batched tensors.

On the demo world (6,000 JPEGs of 64 x 64 px) a training epoch spent most of its time outside the model:
each image was read, JPEG-decoded and augmented one at a time in DataLoader worker processes that competed
with the training threads for the same two cores (docs/DECISIONS.md has the profile). For small images the
whole training set fits in memory as one ``uint8`` array, so:

* :func:`build_image_cache` decodes every shard record once into ``<dir>/images.npy`` (``(n, h, w, 3)``
  ``uint8``, the exact pixels :func:`geoens.models.datasets.decode_image` gives) with ``ids.txt`` and
  ``meta.json``. Images larger than ``max_side``, of mixed sizes, or a cache over ``max_bytes`` are not
  cached: the folder then holds only ``meta.json`` with ``"cached": false`` and the reason, and training reads
  the JPEGs.
* :class:`CachedLoader` yields the same :class:`geoens.models.datasets.Batch` objects as the JPEG DataLoader,
  in the same order (the sampler's, a function of seed and epoch), with no worker processes: it gathers a
  batch from the array and augments it in one go with :func:`augment_batch`.
* :func:`augment_batch` keeps :class:`geoens.models.datasets.AugmentConfig`'s meaning: a random resized crop
  keeping ``crop_scale_min``..1 of the area at aspect ratios 3/4..4/3 (torchvision's sampling, bilinear with
  antialiasing), horizontal / vertical flips with probability 1/2, brightness / contrast / saturation jitter
  with factors in ``1 +- color_jitter`` applied in a random order (torchvision's formulas). Each image's
  random draws are a hash of ``(seed, epoch, index)``, so they do not depend on the batch it falls in.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as tvf

from geoens.core.constants import IMAGE_CACHE_MAX_BYTES, IMAGE_CACHE_MAX_SIDE
from geoens.core.io import atomic_path, write_json
from geoens.models.datasets import AugmentConfig, Batch, ImageSource, ShardIndex, ShardSource, decode_image

log = logging.getLogger(__name__)

#: Values of ``train.image_cache``.
IMAGE_CACHE_MODES: tuple[str, ...] = ("auto", "off")
CACHE_FORMAT = "geoens-image-cache-1"
#: Aspect-ratio range of the random resized crop (torchvision's default).
CROP_RATIO: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
#: Grayscale weights of torchvision's ``rgb_to_grayscale`` (ITU-R 601-2 luma).
_LUMA = (0.2989, 0.587, 0.114)


class ImageCacheError(RuntimeError):
    """An image cache folder is missing a file or does not match its shards."""


# --------------------------------------------------------------------------------------------------------
# building and reading the cache


def build_image_cache(
    source: ImageSource,
    ids: Sequence[str],
    out_dir: str | Path,
    max_side: int = IMAGE_CACHE_MAX_SIDE,
    max_bytes: int = IMAGE_CACHE_MAX_BYTES,
) -> dict[str, Any]:
    """Decode the images of ``ids`` once into ``out_dir`` (written atomically as a whole folder).

    Images that are missing or do not decode get an all-zero slot and ``valid = false`` (training skips and
    counts them, as the JPEG path does). The first decodable image fixes the size; an image of another
    size, or one whose longer side exceeds ``max_side``, or a total over ``max_bytes`` stops the build and
    writes a ``"cached": false`` folder instead (training then reads the JPEGs).

    Returns:
        The ``meta.json`` content: ``cached``, ``reason`` (when not cached), ``n``, ``height``, ``width``,
        ``n_invalid``, ``format``.

    """
    ids = [str(i) for i in ids]
    meta: dict[str, Any] = {"format": CACHE_FORMAT, "n": len(ids), "cached": False}
    images: np.ndarray | None = None
    valid = np.zeros(len(ids), dtype=bool)
    reason = ""
    for k, image_id in enumerate(ids):
        img = decode_image(source.read(image_id))
        if img is None:
            continue
        arr = np.asarray(img, dtype=np.uint8)
        if images is None:
            h, w = arr.shape[:2]
            if max(h, w) > max_side:
                reason = f"image {image_id} is {w} x {h} px, larger than {max_side} px (read as JPEG)"
                break
            if len(ids) * h * w * 3 > max_bytes:
                reason = f"{len(ids)} images of {w} x {h} px exceed {max_bytes / 2**30:.1f} GiB"
                break
            images = np.zeros((len(ids), h, w, 3), dtype=np.uint8)
        if arr.shape != images.shape[1:]:
            reason = (
                f"image {image_id} is {arr.shape[1]} x {arr.shape[0]} px, the first was "
                f"{images.shape[2]} x {images.shape[1]}: mixed sizes are read as JPEG"
            )
            break
        images[k] = arr
        valid[k] = True
    if images is None and not reason:
        reason = "no image decodes"
    with atomic_path(out_dir, is_dir=True) as tmp:
        if reason:
            meta["reason"] = reason
            log.info("image cache not built: %s", reason)
        else:
            assert images is not None
            np.save(tmp / "images.npy", images)
            np.save(tmp / "valid.npy", valid)
            (tmp / "ids.txt").write_text("".join(i + "\n" for i in ids), encoding="utf-8")
            meta.update(
                cached=True,
                height=int(images.shape[1]),
                width=int(images.shape[2]),
                n_invalid=int((~valid).sum()),
            )
            log.info(
                "image cache: %d images of %d x %d px (%.1f MB), %d undecodable",
                len(ids), meta["width"], meta["height"], images.nbytes / 1e6, meta["n_invalid"],
            )  # fmt: skip
        write_json(tmp / "meta.json", meta)
    return meta


def build_shard_cache(
    shards_dir: str | Path,
    index: ShardIndex,
    out_dir: str | Path,
    max_side: int = IMAGE_CACHE_MAX_SIDE,
    max_bytes: int = IMAGE_CACHE_MAX_BYTES,
) -> dict[str, Any]:
    """:func:`build_image_cache` over every record of a shards folder (index order)."""
    source = ShardSource(shards_dir, index)
    try:
        return build_image_cache(source, [str(i) for i in index.ids], out_dir, max_side, max_bytes)
    finally:
        source.close()


@dataclass
class ImageCache:
    """Decoded images in memory.

    Attributes:
        images: ``(n, h, w, 3)`` ``uint8`` pixels.
        valid: ``(n,)`` whether each image decoded.
        ids: Image ids, in array order.

    """

    images: np.ndarray
    valid: np.ndarray
    ids: list[str]

    def __post_init__(self) -> None:
        self._pos = {i: k for k, i in enumerate(self.ids)}

    def positions(self, ids: Iterable[str]) -> np.ndarray:
        """Array rows of ``ids``; ``-1`` for an id that is missing or did not decode."""
        pos = np.array([self._pos.get(str(i), -1) for i in ids], dtype=np.int64)
        ok = pos >= 0
        pos[ok & ~self.valid[np.where(ok, pos, 0)]] = -1
        return pos


def load_image_cache(cache_dir: str | Path) -> ImageCache | None:
    """Read a folder written by :func:`build_image_cache`; ``None`` if it says the images were not cached.

    Raises:
        ImageCacheError: If ``meta.json`` or an array file is missing or inconsistent (naming the file).

    """
    root = Path(cache_dir)
    meta_path = root / "meta.json"
    if not meta_path.exists():
        raise ImageCacheError(f"image cache {root}: no meta.json (not written by geoens.models.imagecache)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != CACHE_FORMAT:
        raise ImageCacheError(f"{meta_path}: format {meta.get('format')!r}, expected {CACHE_FORMAT!r}")
    if not meta.get("cached"):
        log.info("image cache %s holds no images (%s): reading JPEGs", root, meta.get("reason"))
        return None
    try:
        images = np.load(root / "images.npy", mmap_mode="r")
        valid = np.load(root / "valid.npy")
        ids = (root / "ids.txt").read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ImageCacheError(f"image cache {root}: {exc}") from exc
    if images.shape != (meta["n"], meta["height"], meta["width"], 3) or len(ids) != meta["n"]:
        raise ImageCacheError(
            f"image cache {root}: images.npy {images.shape} / ids.txt {len(ids)} rows do not match "
            f"meta.json (n {meta['n']}, {meta['width']} x {meta['height']} px)"
        )
    if valid.shape != (meta["n"],):
        raise ImageCacheError(
            f"image cache {root}: valid.npy has shape {valid.shape}, expected ({meta['n']},)"
        )
    return ImageCache(np.ascontiguousarray(images), valid.astype(bool), ids)


def image_cache_enabled(mode: str | bool) -> bool:
    """Whether ``train.image_cache`` = ``mode`` asks for the cache (``auto``) or not (``off``; YAML false).

    Raises:
        ValueError: On another value.

    """
    if mode is False or mode == "off":
        return False
    if mode == "auto":
        return True
    raise ValueError(f"train.image_cache must be one of {IMAGE_CACHE_MODES}, got {mode!r}")


# --------------------------------------------------------------------------------------------------------
# per-image random numbers: a counter-based hash of (seed, epoch, index, draw)

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return x ^ (x >> np.uint64(31))


def uniform_draws(seed: int, epoch: int, indices: np.ndarray, n_draws: int) -> np.ndarray:
    """``(len(indices), n_draws)`` float64 uniforms in [0, 1); pure in (seed, epoch, index, draw)."""
    key = _splitmix64(np.array([(seed & 0xFFFFFFFF) << 32 | (epoch & 0xFFFFFFFF)], dtype=np.uint64))
    with np.errstate(over="ignore"):
        base = _splitmix64(key ^ (np.asarray(indices, dtype=np.uint64) * np.uint64(0x2545F4914F6CDD1D)))
        ctr = base[:, None] + np.arange(n_draws, dtype=np.uint64)[None, :] * np.uint64(0xD1B54A32D192ED03)
    return (_splitmix64(ctr) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# --------------------------------------------------------------------------------------------------------
# batched augmentation

#: Crop attempts before falling back to the centre crop (as torchvision).
_CROP_TRIES = 10
#: Draws per image: crop (scale, log-ratio, top, left) x tries, flips, jitter factors, jitter order.
_N_DRAWS = 4 * _CROP_TRIES + 2 + 3 + 1


@dataclass(frozen=True)
class AugmentParams:
    """Per-image augmentation parameters of a batch (all arrays of length ``b``).

    Attributes:
        top, left, height, width: Crop boxes in pixels of the source image.
        hflip, vflip: Whether to flip.
        brightness, contrast, saturation: Jitter factors (1: unchanged).
        order: ``(b, 3)`` order in which brightness (0), contrast (1), saturation (2) are applied.

    """

    top: np.ndarray
    left: np.ndarray
    height: np.ndarray
    width: np.ndarray
    hflip: np.ndarray
    vflip: np.ndarray
    brightness: np.ndarray
    contrast: np.ndarray
    saturation: np.ndarray
    order: np.ndarray


_ORDERS = np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]], dtype=np.int64)


def sample_params(
    aug: AugmentConfig, height: int, width: int, seed: int, epoch: int, indices: np.ndarray
) -> AugmentParams:
    """Draw each image's augmentation from :func:`uniform_draws` with torchvision's sampling rules.

    Crop: up to 10 tries of area share ~ U(crop_scale_min, 1) and log aspect ratio ~ U(log 3/4, log 4/3),
    the first box that fits is placed uniformly; otherwise the centre crop of torchvision's fallback.
    Flips with probability 1/2 when enabled. Jitter factors ~ U(max(0, 1 - j), 1 + j) for ``color_jitter`` j.
    """
    idx = np.asarray(indices, dtype=np.int64)
    u = uniform_draws(seed, epoch, idx, _N_DRAWS)
    b = len(idx)
    area = height * width
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    top, left = np.zeros(b, np.int64), np.zeros(b, np.int64)
    hh, ww = np.zeros(b, np.int64), np.zeros(b, np.int64)
    done = np.zeros(b, dtype=bool)
    for t in range(_CROP_TRIES):
        d = u[:, 4 * t : 4 * t + 4]
        target = area * (aug.crop_scale_min + (1.0 - aug.crop_scale_min) * d[:, 0])
        ratio = np.exp(log_lo + (log_hi - log_lo) * d[:, 1])
        w = np.round(np.sqrt(target * ratio)).astype(np.int64)
        h = np.round(np.sqrt(target / ratio)).astype(np.int64)
        fits = ~done & (w > 0) & (w <= width) & (h > 0) & (h <= height)
        top[fits] = np.floor(d[fits, 2] * (height - h[fits] + 1)).astype(np.int64)
        left[fits] = np.floor(d[fits, 3] * (width - w[fits] + 1)).astype(np.int64)
        hh[fits], ww[fits] = h[fits], w[fits]
        done |= fits
    if not done.all():  # torchvision's fallback: the largest centred box within the ratio range
        in_ratio = width / height
        if in_ratio < CROP_RATIO[0]:
            fw, fh = width, int(round(width / CROP_RATIO[0]))
        elif in_ratio > CROP_RATIO[1]:
            fw, fh = int(round(height * CROP_RATIO[1])), height
        else:
            fw, fh = width, height
        rest = ~done
        hh[rest], ww[rest] = fh, fw
        top[rest], left[rest] = (height - fh) // 2, (width - fw) // 2
    k = 4 * _CROP_TRIES
    lo, hi = max(0.0, 1.0 - aug.color_jitter), 1.0 + aug.color_jitter
    factors = lo + (hi - lo) * u[:, k + 2 : k + 5]
    return AugmentParams(
        top=top,
        left=left,
        height=hh,
        width=ww,
        hflip=(u[:, k] < 0.5) if aug.hflip else np.zeros(b, dtype=bool),
        vflip=(u[:, k + 1] < 0.5) if aug.vflip else np.zeros(b, dtype=bool),
        brightness=factors[:, 0],
        contrast=factors[:, 1],
        saturation=factors[:, 2],
        order=_ORDERS[np.minimum((u[:, k + 5] * 6).astype(np.int64), 5)],
    )


def resize_weights(start: np.ndarray, length: np.ndarray, size: int, out: int) -> torch.Tensor:
    """``(b, out, size)`` weights resampling each ``[start, start + length)`` window to ``out`` pixels.

    Bilinear with antialiasing as in torch's ``interpolate(mode="bilinear", antialias=True)``: a triangle
    filter of half-width ``max(length / out, 1)`` centred at each output pixel's centre, truncated at the
    window's edges and normalised.
    """
    start = np.asarray(start, np.float64)[:, None, None]
    length = np.asarray(length, np.float64)[:, None, None]
    scale = length / out
    support = np.maximum(scale, 1.0)
    centre = (np.arange(out, dtype=np.float64)[None, :, None] + 0.5) * scale  # window coordinates
    j = np.arange(size, dtype=np.float64)[None, None, :] - start  # source pixel in window coordinates
    w = np.maximum(0.0, 1.0 - np.abs((j + 0.5 - centre) / support))
    w = np.where((j >= 0) & (j < length), w, 0.0)
    w /= np.maximum(w.sum(axis=2, keepdims=True), 1e-12)
    return torch.from_numpy(w.astype(np.float32))


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (_LUMA[0] * x[:, 0] + _LUMA[1] * x[:, 1] + _LUMA[2] * x[:, 2]).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (f * a + (1.0 - f) * b).clamp_(0.0, 1.0)


def color_jitter_batch(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """Brightness, contrast and saturation jitter of ``x`` (``(b, 3, h, w)`` in [0, 1]) in each image's order.

    Formulas of torchvision's ``adjust_brightness`` (``x * f``), ``adjust_contrast`` (blend with the mean of
    the grayscale image) and ``adjust_saturation`` (blend with the grayscale image), clamped to [0, 1].
    """
    factors = torch.from_numpy(np.stack([p.brightness, p.contrast, p.saturation], axis=1).astype(np.float32))
    order = torch.from_numpy(p.order)
    for pos in range(3):
        for op in range(3):
            sel = (order[:, pos] == op).nonzero().flatten()
            if sel.numel() == 0:
                continue
            xs = x[sel]
            f = factors[sel, op].view(-1, 1, 1, 1)
            if op == 0:
                y = (xs * f).clamp_(0.0, 1.0)
            elif op == 1:
                y = _blend(xs, _gray(xs).mean(dim=(1, 2, 3), keepdim=True), f)
            else:
                y = _blend(xs, _gray(xs), f)
            x[sel] = y
    return x


def augment_batch(
    images: torch.Tensor,
    aug: AugmentConfig,
    image_size: int,
    seed: int,
    epoch: int,
    indices: np.ndarray,
) -> torch.Tensor:
    """Training augmentation of a ``uint8`` batch ``(b, h, w, 3)`` -> float ``(b, 3, s, s)`` in [0, 1].

    Random resized crop to ``image_size`` (bilinear, antialiased), flips, colour jitter; image ``i``'s draws
    are a function of ``(seed, epoch, indices[i])`` only (see :func:`sample_params`).
    """
    b, h, w, _ = images.shape
    p = sample_params(aug, h, w, seed, epoch, indices)
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    wy = resize_weights(p.top, p.height, h, image_size)
    wx = resize_weights(p.left, p.width, w, image_size)
    hflip = torch.from_numpy(p.hflip)
    vflip = torch.from_numpy(p.vflip)
    # a flip of the output is a flip of the weight rows
    wx = torch.where(hflip.view(-1, 1, 1), wx.flip(1), wx)
    wy = torch.where(vflip.view(-1, 1, 1), wy.flip(1), wy)
    x = torch.matmul(torch.matmul(wy.unsqueeze(1), x), wx.transpose(1, 2).unsqueeze(1)).clamp_(0.0, 1.0)
    if aug.color_jitter > 0:
        x = color_jitter_batch(x, p)
    return x


def eval_batch(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Evaluation transform of a ``uint8`` batch ``(b, h, w, 3)``: the per-image one, batched.

    Resize the shorter side to ``image_size`` (bilinear, antialiased, on ``uint8`` as torchvision does for
    the per-image path), centre crop, scale to float [0, 1].
    """
    x = images.permute(0, 3, 1, 2)
    if min(x.shape[-2:]) != image_size:
        x = tvf.resize(x, [image_size], antialias=True)
    x = tvf.center_crop(x, [image_size, image_size])
    out: torch.Tensor = x.float().div_(255.0)
    return out


# --------------------------------------------------------------------------------------------------------
# loader


class SeededOrder:
    """Dataset indices ``0..n-1``, shuffled per epoch by a permutation seeded with ``(seed, epoch)``."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        gen = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())


class CachedLoader:
    """Batches of a cached dataset, drop-in for the JPEG DataLoader (no worker processes).

    The order is the ``sampler``'s (a :class:`torch.utils.data.DistributedSampler`: a function of seed and
    epoch); the augmentation epoch is read from ``sampler.epoch``. Images that are missing from the cache or
    did not decode are dropped and reported in :attr:`Batch.skipped`, as
    :func:`geoens.models.datasets.collate_skip` does.

    Args:
        cache: The decoded images.
        ids: Dataset ids (dataset index ``i`` is ``ids[i]``).
        targets: ``(n,)`` or ``(n, k)`` integer labels.
        sampler: Yields dataset indices; has ``epoch`` when ``train``.
        batch_size: Images per batch.
        image_size: Output side in pixels.
        mean, std: Normalisation.
        augment: Training augmentation (``None``: evaluation transform).
        seed: Augmentation seed.
        drop_last: Drop a last incomplete batch.

    """

    def __init__(
        self,
        cache: ImageCache,
        ids: Sequence[str],
        targets: np.ndarray,
        sampler: Iterable[int],
        batch_size: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: AugmentConfig | None = None,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.cache = cache
        self.rows = cache.positions(ids)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.int64))
        self.sampler = sampler
        self.batch_size = batch_size
        self.image_size = image_size
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1)
        self.augment = augment
        self.seed = seed
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batch(self, indices: Sequence[int], epoch: int = 0) -> Batch:
        """The batch of dataset ``indices`` (augmented with the draws of ``epoch`` when training)."""
        idx = np.asarray(indices, dtype=np.int64)
        rows = self.rows[idx]
        ok = rows >= 0
        kept, skipped = idx[ok], idx[~ok].tolist()
        if len(kept) == 0:
            shape = tuple(self.targets.shape[1:])
            return Batch(torch.empty(0, 3, 1, 1), torch.empty((0, *shape), dtype=torch.long),
                         torch.empty(0, dtype=torch.long), skipped)  # fmt: skip
        pixels = torch.from_numpy(self.cache.images[rows[ok]])
        if self.augment is None:
            x = eval_batch(pixels, self.image_size)
        else:
            x = augment_batch(pixels, self.augment, self.image_size, self.seed, epoch, kept)
        # channels-last: LCNet's depthwise convolutions train ~1.6x faster on CPU (bench_train.py profile)
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        t = torch.from_numpy(kept)
        return Batch(x, self.targets[t], t, skipped)

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(0)

    def iter_from(self, first_batch: int) -> Iterator[Batch]:
        """The epoch's batches from number ``first_batch`` on (mid-epoch resume), skipping the rest unbuilt.

        The batches are the same as those of a full pass: the order is the sampler's and each image's
        augmentation depends on (seed, epoch, index) only.
        """
        epoch = int(getattr(self.sampler, "epoch", 0))
        chunk: list[int] = []
        k = 0
        for i in self.sampler:
            chunk.append(int(i))
            if len(chunk) == self.batch_size:
                if k >= first_batch:
                    yield self.batch(chunk, epoch)
                chunk, k = [], k + 1
        if chunk and not self.drop_last and k >= first_batch:
            yield self.batch(chunk, epoch)
