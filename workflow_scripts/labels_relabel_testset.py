"""Rule relabel_testset: label one test set with the training set's LS edges and partitions."""

import json

from geoens.core.logs import setup_logging
from geoens.geo.labels import run_relabel_testset

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
inp, out = snakemake.input, snakemake.output
summary = run_relabel_testset(
    metadata=inp.metadata,
    images_dir=inp.images,
    landscan=inp.landscan,
    landcover=inp.landcover,
    partitions={"coarse": inp.coarse, "middle": inp.middle, "fine": inp.fine},
    edges_json=inp.edges,
    out_parquet=out.labels,
    summary_json=out.summary,
    labels_cfg=json.loads(snakemake.params.labels),
    dataset=snakemake.wildcards.testset,
    masks_cfg=json.loads(snakemake.params.masks),
)
log.info("kept %d of %d rows", summary["rows_kept"], summary["rows_total"])
