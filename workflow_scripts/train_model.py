"""Rule train: run ``python -m geoens.models.predictors`` for one predictor (as torchrun when gpus > 1).

Exits 75 after SIGTERM/SIGUSR1 once a checkpoint is saved, so the retried job resumes mid-epoch. The
checkpoint and progress intervals come from ``config["train"]``, not from ``params:``: changing them does
not make a finished model stale.
"""

import json
import os
import sys

from geoens.models.predictors import main

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
    "--checkpoint-every-steps", str(snakemake.config["train"]["checkpoint_every_steps"]),
    "--progress-every-s", str(snakemake.config["train"]["progress_every_s"]),
]  # fmt: skip
if hasattr(snakemake.input, "image_cache"):
    argv += ["--image-cache", snakemake.input.image_cache]
if snakemake.wildcards.model == "geoest":
    argv += ["--partitions", os.path.dirname(snakemake.input.hierarchy)]
sys.exit(main(argv))
