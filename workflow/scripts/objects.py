"""Snakemake adapter: object regions of the refined masks and one descriptor each."""

import _repo  # noqa: F401  (must precede lcseg_steps imports)

from lcseg_steps.data.index import read_index
from lcseg_steps.label_stages import run_objects
from lcseg_steps.runlog import limit_threads, stage_log
from lcseg_steps.settings import settings_digest

smk = snakemake  # noqa: F821
with stage_log(smk.log[0]) as log:
    s = smk.params.settings
    device = "cpu"
    if s["descriptor"] == "cls":
        from lcseg_steps.backbone import resolve_device
        from lcseg_steps.gpus import claim_device

        if smk.resources.get("gpu", 0):  # before CUDA starts: this job's own GPU(s)
            claim_device(int(smk.resources.gpu))
        device = resolve_device(s["device"])
    limit_threads(smk.threads)  # after the backbone's torch import, so torch is limited too
    run_objects(
        smk.input.pixel_masks,
        smk.input.features,
        read_index(smk.input.index),
        smk.output[0],
        regions=s["regions"],
        min_area=s["min_region_area"],
        descriptor=s["descriptor"],
        margin=s["margin"],
        long_side=s["long_side"],
        batch_size=s["batch_size"],
        feature=s.get("feature", "k"),
        backbone=s.get("backbone", {}),
        device=device,
        attrs={"settings": s, "settings_digest": settings_digest(s)},
        log=log,
    )
