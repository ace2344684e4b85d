"""GeoCLIP probabilities over the fine S2 cells for every image of one dataset (test set or val)."""

import torch

from geoens.core.logs import setup_logging
from geoens.models.geoclip.cells import read_cell_embeddings
from geoens.models.geoclip.stage import load_image_tower, prediction_inputs, run_predict

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
p = snakemake.params
cells, _ = read_cell_embeddings(snakemake.input.cells)
tower, logit_scale, transform = load_image_tower(p.image_tower, snakemake.input.get("model"), p.clip_model)
source, ids = prediction_inputs(
    snakemake.wildcards.dataset, snakemake.input.images, snakemake.input.labels, snakemake.input.get("index")
)
log.info("%s: %d images, %d cells, tower %s, logit scale %.3f", snakemake.wildcards.dataset, len(ids),
         cells.shape[0], p.image_tower, logit_scale)  # fmt: skip
counts = run_predict(
    source, ids, cells, tower, logit_scale, transform, snakemake.output.probs, snakemake.output.skipped,
    batch_size=int(p.batch_size), device=str(p.device), num_workers=int(p.num_workers), show_progress=True,
)  # fmt: skip
log.info("%d predicted, %d skipped (unreadable images)", counts["n_predicted"], counts["n_skipped"])
