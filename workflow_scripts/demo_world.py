"""Generate the synthetic demo world: every input of the config, in the real formats (rule demo_world)."""

import json
import time

from geoens.core.logs import setup_logging
from geoens.demo.generate import generate_world

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
cfg = {
    "seed": int(snakemake.params.seed),
    "grid": json.loads(snakemake.params.grid),
    "demo": json.loads(snakemake.params.demo),
}
out = {name: path for name, path in snakemake.output.items()}
start = time.perf_counter()
summary = generate_world(cfg, out, progress=log.info)
log.info("demo world summary: %s", json.dumps(summary, sort_keys=True))
log.info("demo world generated in %.1f s", time.perf_counter() - start)
