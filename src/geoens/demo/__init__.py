"""The embedded synthetic demo world (DESIGN section 6): every workflow input, generated from one seed.

- :mod:`geoens.demo.spec`      the demo settings of a config (:class:`~geoens.demo.spec.DemoSpec`), output
  paths, random streams;
- :mod:`geoens.demo.world`     smooth fields on the sphere, population and land cover rasters, geotags;
- :mod:`geoens.demo.writers`   GeoTIFF/NetCDF rasters, metadata CSVs, image folders, contact sheets;
- :mod:`geoens.demo.images`    cameras and the vectorised image renderer;
- :mod:`geoens.demo.generate`  the whole world (:func:`~geoens.demo.generate.generate_world`) and small
  sample datasets for other stages' tests;
- :mod:`geoens.demo.rehearsal` full-size synthetic inputs in the real layouts (``make rehearsal``).

The msgpack shards of the training set are written by :mod:`geoens.data.shards`.

May import: geoens.core, geoens.data, geoens.geo.
"""
