"""Every method of one external model on one test set -> per-image results (rule evaluate_external)."""

import json

from geoens.core.io import atomic_path
from geoens.core.logs import setup_logging
from geoens.evaluation.external_workflow import RunFiles, evaluate_external_cells, external_spec

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
inp = snakemake.input
spec = external_spec(snakemake.wildcards.ext, json.loads(snakemake.params.model))
cfg = json.loads(snakemake.params.evaluate)
run = RunFiles.from_inputs(dict(inp.items()), json.loads(snakemake.params.grid))
df = evaluate_external_cells(
    spec,
    inp.cells,
    run,
    inp.labels,
    {"ls": inp.ls, "lc": inp.lc},
    batch_size=int(cfg["batch_size"]),
    threads=int(snakemake.threads),
    points=inp.get("points"),
)
with atomic_path(snakemake.output.per_image) as tmp:
    df.to_parquet(tmp, index=False)
log.info("wrote %s: %d rows, %d images, %d zero-probability rows", snakemake.output.per_image, len(df),
         df["image_id"].nunique(), int(df["zero_prob"].sum()))  # fmt: skip
