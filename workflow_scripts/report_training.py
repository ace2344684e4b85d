"""Validation accuracy of every trained predictor against its majority baseline (rule training_table)."""

from geoens.core.io import read_json
from geoens.core.logs import setup_logging
from geoens.reports.tables import write_training_table

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
summaries = {
    model: read_json(path)
    for model, path in zip(snakemake.params.models, snakemake.input.summaries, strict=True)
}
out = snakemake.output
df = write_training_table(summaries, out.csv, out.md, demo=bool(snakemake.params.demo))
for row in df.itertuples(index=False):
    log.info("%s/%s: val accuracy %.3f, majority %.3f", row.model, row.head, row.val_acc, row.majority_acc)
