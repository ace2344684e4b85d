"""One external model's predictions of one dataset as cells over the fine partition (rule external_cells)."""

import json

from geoens.core.io import read_json
from geoens.core.logs import setup_logging
from geoens.evaluation.external_workflow import RunFiles, external_cells, external_spec

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
inp = snakemake.input
spec = external_spec(snakemake.wildcards.ext, json.loads(snakemake.params.model))
run = RunFiles.from_inputs(dict(inp.items()), json.loads(snakemake.params.grid))
kappa_file = inp.get("kappa")
kappa = float(read_json(kappa_file)["kappa"]) if kappa_file else None
n = external_cells(spec, inp.predictions, snakemake.output.cells, run, kappa=kappa)
log.info("%s (%s): %d images -> %s", inp.predictions, spec.kind, n, snakemake.output.cells)
