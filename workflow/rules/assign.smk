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
        mem_mb=dataset_mem_mb(1024 + assign_fit_mb(), 20 * embed_dim() * 4 / 1024),
        runtime=dataset_runtime(5, 0.01),
    params:
        settings=settings_of("assign"),
        shards=SHARDS,
    script:
        "../scripts/stage.py"
