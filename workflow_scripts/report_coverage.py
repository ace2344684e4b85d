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
inp = snakemake.input
# the built-in models' files, then the external models' (rules/external.smk), in name order
regions = pd.concat([pd.read_parquet(p) for p in [inp.regions, *inp.external_regions]], ignore_index=True)
scores = pd.concat([pd.read_parquet(p) for p in [inp.scores, *inp.external_scores]], ignore_index=True)
fits = {}
for path in [inp.tempered, *inp.external_tempered]:
    fits.update(read_json(path))
cov = coverage_table(regions, n_boot, seed)
md = coverage_markdown(cov, testset, n_boot, demo)
if "shift" in dict(inp.items()):
    md += "\n" + mix_markdown(read_json(inp.shift), scores, testset)
write_table(cov, md, out.coverage_csv, out.coverage_md)
weights = {b: fits[b]["weights"] for b in fits}
temp = tempered_table(scores, n_boot, seed)
write_table(temp, tempered_markdown(temp, testset, weights, n_boot, demo), out.tempered_csv, out.tempered_md)
log.info("%s: %d coverage rows, %d tempered rows", testset, len(cov), len(temp))
