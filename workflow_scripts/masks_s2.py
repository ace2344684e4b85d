"""Fine S2 partition -> cell-label mask on the common grid + absorption table (rule mask_s2)."""

import json
import time

from geoens.core.config import grid_from_config
from geoens.core.logs import setup_logging
from geoens.geo.s2mask import make_s2_mask

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
grid = grid_from_config({"grid": json.loads(snakemake.params.grid)})
start = time.perf_counter()
counts = make_s2_mask(
    snakemake.input.fine, grid, snakemake.output.tif, snakemake.output.absorption, snakemake.output.png
)
log.info("S2 mask: %s", json.dumps(counts, sort_keys=True))
log.info("done in %.1f s", time.perf_counter() - start)
