rule objects:
    input:
        index=f"{RESULTS}/images.tsv",
        pixel_masks=f"{SEEDED}/pixel_masks/{{shard}}.zarr",
        features=f"{RESULTS}/features/{{shard}}.zarr",
    output:
        directory(f"{SEEDED}/objects/{{shard}}.zarr"),
    log:
        f"{SEEDED_LOGS}/objects/{{shard}}.log",
    benchmark:
        f"{SEEDED_LOGS}/benchmarks/objects/{{shard}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=objects_gpu(),
        mem_mb=shard_mem_mb(2048, 512),
        runtime=shard_runtime(5, 0.5),
    params:
        settings=settings_of("objects"),
    script:
        "../scripts/stage.py"
