"""Snakemake adapter: dataset-level cosine k-means over all shards, streamed."""

import _repo  # noqa: F401  (must precede lcseg_steps imports)

from lcseg_steps.level_stages import run_fit_dataset
from lcseg_steps.runlog import limit_threads, stage_log
from lcseg_steps.settings import settings_digest

smk = snakemake  # noqa: F821
with stage_log(smk.log[0]) as log:
    limit_threads(smk.threads)
    s = smk.params.settings
    run_fit_dataset(
        smk.input.features,
        smk.input.image_level,
        smk.output[0],
        feature=s["feature"],
        k=s["k_dataset"],
        fg_vote=s["fg_vote"],
        init_sample=s["init_sample"],
        max_iter=s["max_iter"],
        tol=s["tol"],
        seed=s["seed"],
        device=s["device"],
        attrs={"settings": s, "settings_digest": settings_digest(s)},
        log=log,
        threads=smk.threads,
    )
