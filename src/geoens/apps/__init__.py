"""Entry points: what a user runs once a workflow has finished.

- :mod:`geoens.apps.cli`     the ``geoens`` command: ``validate`` and ``search``;
- :mod:`geoens.apps.search`  ``geoens search``: ranked and calibrated regions for new photos, written as
  GeoTIFF/GeoJSON/GPKG/PNG.

May import: geoens.core, geoens.data, geoens.geo, geoens.models, geoens.evaluation, geoens.reports.
"""
