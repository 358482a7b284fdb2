"""Snakemake adapter: score the semantic maps of one seed against the ground truth."""

import _repo  # noqa: F401  (must precede lcseg_steps imports)

from lcseg_steps.data.index import class_names, read_index
from lcseg_steps.label_stages import run_evaluate
from lcseg_steps.runlog import stage_log
from lcseg_steps.settings import settings_digest
from lcseg_steps.store import open_store

smk = snakemake  # noqa: F821
with stage_log(smk.log[0]) as log:
    feats = dict(open_store(smk.input.features).attrs)
    facts = {
        **smk.params.facts,
        "seed": int(smk.wildcards.seed),
        "config_digest": settings_digest(smk.config),
        "backbone": feats.get("backbone"),
        "weights": feats.get("weights"),
        "weights_warning": feats.get("weights_warning"),
        "layer": feats.get("layer"),
    }
    run_evaluate(
        smk.input.semantic,
        read_index(smk.input.index),
        smk.output.metrics,
        smk.output.iou,
        smk.output.confusion,
        class_names=class_names(smk.params.dataset),
        n_classes=smk.params.n_classes,
        matching=smk.params.matching,
        facts=facts,
        log=log,
    )
