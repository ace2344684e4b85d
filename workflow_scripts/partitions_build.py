"""Rule partitions: S2 partitions (built from the training geotags or read from CSVs) and their hierarchy."""

import json

from geoens.core.logs import setup_logging
from geoens.geo.partitions import run_partitions

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
cfg = json.loads(snakemake.params.partitions)
report = run_partitions(
    snakemake.input.get("metadata"),
    cfg,
    {key: snakemake.output[key] for key in ("coarse", "middle", "fine", "hierarchy")},
    max_bad_fraction=float(snakemake.params.max_bad_fraction),
    csv_paths={lv: snakemake.input[lv] for lv in ("coarse", "middle", "fine")}
    if cfg["source"] == "csv"
    else None,
)
log.info("partitions (%s): %s", cfg["source"], report)
