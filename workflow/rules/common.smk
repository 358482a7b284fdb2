import os

from snakemake.utils import validate

# Snakemake puts the Snakefile's folder (the repository root) on sys.path while parsing.
from lcseg_steps.data.index import list_images, shard_names
from lcseg_steps.settings import settings_digest

validate(config, schema="../schemas/config.schema.yaml")

RESULTS = f"results/{config['run']}"
LOGS = f"{RESULTS}/logs"

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


def clustering_settings(*keys):
    """The clustering keys one stage uses, so a change reruns that stage and no other."""
    return {key: config["clustering"][key] for key in keys}


def merge_inputs(wildcards):
    levels = config["clustering"]["levels"]
    inputs = {
        "features": f"{RESULTS}/features/{wildcards.shard}.zarr",
        "image_level": f"{RESULTS}/image_level/{wildcards.shard}.zarr",
    }
    if "dataset" in levels:
        inputs["dataset_level"] = f"{RESULTS}/dataset_level.zarr"
    if "category" in levels:
        inputs["category_level"] = f"{RESULTS}/category_level.zarr"
    return inputs
