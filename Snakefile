from snakemake.utils import min_version

min_version("8.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/analysis_grid.smk"
include: "workflow/rules/pipeline.smk"
include: "workflow/rules/demo_data.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/apply_common.smk"
include: "workflow/rules/apply.smk"


rule all:
    default_target: True
    input:
        final_targets(),
