"""Rule shard_index: index the training msgpack shards once (id -> shard, byte offset, length)."""

from geoens.core.io import atomic_path
from geoens.core.logs import setup_logging
from geoens.models.datasets import ShardIndex

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
index = ShardIndex.build(snakemake.input.shards, show_progress=True)
with atomic_path(snakemake.output.index) as tmp:
    index.save(tmp)
log.info("indexed %d images in %d shards of %s", len(index), len(index.shards), snakemake.input.shards)
