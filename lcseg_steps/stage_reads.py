"""How each stage's settings derive from the config, where a declared stage's ``reads``
(``lcseg_steps.pipeline``) is a function rather than a list of keys: settings drawn from
several blocks, blocks trimmed to what changes the stage's output, and the scope and
level switches its ``when`` asks. Imported by the Snakefile while the DAG is built:
nothing heavy."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lcseg_steps.runner import resources as res
from lcseg_steps.runner.settings import is_auto


def dotted_get(config: Mapping, dotted: str) -> Any:
    """The value at a dotted key (``clustering.k_image``) of a nested config."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def index_settings(config: Mapping) -> dict:
    """The dataset, and what decides which images extract can take: the resize policy's
    long side and the backbone's patch size (the backbone itself only when its name does
    not tell the patch size)."""
    from lcseg_steps.data.demo import demo_params
    from lcseg_steps.perimage.backbone import patch_size_of

    bb = config["backbone"]
    ds = dict(config["dataset"])
    if "demo" in ds:  # dataset.demo.touching only when set: other runs index as before
        ds["demo"] = demo_params(ds["demo"])
    out = {
        "dataset": ds,
        "shard_size": config["shard_size"],
        "long_side": config["extract"]["long_side"],
        "patch_size": patch_size_of(bb["name"], bb.get("overrides")),
    }
    if out["patch_size"] is None:
        out["backbone"] = {"name": bb["name"], "overrides": bb.get("overrides") or {}}
    return out


def dataset_sources(config: Mapping) -> dict:
    """What the index reads: the registered dataset's listing files (the generated tree
    for demo) and the optional ``dataset.image_list`` file restricting the listing."""
    from lcseg_steps.data.registry import get_dataset

    ds = config["dataset"]
    return {
        "dataset": list(get_dataset(ds["name"]).inputs(ds)),
        "image_list": ds["image_list"] or [],
    }


def objects_block(objects: Mapping) -> dict:
    """The ``objects`` block as a stage reads it: ``split`` only with ``regions: split``
    (its keys change nothing else, so they rerun nothing else)."""
    out = dict(objects)
    if out.get("regions") != "split":
        out.pop("split", None)
    return out


def objects_settings(config: Mapping) -> dict:
    """Region and descriptor settings; the backbone matters only for CLS descriptors, the
    clustered feature for masked-key descriptors and for split regions."""
    out = objects_block(config["objects"])
    if out["descriptor"] == "cls":
        out["backbone"] = config["backbone"]
        out["device"] = config["extract"]["device"]
    if out["descriptor"] == "masked_keys" or out["regions"] == "split":
        out["feature"] = config["clustering"]["feature"]
    return out


def reads_with_auto(keys: tuple[str, ...], count: str, auto_keys: tuple[str, ...]):
    """``keys``, and ``auto_keys`` too when the count key ``count`` is ``auto`` (so that a
    run with a fixed count does not rerun when only the auto settings change)."""

    def reads(config: Mapping) -> dict:
        dotted = keys + (auto_keys if is_auto(dotted_get(config, count)) else ())
        return {d.rsplit(".", 1)[-1]: dotted_get(config, d) for d in dotted}

    return reads


def cluster_env(config: Mapping) -> str:
    """The k-means rules' env: the one with CuPy when the config asks for CUDA (with
    ``auto`` a node without CuPy clusters on the CPU)."""
    if res.uses_cuda(config["clustering"]["device"]):
        return "../../envs/cluster-gpu.yaml"
    return "../../envs/cluster.yaml"


def scope_of(config: Mapping) -> str:
    """``labels.scope``: ``objects`` (the paper's, the default) or ``scene`` (every pixel
    a class, no background; docs/method.md, scene mode)."""
    return (config.get("labels") or {}).get("scope", "objects")


def objects_scope(config: Mapping) -> bool:
    return scope_of(config) == "objects"


def scene_scope(config: Mapping) -> bool:
    return scope_of(config) == "scene"


def has_level(level: str) -> Callable[[Mapping], bool]:
    def when(config: Mapping) -> bool:
        return objects_scope(config) and level in config["clustering"]["levels"]

    return when


def scene_block(config: Mapping) -> dict:
    """The ``scene`` block as scene mode reads it: ``k_image`` only when the image level
    runs (``segment_weight`` above 0)."""
    sc = dict(config["scene"])
    if sc["segment_weight"] == 0:
        sc.pop("k_image")
    return sc


def scene_model_settings(config: Mapping) -> dict:
    """What a new image is segmented with in scene mode: the run, backbone, extraction,
    the clustered feature and k-means keys, ``refine``, ``scene`` and the class count."""
    out = {d.rsplit(".", 1)[-1]: dotted_get(config, d) for d in ("run", "backbone", "extract")}
    out["clustering"] = {
        d.rsplit(".", 1)[-1]: dotted_get(config, d) for d in ("clustering.feature", *KMEANS_KEYS)
    }
    out["refine"] = dict(config["refine"])
    out["scene"] = scene_block(config)
    out["n_classes"] = config["labels"]["n_classes"]
    return out


def scene_levels_settings(config: Mapping) -> dict:
    """The ``scene`` keys and the image level's k-means keys; ``k_image`` only when the
    image level runs (``segment_weight`` above 0), so the k-means baseline (weight 0)
    does not rerun when it changes."""
    sc = config["scene"]
    out = {"feature": config["clustering"]["feature"]}
    if sc["segment_weight"] > 0:
        out["k_image"] = sc["k_image"]
    out["segment_weight"] = sc["segment_weight"]
    out["temperature"] = sc["temperature"]
    out.update({d.rsplit(".", 1)[-1]: dotted_get(config, d) for d in KMEANS_KEYS})
    return out


KMEANS_KEYS = ("clustering.max_iter", "clustering.tol", "clustering.device")
