rule fit_category:
    input:
        features=expand(f"{RESULTS}/features/{{shard}}.zarr", shard=SHARDS),
        image_level=expand(
            f"{SEEDED}/image_level/{{shard}}.zarr", shard=SHARDS, allow_missing=True
        ),
    output:
        directory(f"{SEEDED}/category_level.zarr"),
    log:
        f"{SEEDED_LOGS}/fit_category.log",
    benchmark:
        f"{SEEDED_LOGS}/benchmarks/fit_category.tsv"
    conda:
        cluster_env()
    threads: 2
    resources:
        mem_mb=fit_mem_mb("category"),
        runtime=fit_runtime(),
    params:
        settings=settings_of("fit_category"),
    script:
        "../scripts/stage.py"
