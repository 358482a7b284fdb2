# The default run's stage rules, generated from the pipeline's one declaration
# (lcseg_steps/pipeline.py): rule X runs lcseg_steps.X on the run's own paths,
# results/<run>/..., under seed<N>/ where its output depends on the seed.


for _stage in RUN_GRAPH:

    rule:
        name:
            _stage
        input:
            unpack(
                stage_inputs(
                    _stage,
                    (lambda s: lambda wildcards: RUN_GRAPH[s])(_stage),
                    lambda dep, output, wildcards: run_path(dep, output),
                )
            ),
        output:
            **rule_outputs(_stage, run_path, reports=True),
        log:
            run_log(_stage),
        benchmark:
            run_log(_stage, "tsv")
        conda:
            stage_env(_stage)
        threads: pipeline.get_stage(_stage).threads
        resources:
            **rule_resources(_stage),
        params:
            **run_params(_stage),
        script:
            "../scripts/stage.py"
