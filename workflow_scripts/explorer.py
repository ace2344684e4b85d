"""The offline map explorer of the run (rule explorer)."""

import json
from pathlib import Path

from geoens.core.logs import setup_logging
from geoens.reports.explorer import build_explorer

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
out = Path(snakemake.output.index).parent
results = Path(snakemake.input.atoms).parents[1]
r = build_explorer(
    results,
    out,
    sample=int(snakemake.params.sample),
    image_dirs=json.loads(snakemake.params.images),
    seed=int(snakemake.params.seed),
    calibration_subset=(float(snakemake.params.calibrate_fraction), int(snakemake.params.seed)),
)
log.info("explorer: %d photos, %d with regions, %d bytes -> %s", r["photos"], r["detail"], r["bytes"], out)
