"""Cache one model's per-image probabilities on one dataset (rule predict)."""

import torch

from geoens.core.logs import setup_logging
from geoens.models.predictors import predict_to_parquet, prediction_dataset

snakemake = globals()["snakemake"]

log = setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
source, ids = prediction_dataset(
    snakemake.wildcards.dataset,
    snakemake.input.labels,
    snakemake.input.images,
    snakemake.input.get("index"),
)
log.info("predicting %d images of %s with %s", len(ids), snakemake.wildcards.dataset, snakemake.input.model)
summary = predict_to_parquet(
    snakemake.input.model,
    source,
    ids,
    snakemake.output.probs,
    snakemake.output.skipped,
    batch_size=int(snakemake.params.batch_size),
    num_workers=int(snakemake.params.num_workers),
    device=str(snakemake.params.device),
    show_progress=True,
)
log.info("%d predicted, %d skipped (unreadable images)", summary["n_predicted"], summary["n_skipped"])
