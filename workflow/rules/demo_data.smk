from lcseg_steps.data.demo import demo_params

if DATASET.generated:

    rule demo_data:
        output:
            directory(config["dataset"]["root"]),
        log:
            f"{LOGS}/demo_data.log",
        conda:
            "../../envs/base.yaml"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        params:
            demo=demo_params(config["dataset"]["demo"]),
        script:
            "../scripts/stage.py"
