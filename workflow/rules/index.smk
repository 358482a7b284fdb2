rule index:
    input:
        dataset_inputs,
        # the optional dataset.image_list file restricting the listing
        image_list=config["dataset"]["image_list"] or [],
    output:
        index=f"{RESULTS}/images.tsv",
        skipped=f"{RESULTS}/skipped.tsv",
    log:
        f"{LOGS}/index.log",
    conda:
        "../../envs/base.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        settings=settings_of("index"),
    script:
        "../scripts/stage.py"
