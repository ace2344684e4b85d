# Demo stage (DESIGN section 6): the embedded demo world (Earth's land and cities, or an invented one:
# demo.geography). One job writes every input the config's `inputs:` section names (LandScan-like GeoTIFF,
# ESA-CCI-like NetCDF/GeoTIFF, MP-16-like msgpack shards and metadata, the test sets), plus contact sheets of
# the rendered images. Only when demo.enabled is true.
# Test sets drawn with a set population mix (`demo.testsets.<name>.mix`, DESIGN section 12) have their own
# rule (demo_mixed_testsets), so adding one leaves demo_world and everything downstream of it untouched.

if DEMO:
    from geoens.demo.spec import output_paths as demo_output_paths

    # Named outputs: landscan, landcover, train_shards (folder), train_metadata, train_contact_sheet,
    # and per test set <name>_images (folder), <name>_metadata, <name>_contact_sheet.
    DEMO_OUTPUTS = {
        key: directory(str(path)) if key.endswith(("_images", "_shards")) else str(path)
        for key, path in demo_output_paths(config).items()
    }

    DEMO_MIXED_OUTPUTS = {
        key: directory(str(path)) if key.endswith("_images") else str(path)
        for key, path in demo_output_paths(config, mixed=True).items()
    }
    # demo_world's params leave the mixed test sets out: adding one does not rerun it
    DEMO_PLAIN = json.dumps(
        {
            **config["demo"],
            "testsets": {
                k: v for k, v in config["demo"]["testsets"].items() if "mix" not in v
            },
        },
        sort_keys=True,
    )

    rule demo_world:
        output:
            **DEMO_OUTPUTS,
        log:
            "logs/demo/demo_world.log",
        benchmark:
            "benchmarks/demo/demo_world.tsv"
        conda:
            "../envs/geo.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=20,
        params:
            demo=DEMO_PLAIN,
            grid=params_of("grid"),
            seed=config["seed"],
        script:
            "../workflow_scripts/demo_world.py"

    if DEMO_MIXED_OUTPUTS:

        rule demo_mixed_testsets:
            output:
                **DEMO_MIXED_OUTPUTS,
            log:
                "logs/demo/demo_mixed_testsets.log",
            benchmark:
                "benchmarks/demo/demo_mixed_testsets.tsv"
            conda:
                "../envs/geo.yaml"
            threads: 1
            resources:
                mem_mb=2000,
                runtime=20,
            params:
                demo=params_of("demo"),
                grid=params_of("grid"),
                seed=config["seed"],
            script:
                "../workflow_scripts/demo_mixed_testsets.py"
