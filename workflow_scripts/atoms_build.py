"""The three masks -> atom table + atom index raster (rule atoms)."""

import json
import time

from geoens.atoms import make_atoms
from geoens.config import grid_from_config
from geoens.logs import setup_logging

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
grid = grid_from_config({"grid": json.loads(snakemake.params.grid)})
start = time.perf_counter()
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
