"""The three masks -> atom table + atom index raster (rule atoms)."""

import json
import time

from geoens.core.config import grid_from_config
from geoens.core.logs import setup_logging
from geoens.geo.atoms import make_atoms
from geoens.geo.landcover import check_lc_coverage
from geoens.geo.rasters import read_label_raster

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
grid = grid_from_config({"grid": json.loads(snakemake.params.grid)})
start = time.perf_counter()
# before the atoms: a land cover that leaves most populated land without a class is the wrong file
share = check_lc_coverage(
    read_label_raster(snakemake.input.ls, grid)[0],
    read_label_raster(snakemake.input.lc, grid)[0],
    float(snakemake.params.min_lc_share),
    f"{snakemake.input.lc} (from {snakemake.params.landcover})",
)
log.info("land cover covers %.1f%% of the pixels with LandScan data", 100 * share)
summary = make_atoms(
    snakemake.input.s2,
    snakemake.input.ls,
    snakemake.input.lc,
    grid,
    snakemake.output.atoms,
    snakemake.output.index,
)
log.info("atoms: %s", json.dumps(summary, sort_keys=True))
log.info("done in %.1f s", time.perf_counter() - start)
