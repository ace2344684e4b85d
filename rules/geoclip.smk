# GeoCLIP as the second base model, scored on the fine S2 cells (DESIGN section 4):
# p = softmax(logit_scale * cos(image embedding, location embedding of each fine cell's mean location)).
# The location encoder and logit scale are GeoCLIP's shipped weights (PyPI geoclip); the image tower is
# GeoCLIP's own CLIP ViT-L/14 + MLP (geoclip.image_tower: clip, local HF cache) or, for the demo, a small
# tower trained here into GeoCLIP's frozen location space (image_tower: trained).

# The image tower is trained here (not CLIP): rules/common.smk prediction_inputs then needs it.
GEOCLIP_TRAINED = config["geoclip"]["image_tower"] == "trained"


rule geoclip_cells:
    input:
        fine=upstream(rules.partitions.output.fine),
    output:
        emb="results/geoclip/cell_embeddings.parquet",
    log:
        "logs/geoclip/geoclip_cells.log",
    benchmark:
        "benchmarks/geoclip/geoclip_cells.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        batch_size=config["geoclip"]["embed_batch_size"],
    script:
        "../workflow_scripts/geoclip_cells.py"


rule geoclip_tower:
    input:
        **IMAGE_CACHE_INPUT,
        shards=config["inputs"]["train"]["shards_dir"],
        labels=upstream(rules.relabel_train.output.shards),
        index=upstream(rules.shard_index.output.index),
    output:
        model=protected("results/models/geoclip_tower/model.pt"),
        metrics="results/models/geoclip_tower/metrics.csv",
    log:
        "logs/geoclip/geoclip_tower.log",
    benchmark:
        "benchmarks/geoclip/geoclip_tower.tsv"
    conda:
        "../envs/torch.yaml"
    threads: TRAIN_THREADS
    resources:
        mem_mb=by_attempt(8000, 1.0),
        runtime=by_attempt(720, 0.5),
        # one process, one device (no DistributedDataParallel): never more than 1 GPU
        gpu=min(1, config["geoclip"]["tower"]["gpus"]),
    params:
        tower=params_of("geoclip", "tower"),
        shards=shards_fingerprint,
        queue_size=config["geoclip"]["queue_size"],
        gallery_negatives=config["geoclip"]["gallery_negatives"],
        learn_logit_scale=config["geoclip"]["learn_logit_scale"],
        seed=config["seed"],
        device=config["train"]["device"],
        num_workers=config["train"]["num_workers"],
    script:
        "../workflow_scripts/geoclip_tower.py"


rule geoclip_predict:
    input:
        unpack(prediction_inputs),
    output:
        probs="results/predictions/{dataset}/geoclip.parquet",
        skipped="results/predictions/{dataset}/geoclip.skipped.json",
    log:
        "logs/geoclip/geoclip_predict_{dataset}.log",
    benchmark:
        "benchmarks/geoclip/geoclip_predict_{dataset}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: max(1, config["train"]["num_workers"])
    resources:
        mem_mb=by_attempt(8000, 1.0),
        runtime=by_attempt(240, 0.5),
        gpu=min(1, config["geoclip"]["tower"]["gpus"]),
    params:
        image_tower=config["geoclip"]["image_tower"],
        images=dataset_fingerprint,
        clip_model=config["geoclip"]["clip_model"],
        batch_size=config["geoclip"]["predict_batch_size"],
        device=config["train"]["device"],
        num_workers=config["train"]["num_workers"],
    script:
        "../workflow_scripts/geoclip_predict.py"
