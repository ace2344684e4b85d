"""Benchmark: training throughput (images/s) vs data-loading throughput from msgpack shards, on CPU.

* training step (forward + backward + AdamW) on random tensors for the demo backbone (LCNet-0.5, timm
  ``lcnet_050`` @ 64 px), resnet18 @ 64 px, and the paper's BiT-M R50x1 (``resnetv2_50x1_bit``, random init)
  @ 224 px;
* data loading alone (shard read + JPEG decode + training augmentation + collate) with DataLoader workers;
* ratio loading / training: > 1 means the loader keeps up with the model;
* (CPU only) where a demo training epoch's time goes: CPU milliseconds per image of shard read, JPEG decode,
  per-image augmentation, collate, batched augmentation from the decoded-image cache, forward, backward and
  optimiser step (one thread, so that the CPU times add up);
* (CPU only) the demo's training loop (LCNet-0.5 @ 64 px, batch 32, AdamW) end to end on both data paths, in
  the same run: JPEG shards with 2 DataLoader workers and 2 torch threads (the real-data path), the
  decoded-image cache with 2 threads, and two cached jobs side by side with 1 thread each (how the demo
  runs them); for the paper's augmentation (LS, LC) and GeoEstimation's (geoest, GeoCLIP tower).

Run: ``python bench/bench_train.py`` (or ``--small``). Writes ``bench/out/bench_train.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from geoens.models.datasets import (
    AugmentConfig,
    ImageDataset,
    ShardIndex,
    ShardSource,
    collate_skip,
    decode_image,
    make_transforms,
)
from geoens.models.imagecache import (
    CachedLoader,
    ImageCache,
    augment_batch,
    build_shard_cache,
    load_image_cache,
)
from geoens.models.nets import backbone_norm, build_model

OUT = Path(__file__).resolve().parent / "out"


def peak_rss_mb() -> dict[str, float]:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"self": self_kb / 1024, "children": child_kb / 1024}


def write_shards(root: Path, n: int, size: tuple[int, int], n_shards: int = 4) -> list[str]:
    """Smooth random JPEGs (realistic compressed size) of ``size`` (h, w) in ``n_shards`` shards."""
    rng = np.random.default_rng(0)
    ids = []
    handles = [open(root / f"shard-{s:03d}.msgpack", "wb") for s in range(n_shards)]  # noqa: SIM115
    try:
        for k in range(n):
            low = rng.integers(0, 256, (size[0] // 8 + 1, size[1] // 8 + 1, 3), dtype=np.uint8)
            img = Image.fromarray(low).resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.clip(np.asarray(img, np.int16) + rng.integers(-12, 12, (*size, 3)), 0, 255).astype(
                np.uint8
            )
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "JPEG", quality=85)
            image_id = f"{k:07d}.jpg"
            handles[k % n_shards].write(msgpack.packb({"id": image_id, "image": buf.getvalue()}))
            ids.append(image_id)
    finally:
        for fh in handles:
            fh.close()
    return ids


def bench_training(
    backbone: str, image_size: int, batch: int, steps: int, warmup: int = 1, device: str = "cpu"
) -> dict[str, float]:
    """Median step time of forward + backward + AdamW; on CUDA with bf16 autocast and channels_last."""
    torch.manual_seed(0)
    dev = torch.device(device)
    net = build_model("lc", backbone).to(dev)
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.train()
    x = torch.randn(batch, 3, image_size, image_size, device=dev)
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (batch,), device=dev)
    times = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(net(x)["lc"], y)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    sec = float(np.median(times))
    return {"images_per_s": batch / sec, "s_per_step": sec, "batch": batch, "steps": steps}


def bench_loading(
    shards: Path, ids: list[str], image_size: int, batch: int, workers: int
) -> dict[str, float]:
    t0 = time.perf_counter()
    index = ShardIndex.build(shards)
    t_index = time.perf_counter() - t0
    ds = ImageDataset(
        ShardSource(shards, index), ids, np.zeros(len(ids), np.int64), make_transforms(image_size, True), 0
    )
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate_skip)
    t0 = time.perf_counter()
    n = 0
    for b in loader:
        n += len(b)
    sec = time.perf_counter() - t0
    return {"images_per_s": n / sec, "seconds": sec, "images": n, "index_s": t_index, "workers": workers}


#: The demo's augmentations (config.yaml): the paper's for LS and LC, GeoEstimation's for geoest and tower.
DEMO_AUGMENTS: dict[str, AugmentConfig] = {
    "paper (ls, lc)": AugmentConfig(),
    "geoestimation (geoest, tower)": AugmentConfig(crop_scale_min=0.66, vflip=False, color_jitter=0.0),
}
DEMO_BACKBONE, DEMO_SIZE, DEMO_BATCH = "lcnet_050", 64, 32


def _cpu_ms(fn: Any, n_images: int, repeat: int = 1) -> float:
    t0 = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - t0) / (n_images * repeat) * 1e3


def profile_epoch(shards: Path, ids: list[str], cache_dir: Path, aug: AugmentConfig) -> dict[str, float]:
    """CPU milliseconds per image of each stage of a demo training step, on one thread."""
    torch.set_num_threads(1)
    index = ShardIndex.build(shards)
    src = ShardSource(shards, index)
    mean, std = backbone_norm(DEMO_BACKBONE)
    tf = make_transforms(DEMO_SIZE, True, mean, std, aug)
    n = len(ids)
    out: dict[str, float] = {}
    raw: list[bytes | None] = []
    out["read"] = _cpu_ms(lambda: raw.extend(src.read(i) for i in ids), n)
    imgs: list[Any] = []
    out["decode"] = _cpu_ms(lambda: imgs.extend(decode_image(b) for b in raw), n)
    items: list[Any] = []
    out["augment_per_image"] = _cpu_ms(lambda: items.extend(tf(im) for im in imgs), n)
    batches = [
        [(x, torch.tensor(0), k) for k, x in enumerate(items[i : i + DEMO_BATCH])]
        for i in range(0, n, DEMO_BATCH)
    ]
    out["collate"] = _cpu_ms(lambda: [collate_skip(b) for b in batches], n)
    cache = load_image_cache(cache_dir)
    assert cache is not None
    pixels = torch.from_numpy(cache.images[: (n // DEMO_BATCH) * DEMO_BATCH].copy())
    out["augment_batched_cache"] = _cpu_ms(
        lambda: [
            augment_batch(pixels[i : i + DEMO_BATCH], aug, DEMO_SIZE, 0, 0, np.arange(i, i + DEMO_BATCH))
            for i in range(0, len(pixels), DEMO_BATCH)
        ],
        len(pixels),
    )
    net = build_model("lc", DEMO_BACKBONE)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.train()
    y = torch.randint(0, 7, (DEMO_BATCH,))
    steps = max(3, n // DEMO_BATCH // 4)
    # the JPEG path's batches are contiguous (NCHW); the cached path hands out channels-last batches
    for suffix, fmt in (("", torch.contiguous_format), ("_channels_last", torch.channels_last)):
        x = torch.stack(items[:DEMO_BATCH]).contiguous(memory_format=fmt)
        fwd = bwd = step = 0.0
        for k in range(steps + 1):
            t0 = time.process_time()
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x)["lc"], y)
            t1 = time.process_time()
            loss.backward()
            t2 = time.process_time()
            opt.step()
            t3 = time.process_time()
            if k:  # the first step warms up
                fwd, bwd, step = fwd + t1 - t0, bwd + t2 - t1, step + t3 - t2
        for name, sec in (("forward", fwd), ("backward", bwd), ("optimizer", step)):
            out[name + suffix] = sec / (steps * DEMO_BATCH) * 1e3
    return out


def _train_loop(loader: Any, epochs: int, threads: int) -> dict[str, float]:
    """Images/s of the demo training step fed by ``loader`` (an iterable of Batch) for ``epochs`` epochs."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_model("lc", DEMO_BACKBONE)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.train()
    warm = next(iter(loader))  # first-step set-up (oneDNN kernels) is not throughput
    torch.nn.functional.cross_entropy(net(warm.images)["lc"], warm.targets).backward()
    n = 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(batch.images)["lc"], batch.targets)
            loss.backward()
            opt.step()
            n += len(batch)
    sec = time.perf_counter() - t0
    return {"images_per_s": n / sec, "seconds": sec, "images": n}


def _sampler(n: int) -> torch.utils.data.DistributedSampler[Any]:
    return torch.utils.data.DistributedSampler(range(n), num_replicas=1, rank=0, shuffle=True, seed=0)  # type: ignore[arg-type]


def loop_jpeg(shards: str, ids: list[str], aug: AugmentConfig, epochs: int, workers: int) -> dict[str, float]:
    """The real-data path: ImageDataset over the shards, DataLoader with ``workers``, 2 torch threads."""
    mean, std = backbone_norm(DEMO_BACKBONE)
    ds = ImageDataset(
        ShardSource(shards, ShardIndex.build(shards)),
        ids,
        np.arange(len(ids)) % 7,
        make_transforms(DEMO_SIZE, True, mean, std, aug),
        0,
    )
    loader = DataLoader(ds, batch_size=DEMO_BATCH, sampler=_sampler(len(ids)), num_workers=workers,
                        collate_fn=collate_skip, drop_last=True)  # fmt: skip
    return _train_loop(loader, epochs, threads=2)


def loop_cached(
    cache_dir: str, ids: list[str], aug: AugmentConfig, epochs: int, threads: int
) -> dict[str, float]:
    """The cached path: CachedLoader over the decoded images, in the training process."""
    cache = load_image_cache(cache_dir)
    assert isinstance(cache, ImageCache)
    mean, std = backbone_norm(DEMO_BACKBONE)
    loader = CachedLoader(cache, ids, np.arange(len(ids)) % 7, _sampler(len(ids)), DEMO_BATCH, DEMO_SIZE,
                          mean, std, augment=aug, seed=0, drop_last=True)  # fmt: skip
    return _train_loop(loader, epochs, threads)


def loop_cached_pair(cache_dir: str, ids: list[str], aug: AugmentConfig, epochs: int) -> dict[str, float]:
    """Two cached 1-thread training processes side by side (as the demo schedules them): total images/s."""
    ctx = multiprocessing.get_context("spawn")
    t0 = time.perf_counter()
    with ctx.Pool(2) as pool:
        runs = pool.starmap(loop_cached, [(cache_dir, ids, aug, epochs, 1)] * 2)
    sec = time.perf_counter() - t0  # includes process start-up, against the pair
    n = sum(r["images"] for r in runs)
    return {"images_per_s": n / sec, "seconds": sec, "images": n,
            "per_job_images_per_s": [r["images_per_s"] for r in runs]}  # fmt: skip


def bench_paths(small: bool, workers: int) -> dict[str, Any]:
    """Profile and end-to-end loop throughput of both data paths, per demo augmentation setting."""
    n_images, epochs = (256, 1) if small else (1024, 2)
    out: dict[str, Any] = {"n_images": n_images, "epochs": epochs, "by_augment": {}}
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        shards.mkdir()
        ids = write_shards(shards, n_images, (DEMO_SIZE, DEMO_SIZE))
        cache_dir = Path(tmp) / "cache"
        t0 = time.perf_counter()
        build_shard_cache(shards, ShardIndex.build(shards), cache_dir)
        out["cache_build_s_per_1000"] = (time.perf_counter() - t0) / n_images * 1000
        for name, aug in DEMO_AUGMENTS.items():
            prof = profile_epoch(shards, ids, cache_dir, aug)
            jpeg = loop_jpeg(str(shards), ids, aug, epochs, workers)
            cached = loop_cached(str(cache_dir), ids, aug, epochs, threads=2)
            pair = loop_cached_pair(str(cache_dir), ids, aug, epochs)
            row = {
                "profile_cpu_ms_per_image": prof,
                "jpeg_2workers_2threads": jpeg,
                "cached_2threads": cached,
                "cached_2jobs_1thread": pair,
                "cached_over_jpeg": cached["images_per_s"] / jpeg["images_per_s"],
                "cached_pair_over_jpeg": pair["images_per_s"] / jpeg["images_per_s"],
            }
            out["by_augment"][name] = row
            jpeg_keys = ["read", "decode", "augment_per_image", "collate", "forward", "backward", "optimizer"]
            cached_keys = ["augment_batched_cache", "forward_channels_last", "backward_channels_last",
                           "optimizer_channels_last"]  # fmt: skip
            total = sum(prof[k] for k in jpeg_keys)
            total_cached = sum(prof[k] for k in cached_keys)
            row["profile_total_ms"] = {"jpeg": total, "cached": total_cached}
            print(f"\n{name} augmentation: CPU ms per image (1 thread)")
            for keys, tot, label in ((jpeg_keys, total, "JPEG path"), (cached_keys, total_cached, "cached")):
                parts = ", ".join(f"{k} {prof[k]:.3f} ({100 * prof[k] / tot:.0f}%)" for k in keys)
                print(f"  {label}: {tot:.2f} = {parts}")
            print(
                f"  training loop: JPEG {jpeg['images_per_s']:6.1f} img/s ({workers} workers, 2 threads), "
                f"cached {cached['images_per_s']:6.1f} img/s (2 threads) = {row['cached_over_jpeg']:.2f}x, "
                f"2 cached jobs x 1 thread {pair['images_per_s']:6.1f} img/s in total = "
                f"{row['cached_pair_over_jpeg']:.2f}x"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="quick run (fewer images and steps)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU check (bf16 autocast)")
    parser.add_argument("--skip-paths", action="store_true", help="skip the data-path profile and loops")
    parser.add_argument("--only-paths", action="store_true", help="only the data-path profile and loops")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    small = args.small
    if args.device == "cuda":
        # GPU check: same backbones, batches that fill a data-centre GPU; loading still on the CPUs.
        configs = [
            ("demo lcnet_050@64", "lcnet_050", 64, (64, 64), 512, 20, 4096),
            ("resnet18@64", "resnet18", 64, (64, 64), 512, 20, 4096),
            ("BiT-M R50x1@224", "resnetv2_50x1_bit", 224, (240, 320), 128, 20, 2048),
        ]
    else:
        configs = [
        # name, backbone, training size, stored JPEG size (h, w), train batch, steps, loader images
        ("demo lcnet_050@64", "lcnet_050", 64, (64, 64), 32, 3 if small else 10, 256 if small else 2048),
        ("resnet18@64", "resnet18", 64, (64, 64), 32, 2 if small else 5, 256 if small else 2048),
        ("BiT-M R50x1@224", "resnetv2_50x1_bit", 224, (240, 320), 4 if small else 8, 1 if small else 3,
         64 if small else 512),
        ]  # fmt: skip
    results = {
        "host": platform.node(),
        "torch": torch.__version__,
        "threads": args.threads,
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "runs": [],
    }
    for name, backbone, size, jpeg_hw, batch, steps, n_load in [] if args.only_paths else configs:
        with tempfile.TemporaryDirectory() as tmp:
            ids = write_shards(Path(tmp), n_load, jpeg_hw)
            load = bench_loading(Path(tmp), ids, size, batch=32, workers=args.workers)
        train = bench_training(backbone, size, batch, steps, warmup=3 if args.device == "cuda" else 1,
                               device=args.device)  # fmt: skip
        ratio = load["images_per_s"] / train["images_per_s"]
        row = {"name": name, "training": train, "loading": load, "loading_over_training": ratio}
        results["runs"].append(row)
        print(
            f"{name:18s} train {train['images_per_s']:8.1f} img/s (batch {batch})  "
            f"load {load['images_per_s']:8.1f} img/s ({args.workers} workers, "
            f"index {load['index_s']:.2f} s)  "
            f"loading/training = {ratio:.2f}"
        )
    base = results["runs"][0]["training"]["images_per_s"] if results["runs"] else 0.0
    for row in results["runs"][1:]:
        print(
            f"{row['name']}: training is {base / row['training']['images_per_s']:.1f}x slower than the demo"
        )
    if args.device == "cpu" and not args.skip_paths:
        results["data_paths"] = bench_paths(small, args.workers)
    results["peak_rss_mb"] = peak_rss_mb()
    rss = results["peak_rss_mb"]
    print(f"peak RSS: {rss['self']:.0f} MB (main), {rss['children']:.0f} MB (largest worker)")
    OUT.mkdir(exist_ok=True)
    name = "bench_train.json" if args.device == "cpu" else f"bench_train_{args.device}.json"
    (OUT / name).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
