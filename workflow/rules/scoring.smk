rule evaluate:
    input:
        index=f"{RESULTS}/images.tsv",
        semantic=expand(
            f"{SEEDED}/semantic/{{shard}}.zarr", shard=SHARDS, allow_missing=True
        ),
        features=f"{RESULTS}/features/{SHARDS[0]}.zarr",
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
        matching=config["evaluate"]["matching"],
        n_classes=config["labels"]["n_classes"],
        dataset=config["dataset"],
        facts=run_facts(),
    script:
        "../scripts/evaluate.py"


rule summary:
    input:
        expand(f"{RESULTS}/seed{{seed}}/metrics.json", seed=SEEDS),
    output:
        report(
            f"{RESULTS}/metrics_summary.json",
            caption="../report/summary.rst",
            category="Scores",
        ),
    log:
        f"{LOGS}/summary.log",
    conda:
        "../../envs/base.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        seeds=SEEDS,
    script:
        "../scripts/summary.py"


rule html_report:
    input:
        index=f"{RESULTS}/images.tsv",
        summary=f"{RESULTS}/metrics_summary.json",
        metrics=f"{RESULTS}/seed{SEEDS[0]}/metrics.json",
        iou=f"{RESULTS}/seed{SEEDS[0]}/per_class_iou.png",
        confusion=f"{RESULTS}/seed{SEEDS[0]}/confusion.png",
        patch_masks=expand(
            f"{RESULTS}/seed{SEEDS[0]}/patch_masks/{{shard}}.zarr", shard=SHARDS
        ),
        pixel_masks=expand(
            f"{RESULTS}/seed{SEEDS[0]}/pixel_masks/{{shard}}.zarr", shard=SHARDS
        ),
        semantic=expand(
            f"{RESULTS}/seed{SEEDS[0]}/semantic/{{shard}}.zarr", shard=SHARDS
        ),
    output:
        report(
            f"{RESULTS}/report.html", caption="../report/report.rst", category="Report"
        ),
    log:
        f"{LOGS}/report.log",
    conda:
        "../../envs/base.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        gallery=config["report"]["gallery"],
        run=config["run"],
    script:
        "../scripts/report.py"
