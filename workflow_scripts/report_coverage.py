"""Coverage table and tempered-vs-product table of one test set (rule coverage_table)."""

import json

import pandas as pd

from geoens.core.io import read_json
from geoens.core.logs import setup_logging
from geoens.reports.coverage import (
    coverage_markdown,
    coverage_table,
    mix_markdown,
    tempered_markdown,
    tempered_table,
    write_table,
)

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
cfg = json.loads(snakemake.params.evaluate)
n_boot, seed, demo = int(cfg["bootstrap"]), int(snakemake.params.seed), bool(snakemake.params.demo)
testset = snakemake.wildcards.testset
out = snakemake.output
cov = coverage_table(pd.read_parquet(snakemake.input.regions), n_boot, seed)
scores = pd.read_parquet(snakemake.input.scores)
md = coverage_markdown(cov, testset, n_boot, demo)
if "shift" in dict(snakemake.input.items()):
    md += "\n" + mix_markdown(read_json(snakemake.input.shift), scores, testset)
write_table(cov, md, out.coverage_csv, out.coverage_md)
fits = read_json(snakemake.input.tempered)
weights = {b: fits[b]["weights"] for b in fits}
temp = tempered_table(scores, n_boot, seed)
write_table(temp, tempered_markdown(temp, testset, weights, n_boot, demo), out.tempered_csv, out.tempered_md)
log.info("%s: %d coverage rows, %d tempered rows", testset, len(cov), len(temp))
