"""Algorithms 1-3 on atoms for every method of one test set -> per-image results (rule evaluate)."""

import json
import time

from tqdm import tqdm

from geoens.core.io import atomic_path
from geoens.core.logs import TqdmToLogger, setup_logging
from geoens.evaluation.testset import evaluate_testset

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
grid_cfg = json.loads(snakemake.params.grid)
cfg = json.loads(snakemake.params.evaluate)
inp = snakemake.input
named = dict(inp.items())
predictions = {m: named[m] for m in ("ls", "lc", "geoest", "geoclip") if m in named}
start = time.perf_counter()
with tqdm(desc="images x bases", unit="img", file=TqdmToLogger(log), mininterval=10) as bar:
    df = evaluate_testset(
        inp.atoms,
        inp.atom_index,
        inp.absorption,
        inp.labels,
        inp.fine,
        predictions,
        earth_radius_km=float(grid_cfg.get("earth_radius_km", 6371.0088)),
        batch_size=int(cfg["batch_size"]),
        chunk_elements=int(cfg["chunk_elements"]),
        progress=bar.update,
        threads=int(snakemake.threads),
    )
with atomic_path(snakemake.output.per_image) as tmp:
    df.to_parquet(tmp, index=False)
log.info(
    "wrote %s: %d rows, %d images, %d zero-probability rows, in %.1f s",
    snakemake.output.per_image,
    len(df),
    df["image_id"].nunique(),
    int(df["zero_prob"].sum()),
    time.perf_counter() - start,
)
