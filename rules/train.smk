# Train stage (paper section 5.1): the LS and LC attribute classifiers and the GeoEstimation-style base model
# base(M, f*) (three partition heads, hierarchical fine-cell probabilities), then per-image probabilities
# cached for every prediction dataset (each test set and the training set's val split).
# Training resumes from results/models/<model>/checkpoint.pt (not an output, never temp) after a kill.
# With train.models.<model>.gpus > 1 the script re-launches itself as `torchrun --nproc_per_node=<gpus>`.
# SIGTERM/SIGUSR1 (SLURM's warning before a time limit or preemption) make train checkpoint mid-epoch and exit
# 75; the retry (more memory and time per attempt) resumes there. docs/cluster.md, "Time limits".


from geoens.models.imagecache import image_cache_enabled

TRAIN_MODELS = ["ls", "lc", "geoest"]
# Threads of each training job: loader workers need cores; the cached path needs only torch's threads.
TRAIN_THREADS = config["train"]["threads"] or max(2, config["train"]["num_workers"])
# Decoded training images (train.image_cache: auto; the folder says when the images were too large to cache).
USE_IMAGE_CACHE = image_cache_enabled(config["train"]["image_cache"])


rule shard_index:
    input:
        shards=config["inputs"]["train"]["shards_dir"],
    output:
        index="results/models/shard_index.parquet",
    log:
        "logs/train/shard_index.log",
    benchmark:
        "benchmarks/train/shard_index.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        shards=shards_fingerprint,
    script:
        "../workflow_scripts/shard_index.py"


rule image_cache:
    input:
        shards=config["inputs"]["train"]["shards_dir"],
        index=upstream(rules.shard_index.output.index),
    output:
        cache=directory("results/models/image_cache"),
    log:
        "logs/train/image_cache.log",
    benchmark:
        "benchmarks/train/image_cache.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc: 3000 if DEMO else 6000,
        runtime=lambda wc: 10 if DEMO else 60,
    params:
        shards=shards_fingerprint,
    script:
        "../workflow_scripts/image_cache.py"


# The image cache as an input of the training jobs (rules train and geoclip_tower), when it is used.
IMAGE_CACHE_INPUT = (
    {"image_cache": upstream(rules.image_cache.output.cache)} if USE_IMAGE_CACHE else {}
)


rule train:
    input:
        unpack(train_inputs),
    output:
        model=protected("results/models/{model}/model.pt"),
        metrics="results/models/{model}/metrics.csv",
        curve=report(
            "results/models/{model}/curve.png",
            caption="../docs/captions/train_curve.rst",
            category="Training",
            subcategory="{model}",
        ),
        confusion=report(
            "results/models/{model}/confusion.png",
            caption="../docs/captions/train_confusion.rst",
            category="Training",
            subcategory="{model}",
        ),
        summary="results/models/{model}/summary.json",
    log:
        "logs/train/train_{model}.log",
    benchmark:
        "benchmarks/train/train_{model}.tsv"
    wildcard_constraints:
        model="|".join(TRAIN_MODELS),
    conda:
        "../envs/torch.yaml"
    threads: TRAIN_THREADS
    resources:
        mem_mb=by_attempt(
            lambda wc: 8000 * max(1, config["train"]["models"][wc.model]["gpus"]), 1.0
        ),
        runtime=by_attempt(lambda wc: 240 if DEMO else 2880, 0.5),
        gpu=lambda wc: config["train"]["models"][wc.model]["gpus"],
    params:
        trainer=lambda wc: params_of("train", "models", wc.model),
        shards=shards_fingerprint,
        device=config["train"]["device"],
        num_workers=config["train"]["num_workers"],
        seed=config["seed"],
    script:
        "../workflow_scripts/train_model.py"


rule predict:
    input:
        unpack(prediction_inputs),
    output:
        probs="results/predictions/{dataset}/{model}.parquet",
        skipped="results/predictions/{dataset}/{model}.skipped.json",
    log:
        "logs/train/predict_{dataset}_{model}.log",
    benchmark:
        "benchmarks/train/predict_{dataset}_{model}.tsv"
    wildcard_constraints:
        model="|".join(TRAIN_MODELS),
    conda:
        "../envs/torch.yaml"
    threads: max(2, config["train"]["num_workers"])
    resources:
        mem_mb=by_attempt(8000, 1.0),
        runtime=by_attempt(lambda wc: 60 if DEMO else 720, 0.5),
        gpu=lambda wc: min(1, config["train"]["models"][wc.model]["gpus"]),
    params:
        device=config["train"]["device"],
        num_workers=config["train"]["num_workers"],
        batch_size=lambda wc: config["train"]["models"][wc.model]["batch_size"],
        images=dataset_fingerprint,
    script:
        "../workflow_scripts/predict.py"


rule training_table:
    input:
        summaries=expand(rules.train.output.summary, model=TRAIN_MODELS),
    output:
        csv=report(
            "results/tables/training.csv",
            caption="../docs/captions/training_table.rst",
            category="Training",
        ),
        md="results/tables/training.md",
    log:
        "logs/train/training_table.log",
    benchmark:
        "benchmarks/train/training_table.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        models=TRAIN_MODELS,
        demo=DEMO,
    script:
        "../workflow_scripts/report_training.py"


# A few seconds of pandas: run on the submitting node instead of waiting in the cluster queue.
localrules:
    training_table,
