"""Snakemake adapter: list the dataset, read image sizes, assign shards, write images.tsv."""

import _repo  # noqa: F401  (must precede lcseg_steps imports)

from lcseg_steps.data.index import build_index, write_index
from lcseg_steps.runlog import stage_log

with stage_log(snakemake.log[0]) as log:  # noqa: F821
    settings = snakemake.params.settings  # noqa: F821
    records = build_index(settings["dataset"], settings["shard_size"], log=log)
    write_index(records, snakemake.output[0])  # noqa: F821
    log(f"index: {len(records)} images in {len({r.shard for r in records})} shards")
