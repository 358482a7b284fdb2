from snakemake.utils import min_version

min_version("8.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/clustering.smk"
include: "workflow/rules/refine.smk"
include: "workflow/rules/labels.smk"
include: "workflow/rules/scoring.smk"


rule all:
    default_target: True
    input:
        f"{RESULTS}/metrics_summary.json",
        f"{RESULTS}/report.html",
