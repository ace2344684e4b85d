"""Benchmark: training throughput (images/s) vs data-loading throughput from msgpack shards, on CPU.

* training step (forward + backward + AdamW) on random tensors for the demo backbone (LCNet-0.5, timm
  ``lcnet_050`` @ 64 px), resnet18 @ 64 px, and the paper's BiT-M R50x1 (``resnetv2_50x1_bit``, random init)
  @ 224 px;
* data loading alone (shard read + JPEG decode + training augmentation + collate) with DataLoader workers;
* ratio loading / training: > 1 means the loader keeps up with the model.

Run: ``python bench/bench_train.py`` (or ``--small``). Writes ``bench/out/bench_train.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from geoens.data import ImageDataset, ShardIndex, ShardSource, collate_skip, make_transforms
from geoens.models import build_model

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="quick run (fewer images and steps)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU check (bf16 autocast)")
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
    for name, backbone, size, jpeg_hw, batch, steps, n_load in configs:
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
    base = results["runs"][0]["training"]["images_per_s"]
    for row in results["runs"][1:]:
        print(
            f"{row['name']}: training is {base / row['training']['images_per_s']:.1f}x slower than the demo"
        )
    results["peak_rss_mb"] = peak_rss_mb()
    rss = results["peak_rss_mb"]
    print(f"peak RSS: {rss['self']:.0f} MB (main), {rss['children']:.0f} MB (largest worker)")
    OUT.mkdir(exist_ok=True)
    name = "bench_train.json" if args.device == "cpu" else f"bench_train_{args.device}.json"
    (OUT / name).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
