from snakemake.utils import validate

# Snakemake puts the Snakefile's folder (the repository root) on sys.path while parsing.
from lcseg_steps import pipeline
from lcseg_steps.data.image_table import list_images, shard_names
from lcseg_steps.data.registry import get_dataset
from lcseg_steps.data.listing_cache import count_images
from lcseg_steps.runner.resources import Sizing
from lcseg_steps.runner.settings import check_config, is_auto
from lcseg_steps.stage_reads import scope_of

validate(config, schema="../schemas/config.schema.yaml")
check_config(config)  # keys that contradict each other, before any job runs

RESULTS = f"results/{config['run']}"
LOGS = f"{RESULTS}/logs"
SEEDS = config["seeds"]

# the registered dataset (lcseg_steps/data/registry.py): inputs, listing, class names
DATASET = get_dataset(config["dataset"]["name"])
if DATASET.generated and not config["dataset"]["root"]:
    config["dataset"]["root"] = f"{RESULTS}/{DATASET.name}"

# Image ids are known when the DAG is built (split file or annotation JSON), so the
# shard list is fixed here and no checkpoint is needed. The DAG needs only their number;
# for COCO it is cached next to the results, keyed on the instances JSON's path, size,
# mtime, ctime and inode (lcseg_steps/data/listing_cache.py).
N_IMAGES = count_images(config["dataset"], f"{RESULTS}/.listing-cache.json")
if not N_IMAGES:
    raise ValueError(f"dataset {config['dataset']['name']!r} lists no images")
SHARDS = shard_names(N_IMAGES, config["shard_size"])
# Without any ground truth (a folder without masks) the run ends with the predictions and
# the report: no evaluate, no summary. Only a folder can lack it (listing one is cheap).
HAS_GT = DATASET.name != "folder" or any(r.gt for r in list_images(config["dataset"]))


wildcard_constraints:
    shard=r"s\d+",
    seed=r"\d+",
    key=r"[0-9a-f]{12}",


# --- Stage rules from the pipeline's one declaration (lcseg_steps/pipeline.py), for the
# default run (workflow/rules/pipeline.smk) and the analysis (workflow/rules/analysis.smk).

SIZING = Sizing(config, N_IMAGES)
RUN_GRAPH = pipeline.graph(config)
RUN_SEEDED = pipeline.seed_dependent(config)


def fill(template, wildcards, **extra):
    """A path template with the job's wildcards (and ``extra``) filled in."""
    return template.format(**{**dict(wildcards.items()), **extra})


def run_path(stage, output):
    """The run's own path (template) of one stage output."""
    return f"{RESULTS}/{pipeline.run_template(stage, output, RUN_SEEDED[stage])}"


def rule_outputs(stage, path_of, reports):
    """A rule's named outputs: directory() for stores, report() where declared."""
    s = pipeline.get_stage(stage)
    out = {}
    for name, template in s.outputs.items():
        path = path_of(stage, name)
        if pipeline.is_directory(template):
            path = directory(path)
        elif reports and name in s.report:
            caption, category = s.report[name]
            path = report(path, caption=caption, category=category)
        out[name] = path
    return out


def stage_inputs(stage, reads, path_of, cfg=None, shards=None):
    """Input function of one stage's job: each read output under its name, a list over
    shards where a whole-run stage reads a per-shard one. ``reads``: ``{input name:
    "stage.output"}`` for the job's wildcards; ``path_of(stage, output, wildcards)``;
    ``cfg`` and ``shards``: the run's (default: the config's, ``SHARDS``)."""
    s = pipeline.get_stage(stage)
    cfg = config if cfg is None else cfg
    shards = SHARDS if shards is None else shards

    def inputs(wildcards):
        out = dict(s.sources(cfg)) if s.sources else {}
        for name, ref in reads(wildcards).items():
            dep, output = pipeline.split_ref(ref)
            path = path_of(dep, output, wildcards)
            if not s.per_shard and pipeline.get_stage(dep).per_shard:
                out[name] = [fill(path, wildcards, shard=sh) for sh in shards]
            else:
                out[name] = fill(path, wildcards)
        return out

    return inputs


def rule_resources(stage, sizing=None):
    """Snakemake resources of a stage's rules, sized on the run's config (``sizing``:
    default ``SIZING``)."""
    return scaled_resources(pipeline.get_stage(stage).resources(sizing or SIZING))


def scaled_resources(resources):
    """Snakemake resources from estimates: a float ``mem_mb`` grows with the attempt, so
    ``--retries`` resubmits with more memory."""
    out = {}
    for name, value in resources.items():
        if isinstance(value, float):
            value = (lambda v: lambda wildcards, attempt: int(v * attempt))(value)
        out[name] = value
    return out


def stage_env(stage, cfg=None):
    env = pipeline.get_stage(stage).env
    return env(config if cfg is None else cfg) if callable(env) else env


def run_params(stage):
    """``params.settings`` (the keys it reads, named as in the schema; a function of the
    job's seed for a seeded stage).
    """
    s = pipeline.get_stage(stage)
    out = {}
    if s.reads:
        if s.seeded:
            out["settings"] = lambda wildcards: pipeline.stage_settings(
                stage, config, int(wildcards.seed)
            )
        else:
            out["settings"] = pipeline.stage_settings(stage, config)
    return out


def log_path(stage, logs, seeded, suffix="log"):
    """A stage's log (or, ``suffix="tsv"``, benchmark) path under ``logs``; ``seeded``:
    the graph's seed-dependent stages (``pipeline.seed_dependent``)."""
    s = pipeline.get_stage(stage)
    args = (stage, s.per_shard, seeded[stage], False)
    if suffix == "tsv":
        return f"{logs}/{pipeline.benchmark_template(*args)}.tsv"
    return f"{logs}/{pipeline.log_template(*args)}.log"


def run_log(stage, suffix="log"):
    return log_path(stage, LOGS, RUN_SEEDED, suffix)


def stage_targets(graph, path_of, seeds, analysis=False):
    """The outputs of the declared ``target`` stages of ``graph`` (of the default run, or
    of an ``analysis`` variant), every seed and shard."""
    out = []
    for stage in graph:
        s = pipeline.get_stage(stage)
        if s.is_target(analysis):
            for name in s.outputs:
                path = path_of(stage, name)
                out += expand(path, seed=seeds, shard=SHARDS) if "{" in path else [path]
    return out


def scored_report_inputs(path_of, seed, shards, results, has_gt, cfg=None):
    """A report's inputs, of a run or an applied run (``path_of``: its path function;
    ``cfg``: its config, default the run's): the index, the skipped images, the masks
    and predictions of ``seed``, and the scores when there is ground truth."""

    def first_seed(stage, output):
        return expand(path_of(stage, output), seed=seed, shard=shards)

    if scope_of(config if cfg is None else cfg) == "scene":
        # scene mode: the levels' store in place of the patch masks, no pixel masks
        # (the semantic maps are the refined result) and no regions
        semantic = first_seed("scene_refine", "semantic")
        inputs = {
            "index": path_of("index", "index"),
            "skipped": path_of("index", "skipped"),
            "patch_masks": first_seed("scene_levels", "scene_levels"),
            "pixel_masks": semantic,
            "semantic": semantic,
        }
    else:
        inputs = {
            "index": path_of("index", "index"),
            "skipped": path_of("index", "skipped"),
            "patch_masks": first_seed("merge", "patch_masks"),
            "pixel_masks": first_seed("refine", "pixel_masks"),
            "semantic": first_seed("segment", "semantic"),
            # the region mode (run facts) and, for split, the gallery's region outlines
            "objects": first_seed("objects", "objects"),
        }
    if has_gt:
        inputs["summary"] = f"{results}/metrics_summary.json"
        for name in ("metrics", "iou", "confusion"):
            inputs[name] = first_seed("evaluate", name)[0]
    return inputs


def report_inputs(wildcards):
    """The run report's inputs (``scored_report_inputs`` of the first seed), and the
    stores holding an ``auto`` count's curve."""

    def first_seed(stage, output):
        return expand(run_path(stage, output), seed=SEEDS[0], shard=SHARDS)

    inputs = scored_report_inputs(run_path, SEEDS[0], SHARDS, RESULTS, HAS_GT)
    # a count chosen by the eigengap: its curve is drawn from the store that holds it
    if is_auto(config["labels"]["n_classes"]):
        inputs["classes"] = first_seed("assign", "classes")[0]
    if is_auto(config["clustering"]["n_categories"]) and "fit_category" in RUN_GRAPH:
        inputs["category_level"] = first_seed("fit_category", "category_level")[0]
    return inputs


def final_targets():
    """The default target's inputs: scores and the report, or without ground truth every
    seed's predictions and the report; and the outputs of declared target stages."""
    targets = stage_targets(RUN_GRAPH, run_path, SEEDS)
    if HAS_GT:
        return [f"{RESULTS}/metrics_summary.json", f"{RESULTS}/report.html", *targets]
    pred = expand(
        run_path(pipeline.provider(config, "segment"), "pred"), seed=SEEDS, shard=SHARDS
    )
    return [f"{RESULTS}/report.html", *pred, *targets]
