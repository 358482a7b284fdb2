# `snakemake apply`: the applied run's rules, apply_<stage>, generated from the pipeline's
# one declaration (lcseg_steps/pipeline.py, kind "apply"): the fitting stages do not run,
# the stages that read them read the model instead (workflow/rules/apply_common.smk).


for _stage in APPLY_GRAPH:

    rule:
        name:
            f"apply_{_stage}"
        input:
            unpack(
                stage_inputs(
                    _stage,
                    (lambda s: lambda wildcards: APPLY_GRAPH[s])(_stage),
                    lambda dep, output, wildcards: apply_path(dep, output),
                    cfg=APPLY_CONFIG,
                    shards=APPLY_SHARDS,
                )
            ),
        output:
            **rule_outputs(_stage, apply_path, reports=False),
        log:
            apply_log(_stage),
        benchmark:
            apply_log(_stage, "tsv")
        conda:
            stage_env(_stage, APPLY_CONFIG)
        threads: pipeline.get_stage(_stage).threads
        resources:
            **rule_resources(_stage, APPLY_SIZING),
        params:
            **apply_params(_stage),
        script:
            "../scripts/stage.py"


if APPLY_CONFIG:

    use rule summary as apply_summary with:
        input:
            apply_first("evaluate", "metrics"),
        output:
            f"{APPLY_RESULTS}/metrics_summary.json",
        log:
            f"{APPLY_LOGS}/summary.log",
        params:
            seeds=APPLY_CONFIG["seeds"],
            stage="summary",

    use rule report as apply_report with:
        input:
            unpack(apply_report_inputs),
        output:
            f"{APPLY_RESULTS}/report.html",
        log:
            f"{APPLY_LOGS}/report.log",
        params:
            gallery=config["report"]["gallery"],
            run=APPLY_CONFIG["run"],
            model=APPLY_MODEL,
            stage="report",


rule apply:
    input:
        apply_targets,
