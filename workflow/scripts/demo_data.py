"""Snakemake adapter: generate the synthetic demo dataset (lcseg_steps.data.demo)."""

import _repo  # noqa: F401  (must precede lcseg_steps imports)

from lcseg_steps.data.demo import generate_demo
from lcseg_steps.runlog import stage_log

with stage_log(snakemake.log[0]) as log:  # noqa: F821
    demo = snakemake.params.demo  # noqa: F821
    ids = generate_demo(snakemake.output[0], log=log, **demo)  # noqa: F821
    log(f"demo_data: wrote {len(ids)} images to {snakemake.output[0]}")  # noqa: F821
