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
        settings=settings_of("merge"),
    script:
        "../scripts/stage.py"
