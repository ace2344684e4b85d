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
- :mod:`geoens.atoms`      the atom table on which evaluation runs.
- :mod:`geoens.data`       image datasets over msgpack shards and image folders.
- :mod:`geoens.train`      timm classifiers (LS, LC, GeoEstimation-style base model): training, prediction.
- :mod:`geoens.training`   the training runtime shared by both trainers (device, seeding, epochs, outputs).
- :mod:`geoens.geoclip`    GeoCLIP scored on S2 cells (location encoder, cell cache, towers, stages).
- :mod:`geoens.rva`        Algorithms 1-3 on atoms, Recall vs Area, GCD, balanced sets.
- :mod:`geoens.report`     tables and figures.
"""

__version__ = "0.1.0"
