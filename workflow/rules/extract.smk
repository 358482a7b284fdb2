rule extract:
    input:
        index=f"{RESULTS}/images.tsv",
    output:
        directory(f"{RESULTS}/features/{{shard}}.zarr"),
    log:
        f"{LOGS}/extract/{{shard}}.log",
    benchmark:
        f"{LOGS}/benchmarks/extract/{{shard}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=uses_cuda(config["extract"]["device"]),
        mem_mb=shard_mem_mb(2048, extract_kb_per_image()),
        runtime=shard_runtime(5, 0.1 if uses_cuda(config["extract"]["device"]) else 1.0),
    params:
        settings=settings_of("extract"),
    script:
        "../scripts/stage.py"
