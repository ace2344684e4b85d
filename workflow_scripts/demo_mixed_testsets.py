"""Generate the demo's test sets drawn with a set population mix (rule demo_mixed_testsets)."""

import json

from geoens.core.logs import setup_logging
from geoens.demo.generate import generate_mixed_testset
from geoens.demo.spec import config_from_params, spec_from_config

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
cfg = config_from_params(snakemake.params.seed, snakemake.params.grid, snakemake.params.demo)
out = {name: path for name, path in snakemake.output.items()}
for name in sorted(spec_from_config(cfg).mixes):
    summary = generate_mixed_testset(cfg, name, out)
    log.info("mixed test set %s: %s", name, json.dumps(summary, sort_keys=True))
