"""A point model's vMF kappa fitted on its val predictions by maximum likelihood (rule external_kappa)."""

import json

from geoens.core.io import write_json
from geoens.core.logs import setup_logging
from geoens.evaluation.external_workflow import external_spec, fit_point_kappa

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
spec = external_spec(snakemake.wildcards.ext, json.loads(snakemake.params.model))
fit = fit_point_kappa(spec, snakemake.input.predictions, snakemake.input.labels)
write_json(snakemake.output.kappa, fit)
log.info("%s: kappa %.4g fitted on %d of %d val images", spec.name, fit["kappa"], fit["n_fit"], fit["n_val"])
