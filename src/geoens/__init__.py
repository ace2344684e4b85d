"""geoens: ensemble image geolocation with satellite-visible attribute predictors, scored by Recall vs Area.

One subpackage per layer; a subpackage imports only those below it (docs/ARCHITECTURE.md draws the map,
tests/test_architecture.py enforces it):

- :mod:`geoens.apps`        entry points: the ``geoens`` command, ``geoens search``;
- :mod:`geoens.demo`        the synthetic demo world and the full-size rehearsal inputs;
- :mod:`geoens.reports`     result tables and figures;
- :mod:`geoens.evaluation`  methods (ensembles), Recall vs Area, metrics, calibrated regions;
- :mod:`geoens.models`      networks, image datasets, training, prediction, GeoCLIP (the torch side);
- :mod:`geoens.geo`         S2 cells, partitions, rasters, masks, atoms, relabelled geotags;
- :mod:`geoens.data`        metadata CSVs, image shards, label tables;
- :mod:`geoens.core`        constants, the grid, the config, atomic I/O, logging, array types.
"""

__version__ = "0.1.0"
