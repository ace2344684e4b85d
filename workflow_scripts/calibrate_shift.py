"""Estimate a test set's mix from its unlabelled predictions and the val scores (rule shift)."""

import json

import pandas as pd

from geoens.core.io import write_json
from geoens.core.logs import setup_logging
from geoens.evaluation.shiftcal import shift_record
from geoens.evaluation.testset import read_probs

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
inp = snakemake.input
cfg = json.loads(snakemake.params.calibrate)
record = shift_record(
    pd.read_parquet(inp.val_scores),
    {f: read_probs(inp[f"val_{f}"]) for f in ("ls", "lc")},
    {f: read_probs(inp[f"test_{f}"]) for f in ("ls", "lc")},
    min_tuple=int(cfg["shift_min_tuple"]),
    n_boot=int(cfg["shift_bootstrap"]),
    seed=int(snakemake.params.seed),
    fraction=float(cfg["fraction"]),
)
write_json(snakemake.output.shift, record)
log.info(
    "%s: LS mix (BBSE) %s; (LS, LC) labels %d, pooled %s",
    snakemake.wildcards.testset,
    json.dumps(record["ls"]["bbse"]["share"]),
    len(record["ls_lc"]["names"]),
    json.dumps(record["ls_lc"]["pooled"]),
)
