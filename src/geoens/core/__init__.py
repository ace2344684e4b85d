"""Foundations: the numbers, the grid and the plumbing every other subpackage builds on.

- :mod:`geoens.core.constants`  every fixed number and class table (radii, nodata values, LS buckets, LC
  merges, cap areas);
- :mod:`geoens.core.types`      numpy array type aliases;
- :mod:`geoens.core.io`         atomic writes, JSON, writability checks, folder fingerprints;
- :mod:`geoens.core.logs`       logging to a workflow log file;
- :mod:`geoens.core.grid`       the equirectangular grid: pixel areas, point -> pixel, haversine;
- :mod:`geoens.core.config`     the effective config of a run: files, overrides, schema defaults, validation.

May import: no other geoens subpackage.
"""
