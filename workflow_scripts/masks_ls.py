"""LandScan -> LS bucket mask on the common grid (rule mask_ls)."""

import json
import time

from geoens.core.config import grid_from_config
from geoens.core.logs import setup_logging
from geoens.geo.masks import make_ls_mask

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
grid = grid_from_config({"grid": json.loads(snakemake.params.grid)})
start = time.perf_counter()
summary = make_ls_mask(
    snakemake.input.landscan,
    snakemake.input.edges,
    grid,
    snakemake.output.tif,
    snakemake.output.png,
    fallback=json.loads(snakemake.params.edges_fallback),
    progress=True,
)
log.info("LS mask: %s", json.dumps(summary, sort_keys=True))
log.info("done in %.1f s", time.perf_counter() - start)
