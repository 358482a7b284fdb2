# `snakemake analysis`: the grid's stage rules, generated from the same declaration as
# the default run's (lcseg_steps/pipeline.py): analysis_X runs lcseg_steps.X on keyed
# paths, and analysis_X_unseeded its seed-independent instances (a baseline's refinement
# and regions) once for all seeds; then separability, the table and the report.


for _name, _stage, _seeded in analysis_rules():

    rule:
        name:
            _name
        input:
            unpack(analysis_inputs(_stage)),
        output:
            **rule_outputs(_stage, analysis_output(_seeded), reports=False),
        log:
            analysis_log(_stage, _seeded),
        benchmark:
            analysis_log(_stage, _seeded, "tsv")
        conda:
            stage_env(_stage)
        threads: pipeline.get_stage(_stage).threads
        resources:
            **rule_resources(_stage),
        params:
            **analysis_params(_stage),
        script:
            "../scripts/stage.py"


rule analysis_separability:
    input:
        unpack(separability_inputs),
    output:
        SEPARABILITY,
    log:
        f"{ANALYSIS_LOGS}/separability/{{key}}.log",
    conda:
        "../../envs/cluster.yaml"
    threads: 2
    resources:
        **scaled_resources(
            SIZING.whole(1024, 3 * SIZING.feature_kb_per_image(), 5, 0.2)
        ),
    params:
        settings=separability_settings,
        stage="separability",
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
        stage="table",
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
        targets=lambda w: variant_targets(),
