rule refine:
    input:
        index=f"{RESULTS}/images.tsv",
        patch_masks=f"{SEEDED}/patch_masks/{{shard}}.zarr",
    output:
        directory(f"{SEEDED}/pixel_masks/{{shard}}.zarr"),
    log:
        f"{SEEDED_LOGS}/refine/{{shard}}.log",
    benchmark:
        f"{SEEDED_LOGS}/benchmarks/refine/{{shard}}.tsv"
    conda:
        "../../envs/crf.yaml"
    threads: 2
    resources:
        mem_mb=shard_mem_mb(1024, 256),
        runtime=shard_runtime(2, 1.0),
    params:
        settings=settings_of("refine"),
    script:
        "../scripts/stage.py"
