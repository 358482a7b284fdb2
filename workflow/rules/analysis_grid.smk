import functools

from lcseg_steps.analysis import grid as analysis_grid
from lcseg_steps.stage_settings import SEEDED as SEEDED_STAGES

# `snakemake analysis` (workflow/rules/analysis.smk): every stage of every variant lives at
# a path keyed on its settings and its inputs' keys (lcseg_steps/analysis/grid.py), or at
# the run's own path when its key is the run's own.
ANALYSIS = f"{RESULTS}/analysis"
ANALYSIS_LOGS = f"{LOGS}/analysis"
ANALYSIS_SEEDS = config["analysis"]["seeds"]
_A, _S = f"{ANALYSIS}/{{stage}}/{{key}}", "seed{seed}"
# stage -> (the run's own path, the analysis path); {key}, {seed}, {shard} are filled in
STAGE_PATHS = {
    "index": (f"{RESULTS}/images.tsv", f"{ANALYSIS}/index/{{key}}/images.tsv"),
    "skipped": (f"{RESULTS}/skipped.tsv", f"{ANALYSIS}/index/{{key}}/skipped.tsv"),
    "extract": (
        f"{RESULTS}/features/{{shard}}.zarr",
        f"{ANALYSIS}/features/{{key}}/{{shard}}.zarr",
    ),
    "image_level": (
        f"{SEEDED}/image_level/{{shard}}.zarr",
        f"{ANALYSIS}/image_level/{{key}}/seed{{seed}}/{{shard}}.zarr",
    ),
    "fit_dataset": (
        f"{SEEDED}/dataset_level.zarr",
        f"{ANALYSIS}/dataset_level/{{key}}/seed{{seed}}.zarr",
    ),
    "fit_category": (
        f"{SEEDED}/category_level.zarr",
        f"{ANALYSIS}/category_level/{{key}}/seed{{seed}}.zarr",
    ),
    "merge": (
        f"{SEEDED}/patch_masks/{{shard}}.zarr",
        f"{ANALYSIS}/patch_masks/{{key}}/seed{{seed}}/{{shard}}.zarr",
    ),
    "baselines": (None, f"{ANALYSIS}/patch_masks/{{key}}/{{shard}}.zarr"),
    "refine": (
        f"{SEEDED}/pixel_masks/{{shard}}.zarr",
        f"{ANALYSIS}/pixel_masks/{{key}}/seed{{seed}}/{{shard}}.zarr",
    ),
    "refine_unseeded": (None, f"{ANALYSIS}/pixel_masks/{{key}}/{{shard}}.zarr"),
    "objects": (
        f"{SEEDED}/objects/{{shard}}.zarr",
        f"{ANALYSIS}/objects/{{key}}/seed{{seed}}/{{shard}}.zarr",
    ),
    "objects_unseeded": (None, f"{ANALYSIS}/objects/{{key}}/{{shard}}.zarr"),
    "assign": (
        f"{SEEDED}/classes.zarr",
        f"{ANALYSIS}/classes/{{key}}/seed{{seed}}.zarr",
    ),
    "segment": (
        f"{SEEDED}/semantic/{{shard}}.zarr",
        f"{ANALYSIS}/semantic/{{key}}/seed{{seed}}/{{shard}}.zarr",
    ),
    "pred": (
        f"{SEEDED}/pred/{{shard}}",
        f"{ANALYSIS}/pred/{{key}}/seed{{seed}}/{{shard}}",
    ),
    "evaluate": (
        f"{SEEDED}/metrics.json",
        f"{ANALYSIS}/scores/{{key}}/seed{{seed}}/metrics.json",
    ),
    "separability": (None, f"{ANALYSIS}/separability/{{key}}.json"),
}
# the input name under which a stage's output reaches the stages that read it
INPUT_NAMES = {
    "index": "index",
    "extract": "features",
    "image_level": "image_level",
    "fit_dataset": "dataset_level",
    "fit_category": "category_level",
    "merge": "patch_masks",
    "baselines": "patch_masks",
    "refine": "pixel_masks",
    "objects": "objects",
    "assign": "classes",
    "segment": "semantic",
}
# stages with one job per seed (no shard): their per-shard inputs are lists over shards
WHOLE_RUN = {"fit_dataset", "fit_category", "assign", "evaluate", "separability"}


@functools.cache
def analysis_variants():
    """The analysis variants (lcseg_steps.analysis.grid.variants), each config checked
    against the schema; built once, only when an analysis target is asked for."""
    schema = os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")
    if not HAS_GT:
        raise ValueError(
            "snakemake analysis scores every variant against ground truth, and dataset "
            f"{config['dataset']['name']!r} has none here (dataset.masks)"
        )
    return analysis_grid.variants(config, lambda cfg: validate(cfg, schema=schema))


@functools.cache
def analysis_nodes():
    return analysis_grid.nodes(analysis_variants())


@functools.cache
def analysis_extractions():
    return analysis_grid.extractions(analysis_variants())


@functools.cache
def base_keys():
    return analysis_variants()[0].keys


def stage_path(stage, key, seeded=True, **fill):
    """The path of one stage's output (``stage`` may be ``skipped`` or ``pred``, parts of
    index's and segment's outputs): the run's own when ``key`` is the run's own."""
    owner = {"skipped": "index", "pred": "segment"}.get(stage, stage)
    if base_keys().get(owner) == key:
        path = STAGE_PATHS[stage][0]
    elif not seeded and f"{stage}_unseeded" in STAGE_PATHS:
        path = STAGE_PATHS[f"{stage}_unseeded"][1]
    else:
        path = STAGE_PATHS[stage][1]
    return path.format(key=key, **fill)


def node_of(stage, wildcards):
    return analysis_nodes()[stage][wildcards.key]


def analysis_inputs(stage):
    """An analysis rule's named inputs: the outputs of the stages its node reads, for the
    job's seed and shard (lists over shards for a whole-run stage)."""

    def inputs(wildcards):
        node = node_of(stage, wildcards)
        seed = wildcards.get("seed", ANALYSIS_SEEDS[0])
        out = {}
        for dep, key in node.deps.items():
            seeded = analysis_nodes()[dep][key].seeded
            fill = {"seed": seed}
            if stage in WHOLE_RUN and dep != "index":
                out[INPUT_NAMES[dep]] = [
                    stage_path(dep, key, seeded, shard=s, **fill) for s in SHARDS
                ]
            else:
                out[INPUT_NAMES[dep]] = stage_path(
                    dep, key, seeded, shard=wildcards.get("shard"), **fill
                )
        if stage == "evaluate":
            out["skipped"] = stage_path("skipped", node.deps["index"])
        return out

    return inputs


def analysis_settings(stage):
    """An analysis job's ``params.settings``: its node's, with the seed for a seeded
    stage, so each store records what a normal run of its variant would."""

    def settings(wildcards):
        out = dict(node_of(stage, wildcards).settings)
        if stage in SEEDED_STAGES:
            out["seed"] = int(wildcards.seed)
        return out

    return settings


def separability_settings(wildcards):
    for e in analysis_extractions():
        if e["key"] == wildcards.key:
            c = e["config"]["clustering"]
            return {
                "features": e["features"],
                "backbone": e["backbone"],
                "layer": e["layer"],
                "k_image": c["k_image"],
                "max_iter": c["max_iter"],
                "tol": c["tol"],
                "seed": ANALYSIS_SEEDS[0],
            }
    raise ValueError(f"no extraction with key {wildcards.key} in the analysis grid")


def separability_inputs(wildcards):
    node = analysis_nodes()["extract"][wildcards.key]
    return {
        "index": stage_path("index", node.deps["index"]),
        "features": [stage_path("extract", wildcards.key, shard=s) for s in SHARDS],
    }


def separability_targets():
    if not config["analysis"]["separability"]:
        return []
    keys = [e["key"] for e in analysis_extractions()]
    return [STAGE_PATHS["separability"][1].format(key=k) for k in keys]


def metrics_paths(variant):
    key = variant.keys["evaluate"]
    return [stage_path("evaluate", key, seed=s) for s in ANALYSIS_SEEDS]


def analysis_table_inputs(wildcards):
    return {
        "metrics": [p for v in analysis_variants() for p in metrics_paths(v)],
        "separability": separability_targets(),
    }


@functools.cache
def analysis_table_params():
    """The table stage's rows: each variant's name, kind, cells and metrics files."""
    vs = analysis_variants()
    varying = analysis_grid.varying_keys(vs)
    return {
        "varying": varying,
        "variants": [
            {
                "name": v.name,
                "kind": v.kind,
                "keys": analysis_grid.row_keys(v, varying),
                "metrics": metrics_paths(v),
            }
            for v in vs
        ],
        "separability": (
            [
                {
                    "backbone": e["backbone"],
                    "layer": e["layer"],
                    "path": STAGE_PATHS["separability"][1].format(key=e["key"]),
                }
                for e in analysis_extractions()
            ]
            if config["analysis"]["separability"]
            else []
        ),
    }


ANALYSIS_TABLE = {
    "csv": f"{ANALYSIS}/table.csv",
    "md": f"{ANALYSIS}/table.md",
    "miou_plot": f"{ANALYSIS}/miou.png",
    "separability_plot": f"{ANALYSIS}/separability.png",
    "separability_hist": f"{ANALYSIS}/separability_histograms.png",
}


def analysis_report_inputs(wildcards):
    return {
        **report_inputs(wildcards),
        "analysis_table": ANALYSIS_TABLE["csv"],
        "analysis_plots": [
            ANALYSIS_TABLE["miou_plot"],
            ANALYSIS_TABLE["separability_plot"],
            ANALYSIS_TABLE["separability_hist"],
        ],
    }
