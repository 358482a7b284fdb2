rule extract:
    input:
        index=f"{RESULTS}/images.tsv",
    output:
        directory(f"{RESULTS}/features/{{shard}}.zarr"),
    log:
        f"{LOGS}/extract/{{shard}}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1 if config["extract"]["device"] == "cuda" else 0,
    params:
        settings=extract_settings(),
    script:
        "../scripts/extract.py"
