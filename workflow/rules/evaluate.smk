rule evaluate:
    input:
        index=f"{RESULTS}/images.tsv",
        skipped=f"{RESULTS}/skipped.tsv",
        semantic=expand(
            f"{SEEDED}/semantic/{{shard}}.zarr", shard=SHARDS, allow_missing=True
        ),
    output:
        metrics=report(
            f"{SEEDED}/metrics.json",
            caption="../report/metrics.rst",
            category="Scores",
        ),
        iou=report(
            f"{SEEDED}/per_class_iou.png",
            caption="../report/per_class_iou.rst",
            category="Scores",
        ),
        confusion=report(
            f"{SEEDED}/confusion.png",
            caption="../report/confusion.rst",
            category="Scores",
        ),
    log:
        f"{SEEDED_LOGS}/evaluate.log",
    conda:
        "../../envs/base.yaml"
    threads: 1
    resources:
        mem_mb=dataset_mem_mb(1024, 8),
        runtime=dataset_runtime(5, 0.05),
    params:
        # matching, n_classes (lcseg_steps/stage_settings.py)
        **settings_of("evaluate"),
        dataset=config["dataset"],
        facts=run_facts(),
    script:
        "../scripts/stage.py"
