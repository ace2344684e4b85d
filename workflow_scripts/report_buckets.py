"""Recall per ground-truth LS bucket figure (rule figure_buckets)."""

from geoens.core.logs import setup_logging
from geoens.reports.figures import buckets_figure, read_per_image

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
per_image = read_per_image(dict(snakemake.input.items()))
buckets_figure(per_image, snakemake.output.pdf, None, demo=bool(snakemake.params.demo))
log.info("wrote %s", snakemake.output.pdf)
