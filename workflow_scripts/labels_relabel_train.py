"""Rule relabel_train: label the training set into Parquet shards, derive the LS bucket edges."""

import json

from geoens.core.logs import setup_logging
from geoens.geo.labels import run_relabel_train

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
inp, out = snakemake.input, snakemake.output
summary = run_relabel_train(
    metadata=inp.metadata,
    shards_dir=inp.shards_dir,
    landscan=inp.landscan,
    landcover=inp.landcover,
    partitions={"coarse": inp.coarse, "middle": inp.middle, "fine": inp.fine},
    out_dir=out.shards,
    edges_json=out.edges,
    summary_json=out.summary,
    labels_cfg=json.loads(snakemake.params.labels),
    seed=int(snakemake.params.seed),
    dataset=snakemake.params.dataset,
    processes=snakemake.threads,
    masks_cfg=json.loads(snakemake.params.masks),
)
log.info("kept %d of %d rows; split %s", summary["rows_kept"], summary["rows_total"], summary["split"])
