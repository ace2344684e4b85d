# Evaluation (DESIGN section 4): Algorithms 1-3 on the atom table for every base model and ensemble,
# GCD of the grid top-1 and of each base model's own top-1, then tables (original and LS-balanced test
# sets, bootstrap 95% intervals) and figures.

EVAL_INPUTS = {
    "atoms": upstream(rules.atoms.output.atoms),
    "atom_index": upstream(rules.atoms.output.index),
    "absorption": upstream(rules.mask_s2.output.absorption),
    "fine": upstream(rules.partitions.output.fine),
    "labels": upstream(rules.relabel_testset.output.labels),
    **{m: f"results/predictions/{{testset}}/{m}.parquet" for m in PRED_MODELS},
}


rule evaluate:
    input:
        **EVAL_INPUTS,
    output:
        per_image="results/eval/{testset}/per_image.parquet",
    log:
        "logs/evaluate/evaluate_{testset}.log",
    benchmark:
        "benchmarks/evaluate/evaluate_{testset}.tsv"
    conda:
        "../envs/geo.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        grid=params_of("grid"),
        evaluate=json.dumps(
            {k: config["evaluate"][k] for k in ("batch_size", "chunk_elements")},
            sort_keys=True,
        ),
    script:
        "../workflow_scripts/evaluate_testset.py"


EVAL_PER_IMAGE = {
    ts: expand(rules.evaluate.output.per_image, testset=ts)[0] for ts in TESTSETS
}

# Every external model's per-image evaluation (rules/external.smk), by test set, for the figures.
EXTERNAL_EVALS = {ts: external_evals(ts) for ts in TESTSETS}
EXTERNAL_EVAL_FILES = [p for ts in TESTSETS for p in EXTERNAL_EVALS[ts].values()]


rule tables:
    input:
        per_image=upstream(rules.evaluate.output.per_image),
        external=lambda wc: list(external_evals(wc.testset).values()),
    output:
        original_csv="results/tables/{testset}_original.csv",
        original_md="results/tables/{testset}_original.md",
        original_tex="results/tables/{testset}_original.tex",
        balanced_csv="results/tables/{testset}_balanced.csv",
        balanced_md="results/tables/{testset}_balanced.md",
        balanced_tex="results/tables/{testset}_balanced.tex",
    log:
        "logs/evaluate/tables_{testset}.log",
    benchmark:
        "benchmarks/evaluate/tables_{testset}.tsv"
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
        external=lambda wc: json.dumps(external_evals(wc.testset), sort_keys=True),
    script:
        "../workflow_scripts/report_tables.py"


rule figure_rva:
    input:
        **EVAL_PER_IMAGE,
        external=EXTERNAL_EVAL_FILES,
    output:
        pdf=report(
            "results/figures/rva.pdf",
            caption="../docs/captions/rva.rst",
            category="Results",
        ),
        png="results/figures/rva.png",
    log:
        "logs/evaluate/figure_rva.log",
    benchmark:
        "benchmarks/evaluate/figure_rva.tsv"
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
        external=json.dumps(EXTERNAL_EVALS, sort_keys=True),
    script:
        "../workflow_scripts/report_rva.py"


rule figure_buckets:
    input:
        **EVAL_PER_IMAGE,
        external=EXTERNAL_EVAL_FILES,
    output:
        pdf=report(
            "results/figures/buckets.pdf",
            caption="../docs/captions/buckets.rst",
            category="Results",
        ),
    log:
        "logs/evaluate/figure_buckets.log",
    benchmark:
        "benchmarks/evaluate/figure_buckets.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        demo=DEMO,
        external=json.dumps(EXTERNAL_EVALS, sort_keys=True),
    script:
        "../workflow_scripts/report_buckets.py"


rule figure_probmap:
    input:
        **EVAL_INPUTS,
    output:
        png=report(
            "results/figures/probmap_{testset}.png",
            caption="../docs/captions/probmap.rst",
            category="Results",
        ),
    log:
        "logs/evaluate/figure_probmap_{testset}.log",
    benchmark:
        "benchmarks/evaluate/figure_probmap_{testset}.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=6000,
        runtime=30,
    params:
        grid=params_of("grid"),
        evaluate=params_of("evaluate"),
        demo=DEMO,
    script:
        "../workflow_scripts/report_probmap.py"


# Tables and figures take seconds: run them on the submitting node instead of the cluster queue.
localrules:
    tables,
    figure_rva,
    figure_buckets,
    figure_probmap,
