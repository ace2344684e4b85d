# The offline map explorer of the run (geoens.reports.explorer): results/explorer/index.html opens from
# file:// with no network. Every test photo is a point; config explorer.sample photos per test set also get
# their ranked regions (from the atoms and predictions) and a thumbnail; calibrated regions when calibrated,
# and the adaptive one weighted to the test set's estimated population mix (rule shift).


rule explorer:
    input:
        per_image=expand(rules.evaluate.output.per_image, testset=TESTSETS),
        external=[f for ts in TESTSETS for f in external_evals(ts).values()],
        labels=expand(rules.relabel_testset.output.labels, testset=TESTSETS),
        predictions=expand(
            "results/predictions/{testset}/{model}.parquet",
            testset=TESTSETS,
            model=PRED_MODELS,
        ),
        atoms=upstream(rules.atoms.output.atoms),
        atom_index=upstream(rules.atoms.output.index),
        absorption=upstream(rules.mask_s2.output.absorption),
        ls=upstream(rules.mask_ls.output.tif),
        lc=upstream(rules.mask_lc.output.tif),
        calibration=CAL_JSONS,
        val_scores=upstream(rules.conformal_scores.output.scores),
        shift=expand(rules.shift.output.shift, testset=TESTSETS),
    output:
        index="results/explorer/index.html",
    log:
        "logs/explorer/explorer.log",
    benchmark:
        "benchmarks/explorer/explorer.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        sample=config["explorer"]["sample"],
        seed=config["seed"],
        calibrate_fraction=config["calibrate"]["fraction"],
        images=json.dumps(
            {
                ts: spec["images"]
                for ts, spec in config["inputs"]["testsets"].items()
                if "images" in spec
            },
            sort_keys=True,
        ),
    script:
        "../workflow_scripts/explorer.py"


localrules:
    explorer,
