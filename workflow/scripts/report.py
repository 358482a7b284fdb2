"""Snakemake adapter: the run's self-contained HTML report."""

import _repo  # noqa: F401  (must precede lcseg_steps imports)

from lcseg_steps.data.index import read_index
from lcseg_steps.label_stages import run_report
from lcseg_steps.runlog import stage_log

smk = snakemake  # noqa: F821
with stage_log(smk.log[0]) as log:
    run_report(
        smk.output[0],
        title=f"lcseg run {smk.params.run}",
        metrics_json=smk.input.metrics,
        summary_json=smk.input.summary,
        plots=[("per-class IoU", smk.input.iou), ("confusion matrix", smk.input.confusion)],
        records=read_index(smk.input.index),
        patch_masks=smk.input.patch_masks,
        pixel_masks=smk.input.pixel_masks,
        semantic=smk.input.semantic,
        n_gallery=smk.params.gallery,
        log=log,
    )
