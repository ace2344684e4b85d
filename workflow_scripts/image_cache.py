"""Rule image_cache: decode the training shards once into a uint8 array, when the images are small."""

from geoens.data import ShardIndex
from geoens.imagecache import build_shard_cache
from geoens.logs import setup_logging

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
index = ShardIndex.load(snakemake.input.index, snakemake.input.shards)
meta = build_shard_cache(snakemake.input.shards, index, snakemake.output.cache)
log.info("image cache %s: %s", snakemake.output.cache, meta)
