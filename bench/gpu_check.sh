#!/usr/bin/env bash
# GPU check, for a lent GPU machine only (never CI). Measures training throughput of the demo backbone and of
# BiT-M R50x1 @ 224 with bf16 autocast, then trains the LC classifier on the demo data through
# geoens.models.predictors on CUDA (mixed precision, per-epoch checkpoints) and checks that a run killed after
# epoch 1 resumes to the same epoch count, and runs the torch evaluation backend on 50,000 images x 10 methods
# at grids 5400 and 21600 (bench_rva.py). Needs, from a demo run on the CPU machine: results/demo/mp16,
# results/labels/train, results/models/shard_index.parquet. Usage: OUT=<folder> bash bench/gpu_check.sh
set -euo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"

python bench/bench_train.py --device cuda --workers 12 --threads 12 2>&1 | tee "$OUT/bench_train_cuda.txt"
cp bench/out/bench_train_cuda.json "$OUT/"

python - "$OUT" <<'PY'
import json, sys, time
from pathlib import Path
import pandas as pd
from geoens.models.predictors import train_model
out = Path(sys.argv[1])
trainer = {"backbone": "resnetv2_50x1_bit", "pretrained": False, "image_size": 128, "epochs": 3,
           "batch_size": 128, "lr": 0.001, "weight_decay": 0.0001, "patience": 5, "gpus": 1,
           "max_train_images": None, "pretrained_file": None}
common = dict(partitions_dir=None, shard_index="results/models/shard_index.parquet", device="cuda",
              num_workers=12, seed=0, threads=12)
args = ("lc", "results/labels/train", "results/demo/mp16/shards")
t0 = time.time()
train_model(*args, "/tmp/lc_full", json.dumps(trainer), **common)
full_s = time.time() - t0
train_model(*args, "/tmp/lc_resume", json.dumps(trainer), stop_after_epochs=1, **common)  # "killed"
train_model(*args, "/tmp/lc_resume", json.dumps(trainer), **common)                      # resumed
a = pd.read_csv("/tmp/lc_full/metrics.csv"); b = pd.read_csv("/tmp/lc_resume/metrics.csv")
a.to_csv(out / "metrics_full.csv", index=False); b.to_csv(out / "metrics_resumed.csv", index=False)
print(a.to_string()); print(b.to_string())
summary = {"full_run_s": full_s, "epochs_full": len(a), "epochs_resumed": len(b),
           "val_acc_full": float(a["val_acc"].iloc[-1]) if "val_acc" in a else None,
           "val_acc_resumed": float(b["val_acc"].iloc[-1]) if "val_acc" in b else None}
print(json.dumps(summary)); (out / "train_gpu.json").write_text(json.dumps(summary, indent=2))
PY

# Torch evaluation backend (geoens.evaluation.rva_fast, dense form on CUDA) on 50,000 images x 10 methods,
# each run checked against the numpy backend on its first 2,048 images. Mixed world (~1.4e5 atoms: every S2
# cell holds most of its LS x LC tuples) with the real 12,893-cell partition (peer data: GEOENS_PEERS, else
# ../shared/reference/peers; a synthetic partition otherwise). Grid 5400 x 10800 with the grid top-1; then the
# 1 km grid 21600 x 43200, areas only (the top-1 fallback's in-memory pixel index, an argsort of 933 M pixels,
# would take minutes; bench_masks.py measures the windowed one). Building the 21600 world (numpy, one core)
# takes most of its budget. Each run is bounded, so that the whole script stays within 8 minutes.
timeout 120 python bench/bench_rva.py --backend torch --device cuda --threads 1 --brute 1 --dense 0 \
  --world mixed 2>&1 | tee "$OUT/bench_rva_torch_5400.txt" \
  || echo "bench_rva torch 5400: failed or timed out" | tee -a "$OUT/gpu.txt"
cp bench/out/bench_rva_torch.json "$OUT/" 2>/dev/null || true
timeout 270 python bench/bench_rva.py --backend torch --device cuda --threads 1 --brute 0 --dense 0 \
  --height 21600 --world mixed --no-top1 2>&1 | tee "$OUT/bench_rva_torch_21600.txt" \
  || echo "bench_rva torch 21600: failed or timed out" | tee -a "$OUT/gpu.txt"
cp bench/out/bench_rva_21600_torch.json "$OUT/" 2>/dev/null || true
