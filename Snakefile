from snakemake.utils import min_version

min_version("8.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo_data.smk"
include: "workflow/rules/index.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/image_level.smk"
include: "workflow/rules/fit_dataset.smk"
include: "workflow/rules/fit_category.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/refine.smk"
include: "workflow/rules/objects.smk"
include: "workflow/rules/assign.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/analysis_grid.smk"
include: "workflow/rules/analysis.smk"


rule all:
    default_target: True
    input:
        final_targets(),
