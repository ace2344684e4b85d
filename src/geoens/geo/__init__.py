"""Geography: S2 cells, partitions, native rasters, masks on the grid, atoms, and geotags labelled from them.

- :mod:`geoens.geo.s2`          S2 cell math on numpy arrays: leaf ids, parents, ranges, tokens, centres;
- :mod:`geoens.geo.buckets`     the LS bucket rule: edges from samples, ``bucketize``, ``ls_edges.json``;
- :mod:`geoens.geo.landcover`   the land-cover class table, block counts and mode, legend and coverage checks;
- :mod:`geoens.geo.rasters`     native rasters (GeoTIFF, NetCDF): open and check, windows; label rasters;
- :mod:`geoens.geo.partitions`  GeoEstimation partition CSVs, building partitions, the cell hierarchy;
- :mod:`geoens.geo.masks`       the LS and LC masks on the grid (strip reads, block mean / block mode);
- :mod:`geoens.geo.s2mask`      the S2 mask: partition rasterisation, absorption of cells without a pixel;
- :mod:`geoens.geo.labels`      relabelling geotags: point samples of the rasters, splits, urban cap;
- :mod:`geoens.geo.atoms`       the atom table and atom index: build (in memory or streamed), write, read;
- :mod:`geoens.geo.lookup`      point -> atom lookups, in memory or by windows of the tiled index.

May import: geoens.core, geoens.data.
"""
