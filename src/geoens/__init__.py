"""geoens: ensemble image geolocation with satellite-visible attribute predictors, scored by Recall vs Area.

Modules, one concept each:

- :mod:`geoens.constants`  every fixed number and class table (radii, class merges, nodata values).
- :mod:`geoens.config`     load and validate a workflow config against the JSON Schema.
- :mod:`geoens.grid`       the common equirectangular grid, pixel areas, point -> pixel.
- :mod:`geoens.demo`       the synthetic demo world (rasters, msgpack shards, test sets).
- :mod:`geoens.rasters`    native raster checks and strip reads, label raster (GeoTIFF) writing and previews.
- :mod:`geoens.s2`         vectorised S2 cell ids (cell math only).
- :mod:`geoens.buckets`    the LS bucket rule: edges, bucketize, ``ls_edges.json``.
- :mod:`geoens.metadata`   metadata CSVs: reading, cleaning, bad-row accounting.
- :mod:`geoens.shards`     msgpack shards: ids, record scan, record reads.
- :mod:`geoens.partitions` GeoEstimation-style adaptive S2 partitions, CSV I/O, hierarchy.
- :mod:`geoens.landcover`  land-cover class table, block mode, legend and coverage checks.
- :mod:`geoens.masks`      the LS and LC masks on the grid (block mean / block mode by strips).
- :mod:`geoens.s2mask`     the S2 mask: partition rasterisation and absorption.
- :mod:`geoens.labels`     relabelling geotags with raster attributes, splits, urban cap, label tables.
- :mod:`geoens.atoms`      the atom table on which evaluation runs.
- :mod:`geoens.data`       image datasets over msgpack shards and image folders.
- :mod:`geoens.train`      timm classifiers (LS, LC, GeoEstimation-style base model): training, prediction.
- :mod:`geoens.training`   the training runtime shared by both trainers (device, seeding, epochs, outputs).
- :mod:`geoens.geoclip`    GeoCLIP scored on S2 cells (location encoder, cell cache, towers, stages).
- :mod:`geoens.methods`    methods (ensembles) and Alg. 1 class scores, the urban prior.
- :mod:`geoens.lookup`     atom index lookups (in memory or by windows of the tiled GeoTIFF).
- :mod:`geoens.rva`        Algorithms 2-3 on atom groups (dense engine), per-image results, grid top-1.
- :mod:`geoens.rva_fast`   the threshold-form and torch engines of Algorithms 2-3.
- :mod:`geoens.evaluator`  the evaluator of every method on batches of images.
- :mod:`geoens.evaluation` test-set evaluation (per-image table), predictions readers.
- :mod:`geoens.metrics`    Recall vs Area, GCD accuracy, balanced sets, bootstrap intervals.
- :mod:`geoens.conformal`  upper sets and conformal quantiles; :mod:`geoens.calibrate` the calibration.
- :mod:`geoens.tables`     result tables; :mod:`geoens.report` figures.
"""

__version__ = "0.1.0"
