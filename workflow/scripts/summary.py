"""Snakemake adapter: mean and std of the scores over seeds."""

import json

import _repo  # noqa: F401  (must precede lcseg_steps imports)

from lcseg_steps.label_stages import summarize_seeds
from lcseg_steps.runlog import stage_log

smk = snakemake  # noqa: F821
with stage_log(smk.log[0]) as log:
    summary = summarize_seeds(smk.input, smk.params.seeds)
    with open(smk.output[0], "w") as fh:
        json.dump(summary, fh, indent=2)
    log(f"summary: mIoU {summary['miou']['mean']} ± {summary['miou']['std']}")
