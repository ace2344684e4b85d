"""Recall per ground-truth LS bucket figure (rule figure_buckets)."""

import json

from geoens.core.logs import setup_logging
from geoens.reports.figures import buckets_figure, read_per_image

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
named = {k: v for k, v in snakemake.input.items() if k != "external"}
per_image = read_per_image(named, json.loads(snakemake.params.external))
buckets_figure(per_image, snakemake.output.pdf, None, demo=bool(snakemake.params.demo))
log.info("wrote %s", snakemake.output.pdf)
