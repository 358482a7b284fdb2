rule index:
    input:
        dataset_inputs,
    output:
        index=f"{RESULTS}/images.tsv",
        skipped=f"{RESULTS}/skipped.tsv",
    log:
        f"{LOGS}/index.log",
    conda:
        "../../envs/base.yaml"
    threads: 8
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        settings=index_settings(),
    script:
        "../scripts/stage.py"
