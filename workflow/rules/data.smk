if DATASET.generated:

    rule demo_data:
        output:
            directory(config["dataset"]["root"]),
        log:
            f"{LOGS}/demo_data.log",
        conda:
            "../../envs/base.yaml"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        params:
            demo=config["dataset"]["demo"],
        script:
            "../scripts/demo_data.py"


rule index:
    input:
        dataset_inputs,
    output:
        f"{RESULTS}/images.tsv",
    log:
        f"{LOGS}/index.log",
    conda:
        "../../envs/base.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        settings=index_settings(),
    script:
        "../scripts/index.py"
