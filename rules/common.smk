# Shared helpers: the effective config (validated before any job), input functions, names used by every stage.
import json

from geoens.core.config import check_inputs_exist, effective_config
from geoens.core.io import check_writable, folder_fingerprint

# The config of this run, by the one function `geoens validate` uses too: the user's --configfile(s), or the
# demo's config.yaml only when none is given (never merged under a user's file), then --config values, then
# the schema's defaults for every key left out; validated (naming the key) and its input files checked.
_effective = effective_config(
    [str(f) for f in workflow.overwrite_configfiles or ()],
    overrides=workflow.config_settings.config,
)
config.clear()
config.update(_effective)
check_inputs_exist(config)

DEMO = bool(config["demo"]["enabled"])
TESTSETS = sorted(config["inputs"]["testsets"])
DATASETS = TESTSETS + ["val"]
TRAIN_NAME = config["inputs"]["train"]["name"]
LEVELS = ["coarse", "middle", "fine"]
PRED_MODELS = ["ls", "lc", "geoest", "geoclip"]
# External models (bring your own geolocator, rules/external.smk): name -> config node.
EXTERNAL = config["models"]["external"]


wildcard_constraints:
    testset="|".join(TESTSETS),
    dataset="|".join(DATASETS),
    level="|".join(LEVELS),
    model="|".join(["ls", "lc", "geoest", "geoclip", "geoclip_tower"]),
    ext="|".join(sorted(EXTERNAL)) or "(?!)",


def params_of(*keys):
    """A config sub-tree as a JSON string, for `params:` so that a change reruns the rule."""
    node = config
    for key in keys:
        node = node[key]
    return json.dumps(node, sort_keys=True)


def testset_images(wildcards):
    return config["inputs"]["testsets"][wildcards.testset]["images"]


def testset_metadata(wildcards):
    return config["inputs"]["testsets"][wildcards.testset]["metadata"]


def all_tables():
    return expand(
        "results/tables/{testset}_{kind}.{ext}",
        testset=TESTSETS,
        kind=["original", "balanced"],
        ext=["csv", "md", "tex"],
    ) + ["results/tables/training.csv", "results/tables/training.md"]


def external_calibrated(testset=None):
    """External models with a val predictions file (calibrated, tempered), those with ``testset`` if given.

    Calibration runs on the fine partition's atoms: a model with a partition of its own is not calibrated.
    """
    return [
        n
        for n in sorted(EXTERNAL)
        if "val" in EXTERNAL[n]["predictions"]
        and not EXTERNAL[n].get("partition")
        and (testset is None or testset in EXTERNAL[n]["predictions"])
    ]


def external_coverage(kind):
    """Input function: the calibrated external models' coverage ``kind`` (scores, regions, tempered)."""

    def files(wildcards):
        names = external_calibrated(wildcards.testset)
        if kind == "tempered":
            return [f"results/calibration/external/{n}/tempered.json" for n in names]
        return [
            f"results/calibration/external/{n}/{wildcards.testset}/{kind}.parquet"
            for n in names
        ]

    return files


def external_evals(testset):
    """External model name -> its per-image evaluation on ``testset`` (models with a file for it)."""
    return {
        n: f"results/eval/{testset}/external_{n}.parquet"
        for n in sorted(EXTERNAL)
        if testset in EXTERNAL[n]["predictions"]
    }


def upstream(output):
    """An upstream rule's output, named as `rules.<name>.output.<key>`, as a plain path for an input.

    An input linked to the upstream rule makes the job's own Snakemake on a cluster node build the upstream
    job too (bypassing its --allowed-rules) and re-check its params, so an upstream folder fingerprint taken
    before the folder existed reruns it there (tests/test_cluster.py). A plain path is matched to its
    producer by name, as Snakemake does for every other input.
    """
    return str(output)


def by_attempt(base, growth):
    """Resource callable: `base` (a number or a function of the wildcards) on the first attempt, and
    `growth * base` more for each retry (Snakemake passes `attempt`, 1 on the first run; profiles set
    `retries`). A training job killed at its time limit resumes from its checkpoint with more time.
    """

    def resource(wildcards, attempt):
        value = base(wildcards) if callable(base) else base
        return int(value * (1 + growth * (attempt - 1)))

    return resource


# --- input functions: called when the DAG is built, after every rules file is included, so they may name
# upstream outputs as rules.<name>.output.<key> and use the stages' constants (IMAGE_CACHE_INPUT: train.smk).
def train_inputs(wildcards):
    """Label shards, the image shards and their index, and the partitions (geoest only)."""
    inputs = {
        "labels": upstream(rules.relabel_train.output.shards),
        "shards": config["inputs"]["train"]["shards_dir"],
        "index": upstream(rules.shard_index.output.index),
        **IMAGE_CACHE_INPUT,
    }
    if wildcards.model == "geoest":
        inputs.update(
            {lv: upstream(getattr(rules.partitions.output, lv)) for lv in LEVELS},
            hierarchy=upstream(rules.partitions.output.hierarchy),
        )
    return inputs


def prediction_inputs(wildcards):
    """Inputs of one prediction job (predict, with wildcard {model}, or geoclip_predict). The model: a
    trained model, or GeoCLIP's cell embeddings plus its tower when trained here; then the dataset's
    images and labels (the shards and their index for val).
    """
    model = getattr(wildcards, "model", "geoclip")
    if model == "geoclip":
        inputs = {"cells": upstream(rules.geoclip_cells.output.emb)}
        if GEOCLIP_TRAINED:
            inputs["model"] = upstream(rules.geoclip_tower.output.model)
    else:
        inputs = {"model": f"results/models/{model}/model.pt"}
    if wildcards.dataset == "val":
        inputs.update(
            images=config["inputs"]["train"]["shards_dir"],
            labels=upstream(rules.relabel_train.output.shards),
            index=upstream(rules.shard_index.output.index),
        )
    else:
        inputs.update(
            images=config["inputs"]["testsets"][wildcards.dataset]["images"],
            labels=f"results/labels/testsets/{wildcards.dataset}.parquet",
        )
    return inputs


# --- external models (rules/external.smk): each job reads only its model's config node and files ---
def ext_node(wildcards):
    """The model's config node as JSON (a param: a change reruns that model's jobs only)."""
    return params_of("models", "external", wildcards.ext)


def ext_kappa_fitted(name):
    """Whether the model is a point model whose vMF kappa is fitted on val."""
    return (
        EXTERNAL[name]["kind"] == "point"
        and EXTERNAL[name].get("kappa", "fit") == "fit"
    )


def ext_partition_inputs(name):
    """A model with a partition of its own: that file and the run's LS/LC masks (its atoms)."""
    if not EXTERNAL[name].get("partition"):
        return {}
    return {
        "partition": EXTERNAL[name]["partition"],
        "ls_mask": upstream(rules.mask_ls.output.tif),
        "lc_mask": upstream(rules.mask_lc.output.tif),
    }


def ext_cells_inputs(wildcards):
    """The dataset's predictions file, the run's atoms and fine partition, the fitted kappa (point)."""
    inputs = {
        "predictions": EXTERNAL[wildcards.ext]["predictions"][wildcards.dataset],
        "fine": upstream(rules.partitions.output.fine),
    }
    inputs.update(
        atoms=upstream(rules.atoms.output.atoms),
        atom_index=upstream(rules.atoms.output.index),
        absorption=upstream(rules.mask_s2.output.absorption),
        **ext_partition_inputs(wildcards.ext),
    )
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
    inputs.update(ext_partition_inputs(wildcards.ext))
    if EXTERNAL[wildcards.ext]["kind"] == "point":
        inputs["points"] = EXTERNAL[wildcards.ext]["predictions"][wildcards.testset]
    return inputs


# --- folder inputs: Snakemake sees only a folder's own mtime, so the rules that read an image or shard
# folder carry its fingerprint (names, sizes, mtimes of the files inside) as a param; with the profiles'
# rerun-triggers (params) a changed, added or removed file reruns them and everything downstream.
def shards_fingerprint(wildcards):
    """Fingerprint of the training shards folder (`geoens.core.io.folder_fingerprint`)."""
    return folder_fingerprint(config["inputs"]["train"]["shards_dir"])


def testset_fingerprint(wildcards):
    """Fingerprint of a test set's image folder."""
    return folder_fingerprint(config["inputs"]["testsets"][wildcards.testset]["images"])


def dataset_fingerprint(wildcards):
    """Fingerprint of the images a prediction dataset reads: the shards (val) or a test set's folder."""
    if wildcards.dataset == "val":
        return shards_fingerprint(wildcards)
    return folder_fingerprint(config["inputs"]["testsets"][wildcards.dataset]["images"])


# --- nothing runs when an output folder cannot be written (a read-only results/, full quota) ---
check_writable(["results", "logs", "benchmarks"])
