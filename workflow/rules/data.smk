if config["dataset"]["name"] == "demo":

    rule demo_data:
        output:
            directory(config["dataset"]["root"]),
        params:
            demo=config["dataset"]["demo"],
        log:
            f"{LOGS}/demo_data.log",
        conda:
            "../../envs/base.yaml"
        script:
            "../scripts/demo_data.py"


rule index:
    input:
        dataset_inputs,
    output:
        f"{RESULTS}/images.tsv",
    params:
        settings=index_settings(),
    log:
        f"{LOGS}/index.log",
    conda:
        "../../envs/base.yaml"
    script:
        "../scripts/index.py"
