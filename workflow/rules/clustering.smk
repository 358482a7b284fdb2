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
        "../../envs/cluster.yaml"
    # one thread: on CPU each image's k-means is a few small calls a pass, and a second
    # worker thread mostly waits for the GIL (slower than one); shards run side by side
    threads: 1
    resources:
        mem_mb=shard_mem_mb(1024, 2 * feature_kb_per_image()),
        runtime=shard_runtime(2, 0.2),
    params:
        settings=clustering_settings(
            "feature", "k_image", "fg_rule", "max_iter", "tol", "device"
        ),
    script:
        "../scripts/image_level.py"


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
        "../../envs/cluster.yaml"
    threads: 2
    resources:
        mem_mb=fit_mem_mb("dataset"),
        runtime=fit_runtime(),
    params:
        settings=clustering_settings(
            "feature",
            "k_dataset",
            "fg_vote",
            "init_sample",
            "max_iter",
            "tol",
            "device",
        ),
    script:
        "../scripts/fit_dataset.py"


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
        "../../envs/cluster.yaml"
    threads: 2
    resources:
        mem_mb=fit_mem_mb("category"),
        runtime=fit_runtime(),
    params:
        settings=clustering_settings(
            "feature",
            "n_categories",
            "category_clusterer",
            "k_category",
            "fg_vote",
            "category_fit_sample",
            "max_iter",
            "tol",
            "device",
        ),
    script:
        "../scripts/fit_category.py"


rule merge:
    input:
        unpack(merge_inputs),
    output:
        directory(f"{SEEDED}/patch_masks/{{shard}}.zarr"),
    log:
        f"{SEEDED_LOGS}/merge/{{shard}}.log",
    conda:
        "../../envs/cluster.yaml"
    threads: 1
    resources:
        mem_mb=shard_mem_mb(512, 64),
        runtime=shard_runtime(2, 0.01),
    params:
        settings=clustering_settings("feature", "levels", "consistency", "min_levels"),
    script:
        "../scripts/merge.py"
