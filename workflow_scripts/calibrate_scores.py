"""Conformal scores of every image and method on a dataset; with calibration, its regions (rules
conformal_scores on val, coverage on each test set)."""

import json

import pandas as pd
from tqdm import tqdm

from geoens.core.constants import FAMILIES
from geoens.core.io import atomic_path, read_json
from geoens.core.logs import TqdmToLogger, setup_logging
from geoens.data.labeltable import read_label_points
from geoens.evaluation.calibrate import open_dataset, score_dataset
from geoens.evaluation.shiftcal import shift_thresholds, true_ls_shares

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
split = snakemake.params.split
ds = open_dataset(
    inp.atoms,
    inp.atom_index,
    inp.absorption,
    read_label_points(inp.labels, split=split or None)[["image_id", "lat", "lon"]],
    inp.fine,
    predictions,
    earth_radius_km=float(grid_cfg.get("earth_radius_km", 6371.0088)),
    chunk_elements=int(ev_cfg["chunk_elements"]),
    bases=[external] if external else None,
)
fits = read_json(inp.tempered)
weights = {b: [fits[b]["weights"][f] for f in FAMILIES] for b in fits}
calibration = None
if "calibration" in named:
    calibration = {}
    for path in inp.calibration:
        rec = read_json(path)
        calibration[rec["slug"]] = rec
extra = None
if "shift" in named:
    levels = sorted({float(lv) for rec in calibration.values() for lv in rec["levels"]})
    cfg = json.loads(snakemake.params.calibrate)
    extra = shift_thresholds(
        read_json(inp.shift),
        pd.read_parquet(inp.val_scores),
        levels,
        fraction=float(cfg["fraction"]),
        seed=int(snakemake.params.seed),
        oracle=true_ls_shares(ds),
    )
with tqdm(desc="images x bases", unit="img", file=TqdmToLogger(log), mininterval=10) as bar:
    scores, regions = score_dataset(
        ds,
        weights,
        calibration,
        batch_size=int(ev_cfg["batch_size"]),
        progress=bar.update,
        threads=int(snakemake.threads),
        extra=extra,
    )
with atomic_path(snakemake.output.scores) as tmp:
    scores.to_parquet(tmp, index=False)
if regions is not None:
    with atomic_path(snakemake.output.regions) as tmp:
        regions.to_parquet(tmp, index=False)
log.info(
    "%d images, %d zero-probability score rows", scores["image_id"].nunique(), int(scores["zero_prob"].sum())
)
