from snakemake.utils import min_version

min_version("8.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/clustering.smk"


rule all:
    default_target: True
    input:
        f"{RESULTS}/images.tsv",
        expand(f"{RESULTS}/patch_masks/{{shard}}.zarr", shard=SHARDS),
