"""Rule train: run ``python -m geoens.train`` for one predictor (as torchrun when gpus > 1)."""

import json
import os
import sys

from geoens.train import main

snakemake = globals()["snakemake"]

trainer = json.loads(snakemake.params.trainer)
argv = [
    "--model", snakemake.wildcards.model,
    "--labels", snakemake.input.labels,
    "--shards", snakemake.input.shards,
    "--shard-index", snakemake.input.index,
    "--out", os.path.dirname(snakemake.output.model),
    "--trainer", snakemake.params.trainer,
    "--device", str(snakemake.params.device),
    "--num-workers", str(snakemake.params.num_workers),
    "--seed", str(snakemake.params.seed),
    "--threads", str(snakemake.threads),
    "--gpus", str(trainer.get("gpus", 0)),
    "--logfile", snakemake.log[0],
]  # fmt: skip
if hasattr(snakemake.input, "image_cache"):
    argv += ["--image-cache", snakemake.input.image_cache]
if snakemake.wildcards.model == "geoest":
    argv += ["--partitions", os.path.dirname(snakemake.input.hierarchy)]
sys.exit(main(argv))
