"""ESA CCI land cover -> 7-class LC mask on the common grid (rule mask_lc)."""

import json
import time

from geoens.core.config import grid_from_config
from geoens.core.logs import setup_logging
from geoens.geo.masks import make_lc_mask

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
grid = grid_from_config({"grid": json.loads(snakemake.params.grid)})
start = time.perf_counter()
summary = make_lc_mask(
    snakemake.input.landcover,
    grid,
    snakemake.output.tif,
    snakemake.output.png,
    progress=True,
    unknown_codes=snakemake.params.unknown_lc_codes,
)
log.info("LC mask: %s", json.dumps(summary, sort_keys=True))
log.info("done in %.1f s", time.perf_counter() - start)
