"""RvA / GCD tables of one test set, original and balanced (rule tables)."""

import json

import pandas as pd

from geoens.core.logs import setup_logging
from geoens.reports.tables import KINDS, with_external, write_tables

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
cfg = json.loads(snakemake.params.evaluate)
out = snakemake.output
outputs = {kind: {fmt: out[f"{kind}_{fmt}"] for fmt in ("csv", "md", "tex")} for kind in KINDS}
summaries = write_tables(
    with_external(pd.read_parquet(snakemake.input.per_image), json.loads(snakemake.params.external)),
    snakemake.wildcards.testset,
    outputs,
    n_boot=int(cfg["bootstrap"]),
    seed=int(snakemake.params.seed),
    balanced_seed=int(cfg["balanced_seed"]),
    demo=bool(snakemake.params.demo),
)
for kind, s in summaries.items():
    log.info("%s: %d images, LS bucket counts %s", kind, s.n_images, s.bucket_counts)
