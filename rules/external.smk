# External models (bring your own geolocator, DESIGN section 11, docs/byo.md): each models.external.<name>
# is read from its predictions files (one per test set, optionally val), made into cells over its partition
# (the run's fine one, or its own made into atoms with the run's LS/LC masks; points/samples binned, a point
# as a vMF density with kappa given or fitted on val), and evaluated with every method next to the built-in base models, with the run's own LS/LC
# predictions of the same images. Every job of a model reads only that model's config node and files (input
# functions in rules/common.smk), so changing one model's predictions file reruns that model's jobs and the
# tables and figures, nothing else. export_predictions writes the run's own GeoEst. and GeoCLIP predictions
# in the same contract (the demo feeds them back as external models: tests/test_byo_workflow.py).
from geoens.core.constants import EXPORT_DIR, EXPORT_GEOCLIP_TOP_K
from geoens.evaluation.calibrate import method_slugs

# Calibrated regions and the tempered ensemble of an external model with a val file (DESIGN section 9), as
# rules/calibrate.smk does for the built-in ones: results/calibration/<name>_<variant>.json (read by
# geoens search like the built-in ones), scores and regions under results/calibration/external/<name>/.
EXT_CAL_TAILS = [
    s[1:] for s in method_slugs(["x"])
]  # "", "_ls", ..., "_ls_lc_tempered", "_cap"
EXT_VAL = {
    **CAL_COMMON,
    "labels": upstream(rules.relabel_train.output.shards),
    "ls": "results/predictions/val/ls.parquet",
    "lc": "results/predictions/val/lc.parquet",
    "cells": "results/external/{ext}/val.parquet",
}


rule export_predictions:
    input:
        geoest="results/predictions/{dataset}/geoest.parquet",
        geoclip="results/predictions/{dataset}/geoclip.parquet",
        fine=upstream(rules.partitions.output.fine),
    output:
        geoest=f"{EXPORT_DIR}/{{dataset}}/geoest.parquet",
        geoclip=f"{EXPORT_DIR}/{{dataset}}/geoclip.parquet",
        geoclip_points=f"{EXPORT_DIR}/{{dataset}}/geoclip_points.parquet",
        geoclip_point=f"{EXPORT_DIR}/{{dataset}}/geoclip_point.parquet",
    log:
        "logs/external/export_predictions_{dataset}.log",
    benchmark:
        "benchmarks/external/export_predictions_{dataset}.tsv"
    conda:
        "../envs/geo.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        top_k=EXPORT_GEOCLIP_TOP_K,
    script:
        "../workflow_scripts/external_export.py"


rule external_kappa:
    input:
        predictions=lambda wc: EXTERNAL[wc.ext]["predictions"]["val"],
        labels=upstream(rules.relabel_train.output.shards),
    output:
        kappa="results/external/{ext}/kappa.json",
    log:
        "logs/external/external_kappa_{ext}.log",
    benchmark:
        "benchmarks/external/external_kappa_{ext}.tsv"
    conda:
        "../envs/geo.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        model=ext_node,
    script:
        "../workflow_scripts/external_kappa.py"


rule external_cells:
    input:
        unpack(ext_cells_inputs),
    output:
        cells="results/external/{ext}/{dataset}.parquet",
    log:
        "logs/external/external_cells_{ext}_{dataset}.log",
    benchmark:
        "benchmarks/external/external_cells_{ext}_{dataset}.tsv"
    conda:
        "../envs/geo.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        model=ext_node,
        grid=params_of("grid"),
    script:
        "../workflow_scripts/external_cells.py"


rule evaluate_external:
    input:
        unpack(ext_eval_inputs),
    output:
        per_image="results/eval/{testset}/external_{ext}.parquet",
    log:
        "logs/external/evaluate_external_{ext}_{testset}.log",
    benchmark:
        "benchmarks/external/evaluate_external_{ext}_{testset}.tsv"
    conda:
        "../envs/geo.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        model=ext_node,
        grid=params_of("grid"),
        evaluate=json.dumps(
            {k: config["evaluate"][k] for k in ("batch_size", "chunk_elements")},
            sort_keys=True,
        ),
    script:
        "../workflow_scripts/external_evaluate.py"


rule tempered_fit_external:
    input:
        **EXT_VAL,
    output:
        weights="results/calibration/external/{ext}/tempered.json",
    log:
        "logs/external/tempered_fit_{ext}.log",
    benchmark:
        "benchmarks/external/tempered_fit_{ext}.tsv"
    conda:
        "../envs/geo.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        grid=params_of("grid"),
        evaluate=CAL_EVALUATE,
        max_images=config["calibrate"]["tempered_max_images"],
        seed=config["seed"],
        external=lambda wc: wc.ext,
    script:
        "../workflow_scripts/calibrate_tempered.py"


rule conformal_scores_external:
    input:
        **EXT_VAL,
        tempered="results/calibration/external/{ext}/tempered.json",
    output:
        scores="results/calibration/external/{ext}/val.parquet",
    log:
        "logs/external/conformal_scores_{ext}.log",
    benchmark:
        "benchmarks/external/conformal_scores_{ext}.tsv"
    conda:
        "../envs/geo.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        grid=params_of("grid"),
        evaluate=CAL_EVALUATE,
        split="val",
        external=lambda wc: wc.ext,
    script:
        "../workflow_scripts/calibrate_scores.py"


rule calibrate_external:
    input:
        scores="results/calibration/external/{ext}/val.parquet",
        tempered="results/calibration/external/{ext}/tempered.json",
    output:
        calibration=[
            f"results/calibration/{{ext}}{tail}.json" for tail in EXT_CAL_TAILS
        ],
    log:
        "logs/external/calibrate_{ext}.log",
    benchmark:
        "benchmarks/external/calibrate_{ext}.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        calibrate=json.dumps(
            {k: config["calibrate"][k] for k in ("coverages", "fraction")},
            sort_keys=True,
        ),
        seed=config["seed"],
    script:
        "../workflow_scripts/calibrate_thresholds.py"


rule coverage_external:
    input:
        **CAL_COMMON,
        labels=upstream(rules.relabel_testset.output.labels),
        ls="results/predictions/{testset}/ls.parquet",
        lc="results/predictions/{testset}/lc.parquet",
        cells="results/external/{ext}/{testset}.parquet",
        tempered="results/calibration/external/{ext}/tempered.json",
        calibration=[
            f"results/calibration/{{ext}}{tail}.json" for tail in EXT_CAL_TAILS
        ],
    output:
        scores="results/calibration/external/{ext}/{testset}/scores.parquet",
        regions="results/calibration/external/{ext}/{testset}/regions.parquet",
    log:
        "logs/external/coverage_{ext}_{testset}.log",
    benchmark:
        "benchmarks/external/coverage_{ext}_{testset}.tsv"
    conda:
        "../envs/geo.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        grid=params_of("grid"),
        evaluate=CAL_EVALUATE,
        split="",
        external=lambda wc: wc.ext,
    script:
        "../workflow_scripts/calibrate_scores.py"
