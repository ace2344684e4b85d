"""The run's own GeoEst. and GeoCLIP predictions of one dataset in the external-model contract (rule
export_predictions): both as cells over the fine partition, GeoCLIP also as its top-k gallery points and as
one point (its top-1)."""

from geoens.core.logs import setup_logging
from geoens.evaluation.external_workflow import export_cells, export_top1_point, export_top_k_points
from geoens.geo.partitions import read_partition_csv

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
inp, out = snakemake.input, snakemake.output
fine = read_partition_csv(inp.fine)
n = export_cells(inp.geoest, out.geoest)
log.info("%s: %d images as cells over %d fine cells", out.geoest, n, fine.lat_mean.size)
n = export_cells(inp.geoclip, out.geoclip)
log.info("%s: %d images as cells", out.geoclip, n)
k = int(snakemake.params.top_k)
n = export_top_k_points(inp.geoclip, out.geoclip_points, fine.lat_mean, fine.lon_mean, k)
log.info("%s: %d images as their top-%d fine-cell locations (points)", out.geoclip_points, n, k)
n = export_top1_point(inp.geoclip, out.geoclip_point, fine.lat_mean, fine.lon_mean)
log.info("%s: %d images as their top-1 fine-cell location (point)", out.geoclip_point, n)
