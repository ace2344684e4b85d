"""One external model's predictions of one dataset as cells over its partition (rule external_cells)."""

import json

from geoens.core.logs import setup_logging
from geoens.evaluation.external_workflow import external_cells, external_spec

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
inp = snakemake.input
spec = external_spec(snakemake.wildcards.ext, json.loads(snakemake.params.model))
n = external_cells(spec, inp.predictions, snakemake.output.cells, inp.fine)
log.info("%s (%s): %d images -> %s", inp.predictions, spec.kind, n, snakemake.output.cells)
