"""Train the demo image tower into GeoCLIP's frozen location-embedding space (contrastive, GPS queue)."""

import json

import torch

from geoens.geoclip_adapter import TowerTrainConfig, run_train_tower
from geoens.logs import setup_logging

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
history = run_train_tower(
    snakemake.input.shards,
    snakemake.input.labels,
    snakemake.output.model,
    cfg,
    snakemake.output.metrics,
    shard_index=snakemake.input.index,
    image_cache=getattr(snakemake.input, "image_cache", None),
)
log.info("final epoch: %s", history[-1] if history else None)
