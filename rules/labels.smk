# Relabel stage (DESIGN sections 3 and 5): S2 partitions from the training geotags (GeoEstimation's rule) or
# given CSVs, then the training set and each test set relabelled with LandScan bucket, land-cover class and
# S2 cells into Parquet. The LS bucket edges (results/labels/ls_edges.json) are derived here, used by masks.

# Inputs of rule partitions: the training metadata (source: build) or the given CSVs (source: csv).
PARTITION_INPUTS = (
    {lv: config["partitions"]["csv"][lv] for lv in LEVELS}
    if config["partitions"]["source"] == "csv"
    else {"metadata": config["inputs"]["train"]["metadata"]}
)


rule partitions:
    input:
        unpack(lambda wildcards: PARTITION_INPUTS),
    output:
        coarse="results/partitions/coarse.csv",
        middle="results/partitions/middle.csv",
        fine="results/partitions/fine.csv",
        hierarchy="results/partitions/hierarchy.parquet",
    log:
        "logs/labels/partitions.log",
    benchmark:
        "benchmarks/labels/partitions.tsv"
    conda:
        "../envs/geo.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        partitions=params_of("partitions"),
        max_bad_fraction=config["labels"]["max_bad_fraction"],
    script:
        "../workflow_scripts/partitions_build.py"


rule relabel_train:
    input:
        metadata=config["inputs"]["train"]["metadata"],
        shards_dir=config["inputs"]["train"]["shards_dir"],
        landscan=config["inputs"]["landscan"],
        landcover=config["inputs"]["landcover"],
        coarse=upstream(rules.partitions.output.coarse),
        middle=upstream(rules.partitions.output.middle),
        fine=upstream(rules.partitions.output.fine),
    output:
        shards=directory("results/labels/train"),
        edges="results/labels/ls_edges.json",
        summary=f"results/labels/{TRAIN_NAME}_summary.json",
    log:
        "logs/labels/relabel_train.log",
    benchmark:
        "benchmarks/labels/relabel_train.tsv"
    conda:
        "../envs/geo.yaml"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
    params:
        labels=params_of("labels"),
        masks=params_of("masks"),
        shards=shards_fingerprint,
        seed=config["seed"],
        dataset=TRAIN_NAME,
    script:
        "../workflow_scripts/labels_relabel_train.py"


rule relabel_testset:
    input:
        metadata=testset_metadata,
        images=testset_images,
        landscan=config["inputs"]["landscan"],
        landcover=config["inputs"]["landcover"],
        coarse=upstream(rules.partitions.output.coarse),
        middle=upstream(rules.partitions.output.middle),
        fine=upstream(rules.partitions.output.fine),
        edges=upstream(rules.relabel_train.output.edges),
    output:
        labels="results/labels/testsets/{testset}.parquet",
        summary="results/labels/{testset}_summary.json",
    log:
        "logs/labels/relabel_testset_{testset}.log",
    benchmark:
        "benchmarks/labels/relabel_testset_{testset}.tsv"
    conda:
        "../envs/geo.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        labels=params_of("labels"),
        masks=params_of("masks"),
        images=testset_fingerprint,
    script:
        "../workflow_scripts/labels_relabel_testset.py"
