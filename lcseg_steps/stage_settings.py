"""The settings of every stage: exactly the config keys it reads, named as in the schema.

A rule passes ``stage_settings(stage, config, seed)`` as ``params.settings``, so a change
of one key reruns the stages that read it and nothing else, and every store records the
settings it was made with (``lcseg_steps.stage``). The analysis grid
(``lcseg_steps.analysis.grid``) keys each variant's stages on the same dicts, so two
variants share a stage exactly when a normal run of each would compute it alike.

Imported by the Snakefile while the DAG is built: nothing heavy (no numpy, no torch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lcseg_steps.backbone import patch_size_of

# config block and keys per stage; the seeded ones also get the job's seed
KEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "image_level": (
        "clustering",
        ("feature", "image_clusterer", "k_image", "fg_rule", "max_iter", "tol", "device"),
    ),
    "fit_dataset": (
        "clustering",
        ("feature", "k_dataset", "fg_vote", "init_sample", "max_iter", "tol", "device"),
    ),
    "fit_category": (
        "clustering",
        (
            "feature",
            "n_categories",
            "category_clusterer",
            "k_category",
            "fg_vote",
            "category_fit_sample",
            "max_iter",
            "tol",
            "device",
        ),
    ),
    "merge": ("clustering", ("feature", "levels", "consistency", "min_levels")),
    "refine": (
        "refine",
        (
            "crf",
            "threshold",
            "iterations",
            "gauss_sxy",
            "gauss_compat",
            "bilateral_sxy",
            "bilateral_srgb",
            "bilateral_compat",
            "clip",
        ),
    ),
    "assign": ("labels", ("n_classes", "class_clusterer", "n_neighbors", "fit_sample")),
}
# stages whose store lives under seed<N>/ and whose settings carry the seed
SEEDED = frozenset({"image_level", "fit_dataset", "fit_category", "merge", "assign"})


def index_settings(config: Mapping) -> dict:
    """The dataset, and what decides which images extract can take: the resize policy's
    long side and the backbone's patch size (the backbone itself only when its name does
    not tell the patch size)."""
    bb = config["backbone"]
    out = {
        "dataset": config["dataset"],
        "shard_size": config["shard_size"],
        "long_side": config["extract"]["long_side"],
        "patch_size": patch_size_of(bb["name"], bb.get("overrides")),
    }
    if out["patch_size"] is None:
        out["backbone"] = {"name": bb["name"], "overrides": bb.get("overrides") or {}}
    return out


def objects_settings(config: Mapping) -> dict:
    """Region and descriptor settings; the backbone matters only for CLS descriptors."""
    out = dict(config["objects"])
    if out["descriptor"] == "cls":
        out["backbone"] = config["backbone"]
        out["device"] = config["extract"]["device"]
    else:
        out["feature"] = config["clustering"]["feature"]
    return out


def evaluate_settings(config: Mapping) -> dict:
    """What scoring reads from the config besides its inputs (passed as params)."""
    return {
        "matching": config["evaluate"]["matching"],
        "n_classes": config["labels"]["n_classes"],
    }


def stage_settings(stage: str, config: Mapping, seed: int | None = None) -> dict[str, Any]:
    """``stage``'s settings under ``config`` (plus ``seed`` for a seeded stage)."""
    if stage == "index":
        return index_settings(config)
    if stage == "extract":
        return {"backbone": config["backbone"], "extract": config["extract"]}
    if stage == "objects":
        return objects_settings(config)
    if stage == "evaluate":
        return evaluate_settings(config)
    if stage not in KEYS:
        raise KeyError(f"no settings for stage {stage!r}")
    section, keys = KEYS[stage]
    out = {key: config[section][key] for key in keys}
    if stage in SEEDED:
        if seed is None:
            raise ValueError(f"stage {stage!r} is seeded: give its seed")
        out["seed"] = int(seed)
    return out


def config_problems(config: Mapping) -> list[str]:
    """What the schema cannot say: keys that contradict each other (each would otherwise
    stop a job halfway through the run, after extraction)."""
    c = config["clustering"]
    out = []
    stored = list(config["extract"]["store_features"])
    if c["feature"] not in stored:
        out.append(
            f"clustering.feature is {c['feature']!r} but extract.store_features {stored} "
            "does not store it"
        )
    if c["consistency"] == "vote" and c["min_levels"] > len(c["levels"]):
        out.append(
            f"clustering.min_levels is {c['min_levels']} but only {len(c['levels'])} "
            f"level(s) are enabled ({', '.join(c['levels'])}): lower min_levels or use "
            "consistency union or intersect"
        )
    if c["image_clusterer"] != "kmeans" and c["k_image"] != 2:
        out.append(
            f"clustering.image_clusterer {c['image_clusterer']!r} splits each image in two: "
            f"clustering.k_image must be 2, got {c['k_image']}"
        )
    return out


def check_config(config: Mapping, where: str = "config") -> None:
    """Raise one ValueError naming every problem of :func:`config_problems`."""
    problems = config_problems(config)
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))
