rule summary:
    input:
        expand(run_path("evaluate", "metrics"), seed=SEEDS),
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
        "../scripts/stage.py"
