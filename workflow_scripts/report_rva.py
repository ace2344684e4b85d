"""Recall-vs-Area figure over all test sets (rule figure_rva)."""

import json

from geoens.core.logs import setup_logging
from geoens.reports.figures import read_per_image, rva_figure

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
cfg = json.loads(snakemake.params.evaluate)
named = {k: v for k, v in snakemake.input.items() if k != "external"}
per_image = read_per_image(named, json.loads(snakemake.params.external))
rva_figure(
    per_image,
    snakemake.output.pdf,
    snakemake.output.png,
    n_boot=int(cfg["bootstrap"]),
    seed=int(snakemake.params.seed),
    balanced_seed=int(cfg["balanced_seed"]),
    demo=bool(snakemake.params.demo),
    n_alphas=int(cfg["curve_points"]),
)
log.info("wrote %s and %s for test sets %s", snakemake.output.pdf, snakemake.output.png, sorted(per_image))
