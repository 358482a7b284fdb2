rule report:
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
        "../scripts/stage.py"
