"""Figure: coverage vs mean region area per test set and base model (rule figure_coverage)."""

import pandas as pd

from geoens.core.logs import setup_logging
from geoens.reports.coverage import coverage_figure

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
tables = {
    ts: pd.read_csv(path) for ts, path in zip(snakemake.params.testsets, snakemake.input.tables, strict=True)
}
coverage_figure(tables, snakemake.output.pdf, snakemake.output.png, demo=bool(snakemake.params.demo))
log.info("wrote %s", snakemake.output.pdf)
