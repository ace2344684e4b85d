"""Train the demo image tower into GeoCLIP's frozen location-embedding space (contrastive, GPS queue).

Resumable like rule train: a checkpoint every ``train.checkpoint_every_steps`` steps and after
SIGTERM/SIGUSR1, then exit 75 so that the retried job resumes mid-epoch. The tower trains in one process on
one device (no DistributedDataParallel), so the rule requests ``min(1, geoclip.tower.gpus)`` GPUs.
"""

import json
import sys

import torch

from geoens.core.constants import EXIT_RESUMABLE
from geoens.core.logs import setup_logging
from geoens.models.checkpoint import StopSignals, TrainingInterrupted
from geoens.models.geoclip.stage import run_train_tower
from geoens.models.geoclip.training import TowerTrainConfig

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
p = snakemake.params
cfg = TowerTrainConfig.from_config(
    json.loads(p.tower),
    queue_size=int(p.queue_size),
    gallery_negatives=int(p.gallery_negatives),
    learn_logit_scale=bool(p.learn_logit_scale),
    seed=int(p.seed),
    device=str(p.device),
    num_workers=int(p.num_workers),
)
log.info("geoclip tower config: %s", cfg)
if cfg.gpus > 1:
    log.warning("geoclip.tower.gpus is %d but the tower trains on one GPU; the job requests 1", cfg.gpus)
train_cfg = snakemake.config["train"]
with StopSignals() as signals:
    try:
        history = run_train_tower(
            snakemake.input.shards,
            snakemake.input.labels,
            snakemake.output.model,
            cfg,
            snakemake.output.metrics,
            shard_index=snakemake.input.index,
            checkpoint_every_steps=int(train_cfg["checkpoint_every_steps"]),
            progress_every_s=float(train_cfg["progress_every_s"]),
            signals=signals,
            image_cache=getattr(snakemake.input, "image_cache", None),
        )
    except TrainingInterrupted:
        sys.exit(EXIT_RESUMABLE)
log.info("final epoch: %s", history[-1] if history else None)
