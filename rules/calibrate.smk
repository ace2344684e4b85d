# Calibrated search regions and the tempered ensemble (DESIGN section 9): tempered weights fitted on the
# val split, conformal scores on val, thresholds per method / kind / level (the only rule that reads
# calibrate.coverages), then regions, coverage tables and the figure per test set.
# Per test set, rule shift estimates its mix from the unlabelled predictions (DESIGN section 12) and the
# coverage rule adds the shift-corrected (weighted) regions.
from geoens.evaluation.calibrate import method_slugs

CAL_SLUGS = method_slugs()
CAL_JSONS = expand("results/calibration/{slug}.json", slug=CAL_SLUGS)
CAL_COMMON = {
    "atoms": upstream(rules.atoms.output.atoms),
    "atom_index": upstream(rules.atoms.output.index),
    "absorption": upstream(rules.mask_s2.output.absorption),
    "fine": upstream(rules.partitions.output.fine),
}
CAL_VAL = {
    **CAL_COMMON,
    "labels": upstream(rules.relabel_train.output.shards),
    **{m: f"results/predictions/val/{m}.parquet" for m in PRED_MODELS},
}
CAL_SHIFT = json.dumps(
    {
        k: config["calibrate"][k]
        for k in ("fraction", "shift_min_tuple", "shift_bootstrap")
    },
    sort_keys=True,
)
CAL_EVALUATE = json.dumps(
    {k: config["evaluate"][k] for k in ("batch_size", "chunk_elements")}, sort_keys=True
)


rule tempered_fit:
    input:
        **CAL_VAL,
    output:
        weights="results/calibration/tempered.json",
    log:
        "logs/calibrate/tempered_fit.log",
    benchmark:
        "benchmarks/calibrate/tempered_fit.tsv"
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
    script:
        "../workflow_scripts/calibrate_tempered.py"


rule conformal_scores:
    input:
        **CAL_VAL,
        tempered=upstream(rules.tempered_fit.output.weights),
    output:
        scores="results/calibration/scores/val.parquet",
    log:
        "logs/calibrate/conformal_scores.log",
    benchmark:
        "benchmarks/calibrate/conformal_scores.tsv"
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
    script:
        "../workflow_scripts/calibrate_scores.py"


rule calibrate:
    input:
        scores=upstream(rules.conformal_scores.output.scores),
        tempered=upstream(rules.tempered_fit.output.weights),
    output:
        calibration=CAL_JSONS,
    log:
        "logs/calibrate/calibrate.log",
    benchmark:
        "benchmarks/calibrate/calibrate.tsv"
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


rule shift:
    input:
        val_scores=upstream(rules.conformal_scores.output.scores),
        val_ls="results/predictions/val/ls.parquet",
        val_lc="results/predictions/val/lc.parquet",
        test_ls="results/predictions/{testset}/ls.parquet",
        test_lc="results/predictions/{testset}/lc.parquet",
    output:
        shift="results/calibration/{testset}/shift.json",
    log:
        "logs/calibrate/shift_{testset}.log",
    benchmark:
        "benchmarks/calibrate/shift_{testset}.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        calibrate=CAL_SHIFT,
        seed=config["seed"],
    script:
        "../workflow_scripts/calibrate_shift.py"


rule coverage:
    input:
        **CAL_COMMON,
        **{m: f"results/predictions/{{testset}}/{m}.parquet" for m in PRED_MODELS},
        labels=upstream(rules.relabel_testset.output.labels),
        tempered=upstream(rules.tempered_fit.output.weights),
        calibration=CAL_JSONS,
        shift=upstream(rules.shift.output.shift),
        val_scores=upstream(rules.conformal_scores.output.scores),
    output:
        scores="results/calibration/{testset}/scores.parquet",
        regions="results/calibration/{testset}/regions.parquet",
    log:
        "logs/calibrate/coverage_{testset}.log",
    benchmark:
        "benchmarks/calibrate/coverage_{testset}.tsv"
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
        calibrate=CAL_SHIFT,
        seed=config["seed"],
    script:
        "../workflow_scripts/calibrate_scores.py"


rule coverage_table:
    input:
        scores=upstream(rules.coverage.output.scores),
        regions=upstream(rules.coverage.output.regions),
        tempered=upstream(rules.tempered_fit.output.weights),
        external_scores=external_coverage("scores"),
        external_regions=external_coverage("regions"),
        external_tempered=external_coverage("tempered"),
        shift=upstream(rules.shift.output.shift),
    output:
        coverage_csv="results/tables/{testset}_coverage.csv",
        coverage_md="results/tables/{testset}_coverage.md",
        tempered_csv="results/tables/{testset}_tempered.csv",
        tempered_md="results/tables/{testset}_tempered.md",
    log:
        "logs/calibrate/coverage_table_{testset}.log",
    benchmark:
        "benchmarks/calibrate/coverage_table_{testset}.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        evaluate=params_of("evaluate"),
        seed=config["seed"],
        demo=DEMO,
    script:
        "../workflow_scripts/report_coverage.py"


rule figure_coverage:
    input:
        tables=expand(rules.coverage_table.output.coverage_csv, testset=TESTSETS),
    output:
        pdf=report(
            "results/figures/coverage.pdf",
            caption="../docs/captions/coverage.rst",
            category="Results",
        ),
        png="results/figures/coverage.png",
    log:
        "logs/calibrate/figure_coverage.log",
    benchmark:
        "benchmarks/calibrate/figure_coverage.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        testsets=TESTSETS,
        demo=DEMO,
    script:
        "../workflow_scripts/report_coverage_figure.py"
