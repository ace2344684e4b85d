"""Fit the tempered ensemble's weights of every base model on the val split (rule tempered_fit)."""

import json

from geoens.core.io import write_json
from geoens.core.logs import setup_logging
from geoens.data.labeltable import read_label_points
from geoens.evaluation.calibrate import fit_tempered, open_dataset

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
inp = snakemake.input
grid_cfg = json.loads(snakemake.params.grid)
ev_cfg = json.loads(snakemake.params.evaluate)
named = dict(inp.items())
# an external model (rules/external.smk): its cells over the fine partition, scored under its name
external = str(snakemake.params.get("external") or "")
predictions = {m: named[m] for m in ("ls", "lc", "geoest", "geoclip") if m in named}
if external:
    predictions[external] = named["cells"]
ds = open_dataset(
    inp.atoms,
    inp.atom_index,
    inp.absorption,
    read_label_points(inp.labels, split="val")[["image_id", "lat", "lon"]],
    inp.fine,
    predictions,
    earth_radius_km=float(grid_cfg.get("earth_radius_km", 6371.0088)),
    chunk_elements=int(ev_cfg["chunk_elements"]),
    bases=[external] if external else None,
)
out = {}
for base in ds.bases:
    fit = fit_tempered(
        ds,
        base,
        batch_size=int(ev_cfg["batch_size"]),
        max_images=int(snakemake.params.max_images),
        seed=int(snakemake.params.seed),
    )
    out[base] = fit.as_dict()
    log.info("%s: %s", base, json.dumps(out[base], sort_keys=True))
write_json(snakemake.output.weights, out)
