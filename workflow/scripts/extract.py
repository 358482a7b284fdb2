"""Snakemake adapter: q/k/v attention features of one shard (lcseg_steps.extract)."""

import _repo  # noqa: F401  (must precede lcseg_steps imports)
import torch

from lcseg_steps.backbone import load_backbone, resolve_device
from lcseg_steps.data.index import read_index
from lcseg_steps.extract import extract_shard
from lcseg_steps.gpus import claim_device
from lcseg_steps.runlog import stage_log
from lcseg_steps.settings import settings_digest

smk = snakemake  # noqa: F821
with stage_log(smk.log[0]) as log:
    settings = smk.params.settings
    bb, ex = settings["backbone"], settings["extract"]
    torch.set_num_threads(smk.threads)
    records = [r for r in read_index(smk.input.index) if r.shard == smk.wildcards.shard]
    if not records:
        raise ValueError(f"{smk.input.index}: shard {smk.wildcards.shard} holds no images")
    if smk.resources.get("gpu", 0):  # before CUDA starts: this job's own GPU(s)
        claim_device(int(smk.resources.gpu))
    device = resolve_device(ex["device"])
    model, info = load_backbone(
        bb["name"], bb["weights"], seed=bb["seed"], overrides=bb["overrides"], device=device
    )
    log(f"extract: {len(records)} images, backbone {info.timm_name} ({info.weights}) on {device}")
    if info.weights_warning:
        log(f"WARNING: {info.weights_warning}")
    extract_shard(
        records,
        model,
        info,
        smk.output[0],
        layer=ex["layer"],
        long_side=ex["long_side"],
        store_features=tuple(ex["store_features"]),
        batch_size=ex["batch_size"],
        num_workers=ex["num_workers"],
        device=device,
        chunk_rows=ex["chunk_rows"],
        precision=ex["precision"],
        attrs={"settings": settings, "settings_digest": settings_digest(settings)},
        log=log,
    )
    log("extract: done")
