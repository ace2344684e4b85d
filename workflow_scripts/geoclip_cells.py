"""GeoCLIP location embeddings of every fine S2 cell's mean location (cached once per partition)."""

from geoens.core.logs import setup_logging
from geoens.models.geoclip.cells import cell_embeddings

snakemake = globals()["snakemake"]
log = setup_logging(snakemake.log[0])
emb = cell_embeddings(
    snakemake.input.fine, cache_path=snakemake.output.emb, batch_size=int(snakemake.params.batch_size)
)
log.info("wrote %s: %d cells x %d", snakemake.output.emb, emb.shape[0], emb.shape[1])
