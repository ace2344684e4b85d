# Mask stage (DESIGN sections 2-4): LandScan, land cover and the fine S2 partition as label rasters on the
# common grid, the S2 absorption table, and the atom table (one row per distinct label tuple).


rule mask_ls:
    input:
        landscan=config["inputs"]["landscan"],
        edges=upstream(rules.relabel_train.output.edges),
    output:
        tif="results/masks/ls.tif",
        png="results/masks/ls.png",
    log:
        "logs/masks/mask_ls.log",
    benchmark:
        "benchmarks/masks/mask_ls.tsv"
    conda:
        "../envs/geo.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        grid=params_of("grid"),
        edges_fallback=params_of("labels", "ls_edges_fallback"),
    script:
        "../workflow_scripts/masks_ls.py"


rule mask_lc:
    input:
        landcover=config["inputs"]["landcover"],
    output:
        tif="results/masks/lc.tif",
        png="results/masks/lc.png",
    log:
        "logs/masks/mask_lc.log",
    benchmark:
        "benchmarks/masks/mask_lc.tsv"
    conda:
        "../envs/geo.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
    params:
        grid=params_of("grid"),
        unknown_lc_codes=config["masks"]["unknown_lc_codes"],
    script:
        "../workflow_scripts/masks_lc.py"


rule mask_s2:
    input:
        fine=upstream(rules.partitions.output.fine),
    output:
        tif="results/masks/s2_fine.tif",
        absorption="results/masks/s2_absorption.parquet",
        png="results/masks/s2_fine.png",
    log:
        "logs/masks/mask_s2.log",
    benchmark:
        "benchmarks/masks/mask_s2.tsv"
    conda:
        "../envs/geo.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        grid=params_of("grid"),
    script:
        "../workflow_scripts/masks_s2.py"


rule atoms:
    input:
        s2=upstream(rules.mask_s2.output.tif),
        ls=upstream(rules.mask_ls.output.tif),
        lc=upstream(rules.mask_lc.output.tif),
    output:
        atoms="results/atoms/atoms.parquet",
        index="results/atoms/atom_index.tif",
    log:
        "logs/masks/atoms.log",
    benchmark:
        "benchmarks/masks/atoms.tsv"
    conda:
        "../envs/geo.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        grid=params_of("grid"),
        min_lc_share=config["masks"]["min_lc_share"],
        landcover=config["inputs"]["landcover"],
    script:
        "../workflow_scripts/atoms_build.py"
