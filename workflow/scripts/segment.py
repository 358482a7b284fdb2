"""Snakemake adapter: semantic maps of one shard (Zarr and palette PNGs)."""

import _repo  # noqa: F401  (must precede lcseg_steps imports)

from lcseg_steps.label_stages import run_segment
from lcseg_steps.runlog import stage_log

smk = snakemake  # noqa: F821
with stage_log(smk.log[0]) as log:
    run_segment(
        smk.input.objects,
        smk.input.classes,
        smk.wildcards.shard,
        smk.output.semantic,
        smk.output.pred,
        attrs={"shard": smk.wildcards.shard, "seed": int(smk.wildcards.seed)},
        log=log,
    )
