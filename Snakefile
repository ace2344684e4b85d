# geoens: ensemble geolocation with satellite-visible attribute predictors, scored by Recall vs Area.
# Stages: demo -> labels -> masks -> train/predict + geoclip -> evaluate. See README.md and docs/.
from snakemake.utils import min_version

min_version("9.0")


# The config: `--configfile my.yaml` (complete on its own; missing keys take the schema's defaults), or the
# demo world's config.yaml when no config file is given. rules/common.smk builds it with
# geoens.core.config.effective_config, the function `geoens validate` uses.
include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/labels.smk"
include: "rules/masks.smk"
include: "rules/train.smk"
include: "rules/geoclip.smk"
include: "rules/evaluate.smk"
include: "rules/calibrate.smk"
include: "rules/external.smk"
include: "rules/explorer.smk"


rule all:
    input:
        "results/figures/rva.pdf",
        "results/figures/buckets.pdf",
        expand("results/figures/probmap_{testset}.png", testset=TESTSETS),
        all_tables(),
        "results/figures/coverage.pdf",
        expand("results/tables/{testset}_tempered.md", testset=TESTSETS),
        "results/explorer/index.html",
