"""Snakemake adapter: upsample soft patch scores and refine them with a dense CRF."""

import _repo  # noqa: F401  (must precede lcseg_steps imports)

from lcseg_steps.data.index import read_index
from lcseg_steps.label_stages import run_refine
from lcseg_steps.runlog import limit_threads, stage_log
from lcseg_steps.settings import settings_digest

smk = snakemake  # noqa: F821
with stage_log(smk.log[0]) as log:
    # each CRF is single-threaded; the pool gets the rule's cores
    limit_threads(1)
    s = dict(smk.params.settings)
    crf, threshold = s.pop("crf"), s.pop("threshold")
    run_refine(
        smk.input.patch_masks,
        read_index(smk.input.index),
        smk.output[0],
        crf=crf,
        threshold=threshold,
        crf_params=s,
        processes=smk.threads,
        attrs={"settings": smk.params.settings, "settings_digest": settings_digest(s)},
        log=log,
    )
