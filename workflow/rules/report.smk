rule report:
    input:
        unpack(report_inputs),
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
