import os

from snakemake.utils import validate

# Snakemake puts the Snakefile's folder (the repository root) on sys.path while parsing.
from lcseg_steps.backbone import embed_dim_of
from lcseg_steps.data.index import list_images, shard_names
from lcseg_steps.data.registry import get_dataset
from lcseg_steps.kmeans import STREAM_CACHE_BYTES
from lcseg_steps.listing_cache import count_images
from lcseg_steps.stage_settings import SEEDED as SEEDED_STAGES
from lcseg_steps.stage_settings import check_config, stage_settings

validate(config, schema="../schemas/config.schema.yaml")
check_config(config)  # keys that contradict each other, before any job runs

RESULTS = f"results/{config['run']}"
LOGS = f"{RESULTS}/logs"
SEEDS = config["seeds"]
# stages downstream of the first stochastic one live under one folder per seed
SEEDED = f"{RESULTS}/seed{{seed}}"
SEEDED_LOGS = f"{LOGS}/seed{{seed}}"

# the registered dataset (lcseg_steps/data/registry.py): inputs, listing, class names
DATASET = get_dataset(config["dataset"]["name"])
if DATASET.generated and not config["dataset"]["root"]:
    config["dataset"]["root"] = f"{RESULTS}/{DATASET.name}"

# Image ids are known when the DAG is built (split file or annotation JSON), so the
# shard list is fixed here and no checkpoint is needed. The DAG needs only their number;
# for COCO it is cached next to the results, keyed on the instances JSON's path, size,
# mtime, ctime and inode (lcseg_steps/listing_cache.py).
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


def dataset_inputs(wildcards):
    """What the index reads: the registered dataset's listing files (the generated tree
    for demo)."""
    return list(DATASET.inputs(config["dataset"]))


def settings_of(stage):
    """A rule's ``params.settings``: the config keys its stage reads
    (lcseg_steps/stage_settings.py), with the job's seed for a seeded stage (a params
    function then, which Snakemake evaluates once per job)."""
    if stage in SEEDED_STAGES:
        return lambda wildcards: stage_settings(stage, config, int(wildcards.seed))
    return stage_settings(stage, config)


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


def final_targets():
    """The default target's inputs: scores and the report, or without ground truth every
    seed's predictions and the report."""
    if HAS_GT:
        return [f"{RESULTS}/metrics_summary.json", f"{RESULTS}/report.html"]
    return [f"{RESULTS}/report.html"] + expand(
        f"{RESULTS}/seed{{seed}}/pred/{{shard}}", seed=SEEDS, shard=SHARDS
    )


def report_inputs(wildcards):
    """The report's inputs: the first seed's masks and predictions, the skipped images,
    and the scores when there is ground truth."""
    seeded = f"{RESULTS}/seed{SEEDS[0]}"
    inputs = {
        "index": f"{RESULTS}/images.tsv",
        "skipped": f"{RESULTS}/skipped.tsv",
        "patch_masks": expand(f"{seeded}/patch_masks/{{shard}}.zarr", shard=SHARDS),
        "pixel_masks": expand(f"{seeded}/pixel_masks/{{shard}}.zarr", shard=SHARDS),
        "semantic": expand(f"{seeded}/semantic/{{shard}}.zarr", shard=SHARDS),
    }
    if HAS_GT:
        inputs["summary"] = f"{RESULTS}/metrics_summary.json"
        inputs["metrics"] = f"{seeded}/metrics.json"
        inputs["iou"] = f"{seeded}/per_class_iou.png"
        inputs["confusion"] = f"{seeded}/confusion.png"
    return inputs


# --- Resource estimates (scheduling only: no script reads them, so outputs do not depend
# on them). mem_mb grows with the attempt, so `--retries` resubmits with more memory.

MIB = 1024**2
IMAGES_PER_SHARD = min(config["shard_size"], N_IMAGES)


def patches_per_image():
    """ViT patches of a typical 4:3 image at extract.long_side (16 px patches)."""
    side = (config["extract"]["long_side"] or 640) // 16
    return max(1, side * (side * 3 // 4))


def embed_dim():
    """Feature width of the configured backbone (lcseg_steps.backbone's table; overrides
    win, ViT-B when the family is unknown)."""
    bb = config["backbone"]
    return embed_dim_of(bb["name"], bb.get("overrides")) or 768


def uses_cuda(device):
    return 1 if str(device).startswith("cuda") else 0


def cluster_env():
    """The k-means rules' conda env: the one with CuPy when the config asks for CUDA (with
    ``auto`` a node without CuPy clusters on the CPU)."""
    if uses_cuda(config["clustering"]["device"]):
        return "../../envs/cluster-gpu.yaml"
    return "../../envs/cluster.yaml"


def shard_mem_mb(base_mb, kb_per_image):
    """Memory of a per-shard job: a fixed base plus a share per image of the shard."""

    def mem_mb(wildcards, attempt):
        return int((base_mb + kb_per_image * IMAGES_PER_SHARD / 1024) * attempt)

    return mem_mb


def shard_runtime(base_min, s_per_image):
    """Wall time (minutes) of a per-shard job, with a 2x margin on the per-image cost."""
    return int(base_min + 2 * s_per_image * IMAGES_PER_SHARD / 60 + 1)


def extract_kb_per_image():
    """Decoded image, activations and the stored float16 features of one image."""
    stored = len(config["extract"]["store_features"]) * embed_dim() * 2
    return 3 * 1024 + 4 * patches_per_image() * stored / 1024


def fit_mem_mb(level):
    """Global fit: the float32 sample (clustering.init_sample rows at the dataset level,
    clustering.category_fit_sample per pseudo-category at the category level; every patch
    when null), the streamed fit's 1 GiB float32 block cache, ~17 bytes of per-row state
    per patch, and 1 GiB of interpreter and libraries.
    """
    c = config["clustering"]
    n_patches = N_IMAGES * patches_per_image()
    rows = c["init_sample"] or n_patches
    if level == "category":
        per = c["category_fit_sample"]
        rows = per * c["n_categories"] if per else n_patches
    rows = min(rows, n_patches) if level == "dataset" else rows
    need = rows * embed_dim() * 4 + STREAM_CACHE_BYTES + 17 * n_patches + 1024 * MIB

    def mem_mb(wildcards, attempt):
        return int(need / MIB * attempt)

    return mem_mb


def fit_runtime():
    """Minutes for a streamed fit: a few seconds per million patches and iteration."""
    n_patches = N_IMAGES * patches_per_image()
    return int(10 + config["clustering"]["max_iter"] * n_patches / 1e6 * 3 / 60 * 2)


def dataset_mem_mb(base_mb, kb_per_image):
    """Memory of a job that reads something of every image (assign, evaluate)."""

    def mem_mb(wildcards, attempt):
        return int((base_mb + kb_per_image * N_IMAGES / 1024) * attempt)

    return mem_mb


def assign_fit_mb():
    """Memory of the class clustering beyond the descriptors: Ward's condensed float64
    distances of the fitted regions (at most fit_sample, about 20 an image) and their
    copy; spectral's kNN search and embedding stay below; kmeans needs none."""
    labels = config["labels"]
    if labels["class_clusterer"] == "kmeans":
        return 0
    m = min(labels["fit_sample"] or 20 * N_IMAGES, 20 * N_IMAGES)
    return 8 * m * m / 2**20


def dataset_runtime(base_min, s_per_image):
    return int(base_min + 2 * s_per_image * N_IMAGES / 60 + 1)


def feature_kb_per_image():
    """One image's clustered feature rows in float32."""
    return patches_per_image() * embed_dim() * 4 / 1024


def objects_gpu():
    cls = config["objects"]["descriptor"] == "cls"
    return uses_cuda(config["extract"]["device"]) if cls else 0
