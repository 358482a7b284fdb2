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
        "../scripts/stage.py"
