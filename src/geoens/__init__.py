"""geoens: ensemble image geolocation with satellite-visible attribute predictors, scored by Recall vs Area.

Modules, one concept each:

- :mod:`geoens.constants`  every fixed number and class table (radii, class merges, nodata values).
- :mod:`geoens.config`     load and validate a workflow config against the JSON Schema.
- :mod:`geoens.grid`       the common equirectangular grid, pixel areas, point -> pixel.
- :mod:`geoens.demo`       the synthetic demo world (rasters, msgpack shards, test sets).
- :mod:`geoens.rasters`    raster checks, windowed block-mean / block-mode downsampling, GeoTIFF writing.
- :mod:`geoens.s2`         vectorised S2 cell ids and partition rasterisation with absorption.
- :mod:`geoens.partitions` GeoEstimation-style adaptive S2 partitions, CSV I/O, hierarchy.
- :mod:`geoens.labels`     relabelling geotags with raster attributes, LS bucket edges.
- :mod:`geoens.atoms`      the atom table on which evaluation runs (build, read, write).
- :mod:`geoens.data`       image datasets over msgpack shards and image folders.
- :mod:`geoens.train`      timm classifiers (LS, LC, GeoEstimation-style base model), training loop.
- :mod:`geoens.geoclip_adapter` GeoCLIP scored on S2 cells.
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
