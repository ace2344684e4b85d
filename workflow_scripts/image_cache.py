"""Rule image_cache: decode the training shards once into a uint8 array, when the images are small."""

from geoens.core.logs import setup_logging
from geoens.models.datasets import ShardIndex
from geoens.models.imagecache import build_shard_cache

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
index = ShardIndex.load(snakemake.input.index, snakemake.input.shards)
meta = build_shard_cache(snakemake.input.shards, index, snakemake.output.cache)
log.info("image cache %s: %s", snakemake.output.cache, meta)
