rule image_level:
    input:
        features=f"{RESULTS}/features/{{shard}}.zarr",
    output:
        directory(f"{SEEDED}/image_level/{{shard}}.zarr"),
    log:
        f"{SEEDED_LOGS}/image_level/{{shard}}.log",
    benchmark:
        f"{SEEDED_LOGS}/benchmarks/image_level/{{shard}}.tsv"
    conda:
        cluster_env()
    # one thread: on CPU each image's k-means is a few small calls a pass, and a second
    # worker thread mostly waits for the GIL (slower than one); shards run side by side
    threads: 1
    resources:
        mem_mb=shard_mem_mb(1024, 2 * feature_kb_per_image()),
        runtime=shard_runtime(2, 0.2),
    params:
        settings=settings_of("image_level"),
    script:
        "../scripts/stage.py"
