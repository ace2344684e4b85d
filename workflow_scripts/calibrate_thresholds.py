"""Split-conformal thresholds of every method, kind and level from the val scores (rule calibrate)."""

import json

import pandas as pd

from geoens.core.io import read_json, write_json
from geoens.core.logs import setup_logging
from geoens.evaluation.calibrate import calibrate_scores

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
cfg = json.loads(snakemake.params.calibrate)
records = calibrate_scores(
    pd.read_parquet(snakemake.input.scores),
    cfg["coverages"],
    fraction=float(cfg["fraction"]),
    seed=int(snakemake.params.seed),
)
fits = read_json(snakemake.input.tempered)
for path in snakemake.output.calibration:
    slug = path.rsplit("/", 1)[-1].removesuffix(".json")
    if slug not in records:
        raise ValueError(f"{snakemake.input.scores}: no scores of method {slug!r}")
    rec = records[slug]
    if rec["method"].endswith("(tempered)"):
        rec["tempered"] = fits[rec["base"]]
    write_json(path, rec)
    log.info("%s: n = %d, thresholds %s", slug, rec["n"], json.dumps(rec["thresholds"]))
