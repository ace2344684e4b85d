"""Every method of one external model on one test set -> per-image results (rule evaluate_external)."""

import json

from geoens.core.io import atomic_path
from geoens.core.logs import setup_logging
from geoens.evaluation.external_workflow import evaluate_external_cells, external_spec

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
inp = snakemake.input
name = snakemake.wildcards.ext
spec = external_spec(name, json.loads(snakemake.params.model))
grid_cfg = json.loads(snakemake.params.grid)
cfg = json.loads(snakemake.params.evaluate)
run = {k: inp[k] for k in ("atoms", "atom_index", "absorption", "labels", "fine", "ls", "lc")}
df = evaluate_external_cells(
    spec,
    inp.cells,
    run,
    earth_radius_km=float(grid_cfg.get("earth_radius_km", 6371.0088)),
    batch_size=int(cfg["batch_size"]),
    chunk_elements=int(cfg["chunk_elements"]),
    threads=int(snakemake.threads),
    points=inp.get("points"),
)
with atomic_path(snakemake.output.per_image) as tmp:
    df.to_parquet(tmp, index=False)
log.info("wrote %s: %d rows, %d images", snakemake.output.per_image, len(df), df["image_id"].nunique())
