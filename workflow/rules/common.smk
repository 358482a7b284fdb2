import os

from snakemake.utils import validate

# Snakemake puts the Snakefile's folder (the repository root) on sys.path while parsing.
from lcseg_steps.data.index import list_images, shard_names

validate(config, schema="../schemas/config.schema.yaml")

RESULTS = f"results/{config['run']}"
LOGS = f"{RESULTS}/logs"
SEEDS = config["seeds"]
# stages downstream of the first stochastic one live under one folder per seed
SEEDED = f"{RESULTS}/seed{{seed}}"
SEEDED_LOGS = f"{LOGS}/seed{{seed}}"

if config["dataset"]["name"] == "demo" and not config["dataset"]["root"]:
    config["dataset"]["root"] = f"{RESULTS}/demo"

# Image ids are known when the DAG is built (split file or annotation JSON), so the
# shard list is fixed here and no checkpoint is needed.
IMAGES = list_images(config["dataset"])
if not IMAGES:
    raise ValueError(f"dataset {config['dataset']['name']!r} lists no images")
SHARDS = shard_names(len(IMAGES), config["shard_size"])


wildcard_constraints:
    shard=r"s\d+",
    seed=r"\d+",


def dataset_inputs(wildcards):
    """What the index reads: the generated demo tree, or the listing files of a real dataset."""
    ds = config["dataset"]
    if ds["name"] == "demo":
        return [ds["root"]]
    if ds["name"] == "voc12":
        root = ds["root"]
        lists = [os.path.join(root, "ImageSets", "Segmentation", f"{ds['split']}.txt")]
        return lists + [os.path.join(root, p) for p in ds["extra_lists"]]
    return [os.path.join(ds["root"], "annotations", f"instances_{ds['split']}.json")]


def index_settings():
    return {"dataset": config["dataset"], "shard_size": config["shard_size"]}


def extract_settings():
    return {"backbone": config["backbone"], "extract": config["extract"]}


def stage_settings(section, *keys, seeded=True):
    """The config keys one stage uses (plus the job's seed), as a params function, so a
    change of one key reruns that stage and its dependents and nothing else."""

    def settings(wildcards):
        out = {key: config[section][key] for key in keys}
        if seeded:
            out["seed"] = int(wildcards.seed)
        return out

    return settings


def clustering_settings(*keys):
    return stage_settings("clustering", *keys)


def merge_inputs(wildcards):
    levels = config["clustering"]["levels"]
    inputs = {
        "features": f"{RESULTS}/features/{wildcards.shard}.zarr",
        "image_level": f"{RESULTS}/seed{wildcards.seed}/image_level/{wildcards.shard}.zarr",
    }
    if "dataset" in levels:
        inputs["dataset_level"] = f"{RESULTS}/seed{wildcards.seed}/dataset_level.zarr"
    if "category" in levels:
        inputs["category_level"] = f"{RESULTS}/seed{wildcards.seed}/category_level.zarr"
    return inputs


def run_facts():
    """Run-level facts recorded in metrics.json (the config digest is added by the
    script, so an unrelated config change does not rerun the scoring)."""
    return {"run": config["run"], "dataset": config["dataset"]["name"]}


REFINE_KEYS = (
    "crf",
    "threshold",
    "iterations",
    "gauss_sxy",
    "gauss_compat",
    "bilateral_sxy",
    "bilateral_srgb",
    "bilateral_compat",
    "clip",
)


def objects_settings(wildcards):
    """Region and descriptor settings; the backbone matters only for CLS descriptors."""
    out = dict(config["objects"])
    if out["descriptor"] == "cls":
        out["backbone"] = config["backbone"]
        out["device"] = config["extract"]["device"]
    else:
        out["feature"] = config["clustering"]["feature"]
    return out
