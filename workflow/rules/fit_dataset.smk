rule fit_dataset:
    input:
        features=expand(f"{RESULTS}/features/{{shard}}.zarr", shard=SHARDS),
        image_level=expand(
            f"{SEEDED}/image_level/{{shard}}.zarr", shard=SHARDS, allow_missing=True
        ),
    output:
        directory(f"{SEEDED}/dataset_level.zarr"),
    log:
        f"{SEEDED_LOGS}/fit_dataset.log",
    benchmark:
        f"{SEEDED_LOGS}/benchmarks/fit_dataset.tsv"
    conda:
        cluster_env()
    threads: 2
    resources:
        mem_mb=fit_mem_mb("dataset"),
        runtime=fit_runtime(),
    params:
        settings=settings_of("fit_dataset"),
    script:
        "../scripts/stage.py"
