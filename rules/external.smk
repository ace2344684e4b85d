# External models (bring your own geolocator, DESIGN section 11, docs/byo.md): each models.external.<name>
# is read from its predictions files (one per test set, optionally val), made into cells over the run's fine
# partition (points/samples binned into the S2 mask's cells, a point as a vMF density with kappa given or
# fitted on val), and evaluated with every method next to the built-in
# base models, with the run's own LS/LC predictions of the same images. Every job of a model reads only that
# model's config node and files, so changing one model's predictions file reruns that model's jobs and the
# tables and figures, nothing else. export_predictions writes the run's own GeoEst. and GeoCLIP predictions
# in the same contract (the demo feeds them back as external models: tests/test_byo_workflow.py).
from geoens.core.constants import EXPORT_DIR, EXPORT_GEOCLIP_TOP_K


def ext_node(wildcards):
    """The model's config node as JSON (a param: a change reruns that model's jobs only)."""
    return params_of("models", "external", wildcards.ext)


def ext_kappa_fitted(name):
    """Whether the model is a point model whose vMF kappa is fitted on val."""
    return (
        EXTERNAL[name]["kind"] == "point"
        and EXTERNAL[name].get("kappa", "fit") == "fit"
    )


def ext_cells_inputs(wildcards):
    """The dataset's predictions file, the fine partition, the S2 mask (points), the fitted kappa (point)."""
    inputs = {
        "predictions": EXTERNAL[wildcards.ext]["predictions"][wildcards.dataset],
        "fine": upstream(rules.partitions.output.fine),
    }
    if EXTERNAL[wildcards.ext]["kind"] != "cells":
        inputs["s2_mask"] = upstream(rules.mask_s2.output.tif)
    if ext_kappa_fitted(wildcards.ext):
        inputs["kappa"] = f"results/external/{wildcards.ext}/kappa.json"
    return inputs


def ext_eval_inputs(wildcards):
    """The model's cells, the run's LS/LC predictions and labels, the atoms the evaluation runs on."""
    inputs = {
        "cells": f"results/external/{wildcards.ext}/{wildcards.testset}.parquet",
        "labels": upstream(rules.relabel_testset.output.labels),
        "fine": upstream(rules.partitions.output.fine),
        "absorption": upstream(rules.mask_s2.output.absorption),
        "ls": f"results/predictions/{wildcards.testset}/ls.parquet",
        "lc": f"results/predictions/{wildcards.testset}/lc.parquet",
    }
    inputs["atoms"] = upstream(rules.atoms.output.atoms)
    inputs["atom_index"] = upstream(rules.atoms.output.index)
    if EXTERNAL[wildcards.ext]["kind"] == "point":
        inputs["points"] = EXTERNAL[wildcards.ext]["predictions"][wildcards.testset]
    return inputs


rule export_predictions:
    input:
        geoest="results/predictions/{dataset}/geoest.parquet",
        geoclip="results/predictions/{dataset}/geoclip.parquet",
        fine=upstream(rules.partitions.output.fine),
    output:
        geoest=f"{EXPORT_DIR}/{{dataset}}/geoest.parquet",
        geoclip=f"{EXPORT_DIR}/{{dataset}}/geoclip.parquet",
        geoclip_points=f"{EXPORT_DIR}/{{dataset}}/geoclip_points.parquet",
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
