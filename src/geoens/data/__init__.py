"""The label and image data on disk: geotag metadata, image shards and label tables, each read in one place.

- :mod:`geoens.data.metadata`    metadata CSVs (``IMG_ID,LAT,LON``): reading, cleaning, bad-row accounting;
- :mod:`geoens.data.shards`      msgpack shards of images: listing, ids, record scan and reads, writing;
- :mod:`geoens.data.labeltable`  label tables (the relabel stage's Parquet): schema, writers, the one reader.

Decoding images into tensors is :mod:`geoens.models.datasets`' (it needs torch).

May import: geoens.core.
"""
