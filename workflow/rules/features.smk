rule extract:
    input:
        index=f"{RESULTS}/images.tsv",
    output:
        directory(f"{RESULTS}/features/{{shard}}.zarr"),
    params:
        settings=extract_settings(),
    log:
        f"{LOGS}/extract/{{shard}}.log",
    threads: 2
    resources:
        gpu=1 if config["extract"]["device"] == "cuda" else 0,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/extract.py"
