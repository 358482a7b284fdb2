"""Snakemake adapter: cluster all region descriptors into classes."""

import _repo  # noqa: F401  (must precede lcseg_steps imports)

from lcseg_steps.label_stages import run_assign
from lcseg_steps.runlog import limit_threads, stage_log
from lcseg_steps.settings import settings_digest

smk = snakemake  # noqa: F821
with stage_log(smk.log[0]) as log:
    limit_threads(smk.threads)
    s = smk.params.settings
    run_assign(
        smk.input.objects,
        smk.params.shards,
        smk.output[0],
        n_classes=s["n_classes"],
        method=s["class_clusterer"],
        n_neighbors=s["n_neighbors"],
        seed=s["seed"],
        attrs={"settings": s, "settings_digest": settings_digest(s)},
        log=log,
    )
