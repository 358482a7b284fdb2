# `snakemake analysis` (workflow/rules/analysis.smk): the grid of the config's analysis
# block (lcseg_steps/analysis/grid.py). Every stage of every variant lives at a path keyed
# on its settings and its inputs' keys, analysis/<folder>/<key>/..., or at the run's own
# path when its key is the run's own.
import functools

from lcseg_steps.analysis import grid as analysis_grid

ANALYSIS = f"{RESULTS}/analysis"
ANALYSIS_LOGS = f"{LOGS}/analysis"
ANALYSIS_SEEDS = config["analysis"]["seeds"]


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


def stage_path(stage, output, key, seeded, **fill):
    """The path of one stage output of the node ``key``: the run's own when ``key`` is
    the run's own (``fill``: the job's seed and shard)."""
    if base_keys().get(stage) == key:
        return run_path(stage, output).format(**fill)
    template = pipeline.analysis_template(stage, output, seeded)
    return f"{ANALYSIS}/{template}".format(key=key, **fill)


def node_of(stage, wildcards):
    return analysis_nodes()[stage][wildcards.key]


def node_path(dep, output, wildcards, key):
    node = analysis_nodes()[dep][key]
    seed = wildcards.get("seed", ANALYSIS_SEEDS[0])
    return stage_path(dep, output, key, node.seeded, seed=seed, shard="{shard}")


def analysis_inputs(stage):
    """An analysis job's named inputs: the outputs of the stages its node reads, for the
    job's seed and shard (lists over shards for a whole-run stage)."""

    def inputs(wildcards):
        node = node_of(stage, wildcards)
        return stage_inputs(
            stage,
            lambda w: node.reads,
            lambda dep, output, w: node_path(dep, output, w, node.deps[dep]),
        )(wildcards)

    return inputs


def analysis_settings(stage):
    """An analysis job's ``params.settings``: its node's, with the seed for a seeded
    stage, so each store records what a normal run of its variant would."""

    def settings(wildcards):
        node = node_of(stage, wildcards)
        if pipeline.get_stage(stage).seeded:
            return {**node.settings, "seed": int(wildcards.seed)}
        return node.settings

    return settings


def analysis_params(stage):
    out = {"stage": stage}
    if pipeline.get_stage(stage).reads:
        out["settings"] = analysis_settings(stage)
    return out


def analysis_rules():
    """The analysis stage rules, each as (name, stage, seeded): one per stage, and a
    second, ``_unseeded``, for a stage that depends on the seed in some variants and not
    in others."""
    seeded = {}
    for kind in pipeline.KINDS:
        for stage, dep in pipeline.seed_dependent(
            config, kind, every_level=True
        ).items():
            seeded.setdefault(stage, set()).add(dep)
    out = []
    for s in pipeline.STAGES:
        if s.name in seeded:
            for flag in sorted(seeded[s.name], reverse=True):
                suffix = "_unseeded" if not flag and True in seeded[s.name] else ""
                out.append((f"analysis_{s.name}{suffix}", s.name, flag))
    return out


def analysis_output(seeded):
    def path_of(stage, output):
        return f"{ANALYSIS}/{pipeline.analysis_template(stage, output, seeded)}"

    return path_of


def analysis_log(stage, seeded, suffix="log"):
    s = pipeline.get_stage(stage)
    args = (stage, s.per_shard, seeded, True)
    if suffix == "tsv":
        return f"{ANALYSIS_LOGS}/{pipeline.benchmark_template(*args)}.tsv"
    return f"{ANALYSIS_LOGS}/{pipeline.log_template(*args)}.log"


SEPARABILITY = f"{ANALYSIS}/separability/{{key}}.json"


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
        "index": stage_path("index", "index", node.deps["index"], False),
        "features": [
            stage_path("extract", "features", wildcards.key, False, shard=s)
            for s in SHARDS
        ],
    }


def separability_targets():
    if not config["analysis"]["separability"]:
        return []
    return [SEPARABILITY.format(key=e["key"]) for e in analysis_extractions()]


def metrics_paths(variant):
    key = variant.keys["evaluate"]
    return [
        stage_path("evaluate", "metrics", key, True, seed=s) for s in ANALYSIS_SEEDS
    ]


def variant_targets():
    """The outputs of declared target stages of every variant, every seed and shard."""
    out = []
    for v in analysis_variants():

        def path_of(stage, output, nodes=v.nodes):
            node = nodes[stage]
            return stage_path(
                stage, output, node.key, node.seeded, seed="{seed}", shard="{shard}"
            )

        out += stage_targets(v.nodes, path_of, ANALYSIS_SEEDS, analysis=True)
    return sorted(set(out))


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
                    "path": SEPARABILITY.format(key=e["key"]),
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
