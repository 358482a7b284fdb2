"""Snakemake adapter: merge the level masks of one shard into consistent patch masks."""

import _repo  # noqa: F401  (must precede lcseg_steps imports)

from lcseg_steps.level_stages import run_merge
from lcseg_steps.runlog import stage_log
from lcseg_steps.settings import settings_digest

smk = snakemake  # noqa: F821
with stage_log(smk.log[0]) as log:
    s = smk.params.settings
    run_merge(
        smk.input.features,
        smk.input.image_level,
        smk.input.get("dataset_level"),
        smk.input.get("category_level"),
        smk.output[0],
        feature=s["feature"],
        levels=s["levels"],
        consistency=s["consistency"],
        min_levels=s["min_levels"],
        attrs={"settings": s, "settings_digest": settings_digest(s)},
        log=log,
    )
