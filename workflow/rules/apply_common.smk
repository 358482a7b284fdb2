# `snakemake apply` (workflow/rules/apply.smk): the applied run's config, shards, paths and
# inputs. A fitted model.zarr (apply.model) segments the images of a folder (apply.images,
# optional apply.masks) without refitting; every setting the model fixes is the model's
# (lcseg_steps/apply/config.py). Outputs: results/apply_<name>/ (seed<s>/: the model's).

import os

from lcseg_steps.apply.config import apply_config, model_path

APPLY_CONFIG = None
APPLY_ERROR = (
    "set apply.model (a run name, a run's folder or a model.zarr) and apply.images"
)
try:
    APPLY_MODEL = model_path(config)  # None: apply.model not set
except ValueError as err:  # a path that is no run nor model: said when apply is asked
    APPLY_MODEL, APPLY_ERROR = None, f"apply.model: {err}"
if APPLY_MODEL and not os.path.exists(APPLY_MODEL):
    APPLY_ERROR = (
        f"apply.model: {APPLY_MODEL} does not exist (run the pipeline on that run's "
        "config first, or give the path of a model.zarr)"
    )
elif APPLY_MODEL:
    # a model fitted with another backbone, layer, feature, patch size or long side stops
    # here, before any job, naming both values
    APPLY_CONFIG = apply_config(config, APPLY_MODEL)

if APPLY_CONFIG:
    APPLY_RESULTS = f"results/{APPLY_CONFIG['run']}"
    if APPLY_RESULTS == RESULTS:
        raise ValueError(
            f"the applied run {APPLY_CONFIG['run']!r} is this run: rename it"
        )
    APPLY_LOGS = f"{APPLY_RESULTS}/logs"
    APPLY_SEED = APPLY_CONFIG["seeds"][0]
    APPLY_N = count_images(
        APPLY_CONFIG["dataset"], f"{APPLY_RESULTS}/.listing-cache.json"
    )
    APPLY_SHARDS = shard_names(APPLY_N, APPLY_CONFIG["shard_size"])
    APPLY_HAS_GT = any(r.gt for r in list_images(APPLY_CONFIG["dataset"]))
    APPLY_SIZING = Sizing(APPLY_CONFIG, APPLY_N)
    APPLY_GRAPH = pipeline.graph(APPLY_CONFIG, pipeline.APPLY)
    APPLY_SEEDED = pipeline.seed_dependent(APPLY_CONFIG, pipeline.APPLY)
    if not APPLY_HAS_GT:
        APPLY_GRAPH.pop("evaluate", None)
else:
    APPLY_GRAPH = {}


def apply_path(stage, output):
    """An applied run's path (template) of one stage output; the model's for ``model``."""
    if stage == "model":
        return APPLY_MODEL
    return (
        f"{APPLY_RESULTS}/{pipeline.run_template(stage, output, APPLY_SEEDED[stage])}"
    )


def apply_log(stage, suffix="log"):
    return log_path(stage, APPLY_LOGS, APPLY_SEEDED, suffix)


def apply_params(stage):
    """The stage's settings under the applied config (seeded ones with the model's seed),
    the module to run, and what only an applied run sets."""
    s = pipeline.get_stage(stage)
    out = {"stage": stage}
    if s.reads:
        seed = APPLY_SEED if s.seeded else None
        out["settings"] = pipeline.stage_settings(stage, APPLY_CONFIG, seed)
    for name, value in s.applied.items():
        out[name] = APPLY_CONFIG if name == "config" else value
    return out


def apply_first(stage, output):
    return expand(apply_path(stage, output), seed=APPLY_SEED, shard=APPLY_SHARDS)


def apply_report_inputs(wildcards):
    return scored_report_inputs(
        apply_path, APPLY_SEED, APPLY_SHARDS, APPLY_RESULTS, APPLY_HAS_GT, APPLY_CONFIG
    )


def apply_targets(wildcards):
    """The predictions, the report and, with masks, the scores of the applied run."""
    if not APPLY_CONFIG:
        raise ValueError(f"snakemake apply: {APPLY_ERROR}")
    pred = pipeline.provider(APPLY_CONFIG, "segment", pipeline.APPLY)
    out = [f"{APPLY_RESULTS}/report.html", *apply_first(pred, "pred")]
    if APPLY_HAS_GT:
        out.append(f"{APPLY_RESULTS}/metrics_summary.json")
    return out
