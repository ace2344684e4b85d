"""Ensembled probability maps of a few test images (rule figure_probmap)."""

import json

from geoens.core.logs import setup_logging
from geoens.reports.figures import probmap_figure

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
grid_cfg = json.loads(snakemake.params.grid)
cfg = json.loads(snakemake.params.evaluate)
inp = snakemake.input
probmap_figure(
    inp.atoms,
    inp.atom_index,
    inp.absorption,
    inp.labels,
    inp.fine,
    {m: p for m, p in inp.items() if m in ("ls", "lc", "geoest", "geoclip")},
    snakemake.output.png,
    n_examples=int(cfg["probmap_examples"]),
    base=str(cfg["probmap_base"]),
    earth_radius_km=float(grid_cfg.get("earth_radius_km", 6371.0088)),
    demo=bool(snakemake.params.demo),
)
log.info("wrote %s", snakemake.output.png)
