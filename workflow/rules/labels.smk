rule assign:
    input:
        objects=expand(
            f"{SEEDED}/objects/{{shard}}.zarr", shard=SHARDS, allow_missing=True
        ),
    output:
        directory(f"{SEEDED}/classes.zarr"),
    log:
        f"{SEEDED_LOGS}/assign.log",
    benchmark:
        f"{SEEDED_LOGS}/benchmarks/assign.tsv"
    conda:
        "../../envs/cluster.yaml"
    threads: 2
    resources:
        mem_mb=dataset_mem_mb(1024, 20 * embed_dim() * 4 / 1024),
        runtime=dataset_runtime(5, 0.01),
    params:
        settings=stage_settings("labels", "n_classes", "class_clusterer", "n_neighbors"),
        shards=SHARDS,
    script:
        "../scripts/assign.py"


rule segment:
    input:
        objects=f"{SEEDED}/objects/{{shard}}.zarr",
        classes=f"{SEEDED}/classes.zarr",
    output:
        semantic=directory(f"{SEEDED}/semantic/{{shard}}.zarr"),
        pred=directory(f"{SEEDED}/pred/{{shard}}"),
    log:
        f"{SEEDED_LOGS}/segment/{{shard}}.log",
    conda:
        "../../envs/base.yaml"
    threads: 1
    resources:
        mem_mb=shard_mem_mb(512, 256),
        runtime=shard_runtime(2, 0.1),
    script:
        "../scripts/segment.py"
