# `snakemake analysis`: the grid of the config's analysis block. Each pipeline rule is
# reused on the keyed paths of workflow/rules/analysis_grid.smk (the stage module is named
# in params.stage); the rest (threads, resources, conda envs, script) is the rule's own.


use rule index as analysis_index with:
    output:
        index=STAGE_PATHS["index"][1],
        skipped=STAGE_PATHS["skipped"][1],
    log:
        f"{ANALYSIS_LOGS}/index/{{key}}.log",
    params:
        settings=analysis_settings("index"),
        stage="index",


use rule extract as analysis_extract with:
    input:
        unpack(analysis_inputs("extract")),
    output:
        directory(STAGE_PATHS["extract"][1]),
    log:
        f"{ANALYSIS_LOGS}/extract/{{key}}/{{shard}}.log",
    benchmark:
        f"{ANALYSIS_LOGS}/benchmarks/extract/{{key}}/{{shard}}.tsv"
    params:
        settings=analysis_settings("extract"),
        stage="extract",


use rule image_level as analysis_image_level with:
    input:
        unpack(analysis_inputs("image_level")),
    output:
        directory(STAGE_PATHS["image_level"][1]),
    log:
        f"{ANALYSIS_LOGS}/image_level/{{key}}/seed{{seed}}/{{shard}}.log",
    benchmark:
        f"{ANALYSIS_LOGS}/benchmarks/image_level/{{key}}/seed{{seed}}/{{shard}}.tsv"
    params:
        settings=analysis_settings("image_level"),
        stage="image_level",


use rule fit_dataset as analysis_fit_dataset with:
    input:
        unpack(analysis_inputs("fit_dataset")),
    output:
        directory(STAGE_PATHS["fit_dataset"][1]),
    log:
        f"{ANALYSIS_LOGS}/fit_dataset/{{key}}/seed{{seed}}.log",
    benchmark:
        f"{ANALYSIS_LOGS}/benchmarks/fit_dataset/{{key}}/seed{{seed}}.tsv"
    params:
        settings=analysis_settings("fit_dataset"),
        stage="fit_dataset",


use rule fit_category as analysis_fit_category with:
    input:
        unpack(analysis_inputs("fit_category")),
    output:
        directory(STAGE_PATHS["fit_category"][1]),
    log:
        f"{ANALYSIS_LOGS}/fit_category/{{key}}/seed{{seed}}.log",
    benchmark:
        f"{ANALYSIS_LOGS}/benchmarks/fit_category/{{key}}/seed{{seed}}.tsv"
    params:
        settings=analysis_settings("fit_category"),
        stage="fit_category",


use rule merge as analysis_merge with:
    input:
        unpack(analysis_inputs("merge")),
    output:
        directory(STAGE_PATHS["merge"][1]),
    log:
        f"{ANALYSIS_LOGS}/merge/{{key}}/seed{{seed}}/{{shard}}.log",
    params:
        settings=analysis_settings("merge"),
        stage="merge",


# a baseline's patch masks, in merge's format, in place of the three levels
use rule merge as analysis_baselines with:
    input:
        unpack(analysis_inputs("baselines")),
    output:
        directory(STAGE_PATHS["baselines"][1]),
    log:
        f"{ANALYSIS_LOGS}/baselines/{{key}}/{{shard}}.log",
    conda:
        "../../envs/base.yaml"
    params:
        settings=analysis_settings("baselines"),
        stage="analysis.baselines",


use rule refine as analysis_refine with:
    input:
        unpack(analysis_inputs("refine")),
    output:
        directory(STAGE_PATHS["refine"][1]),
    log:
        f"{ANALYSIS_LOGS}/refine/{{key}}/seed{{seed}}/{{shard}}.log",
    benchmark:
        f"{ANALYSIS_LOGS}/benchmarks/refine/{{key}}/seed{{seed}}/{{shard}}.tsv"
    params:
        settings=analysis_settings("refine"),
        stage="refine",


# a baseline's refinement and regions do not depend on the seed: once for all seeds
use rule refine as analysis_refine_unseeded with:
    input:
        unpack(analysis_inputs("refine")),
    output:
        directory(STAGE_PATHS["refine_unseeded"][1]),
    log:
        f"{ANALYSIS_LOGS}/refine/{{key}}/{{shard}}.log",
    benchmark:
        f"{ANALYSIS_LOGS}/benchmarks/refine/{{key}}/{{shard}}.tsv"
    params:
        settings=analysis_settings("refine"),
        stage="refine",


use rule objects as analysis_objects with:
    input:
        unpack(analysis_inputs("objects")),
    output:
        directory(STAGE_PATHS["objects"][1]),
    log:
        f"{ANALYSIS_LOGS}/objects/{{key}}/seed{{seed}}/{{shard}}.log",
    benchmark:
        f"{ANALYSIS_LOGS}/benchmarks/objects/{{key}}/seed{{seed}}/{{shard}}.tsv"
    params:
        settings=analysis_settings("objects"),
        stage="objects",


use rule objects as analysis_objects_unseeded with:
    input:
        unpack(analysis_inputs("objects")),
    output:
        directory(STAGE_PATHS["objects_unseeded"][1]),
    log:
        f"{ANALYSIS_LOGS}/objects/{{key}}/{{shard}}.log",
    benchmark:
        f"{ANALYSIS_LOGS}/benchmarks/objects/{{key}}/{{shard}}.tsv"
    params:
        settings=analysis_settings("objects"),
        stage="objects",


use rule assign as analysis_assign with:
    input:
        unpack(analysis_inputs("assign")),
    output:
        directory(STAGE_PATHS["assign"][1]),
    log:
        f"{ANALYSIS_LOGS}/assign/{{key}}/seed{{seed}}.log",
    benchmark:
        f"{ANALYSIS_LOGS}/benchmarks/assign/{{key}}/seed{{seed}}.tsv"
    params:
        settings=analysis_settings("assign"),
        stage="assign",


use rule segment as analysis_segment with:
    input:
        unpack(analysis_inputs("segment")),
    output:
        semantic=directory(STAGE_PATHS["segment"][1]),
        pred=directory(STAGE_PATHS["pred"][1]),
    log:
        f"{ANALYSIS_LOGS}/segment/{{key}}/seed{{seed}}/{{shard}}.log",
    params:
        stage="segment",


use rule evaluate as analysis_evaluate with:
    input:
        unpack(analysis_inputs("evaluate")),
    output:
        metrics=STAGE_PATHS["evaluate"][1],
        iou=f"{ANALYSIS}/scores/{{key}}/seed{{seed}}/per_class_iou.png",
        confusion=f"{ANALYSIS}/scores/{{key}}/seed{{seed}}/confusion.png",
    log:
        f"{ANALYSIS_LOGS}/evaluate/{{key}}/seed{{seed}}.log",
    params:
        matching=lambda w: node_of("evaluate", w).settings["matching"],
        n_classes=lambda w: node_of("evaluate", w).settings["n_classes"],
        stage="evaluate",


rule analysis_separability:
    input:
        unpack(separability_inputs),
    output:
        STAGE_PATHS["separability"][1],
    log:
        f"{ANALYSIS_LOGS}/separability/{{key}}.log",
    conda:
        "../../envs/cluster.yaml"
    threads: 2
    resources:
        mem_mb=dataset_mem_mb(1024, 3 * feature_kb_per_image()),
        runtime=dataset_runtime(5, 0.2),
    params:
        settings=separability_settings,
        stage="analysis.separability",
    script:
        "../scripts/stage.py"


rule analysis_table:
    input:
        unpack(analysis_table_inputs),
    output:
        **ANALYSIS_TABLE,
    log:
        f"{ANALYSIS_LOGS}/table.log",
    conda:
        "../../envs/base.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        varying=lambda w: analysis_table_params()["varying"],
        variants=lambda w: analysis_table_params()["variants"],
        separability=lambda w: analysis_table_params()["separability"],
        stage="analysis.table",
    script:
        "../scripts/stage.py"


use rule report as analysis_report with:
    input:
        unpack(analysis_report_inputs),
    output:
        f"{ANALYSIS}/report.html",
    log:
        f"{ANALYSIS_LOGS}/report.log",
    params:
        analysis_note=config["analysis"]["note"],
        stage="report",


rule analysis:
    input:
        **ANALYSIS_TABLE,
        report=f"{ANALYSIS}/report.html",
