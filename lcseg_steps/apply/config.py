"""``snakemake apply``: the config of an applied run, from the config and a fitted model.

``apply.model`` (a run name: ``results/<run>/seed<first seed>/model.zarr``; a run's folder
``results/<run>``, the same seed; or a path to a ``model.zarr``) segments the images under
``apply.images`` without refitting. The applied run is the pipeline's ``apply`` kind
(``lcseg_steps.pipeline``): index, extract, image level, merge (the model's dataset and
category centroids), refine, objects, segment (the nearest class prototype) and, with
``apply.masks``, evaluate; its outputs are under ``results/apply_<name>/``
(:func:`apply_run`). Every per-image setting is the model's, so each image comes out as
``load_model(model).segment(image)`` gives it.

Imported by the Snakefile while the DAG is built: nothing heavy (no torch).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping

from lcseg_steps import pipeline

# the objects settings that lcseg_steps.pipeline derives from other blocks
_DERIVED_OBJECTS = ("backbone", "device", "feature")


def locate_model(name: str, seed: int) -> str:
    """The ``model.zarr`` that ``name`` denotes, given the run's first ``seed``:

    - a run name (no ``/``, not ending in ``.zarr``): ``results/<name>/seed<seed>/model.zarr``;
    - a run's folder (``results/<run>``, holding ``seed<s>/model.zarr``): its
      ``seed<seed>/model.zarr``;
    - a model store (a folder with ``zarr.json``, such as ``.../model.zarr``): itself.

    A path that is none of these raises ``ValueError`` saying which forms it is not (a
    missing path, or a run's folder without that seed, say what is there). Whether a
    model store can be read is :func:`lcseg_steps.apply.model_zarr.load_model`'s to tell.
    """
    name = str(name).rstrip("/") or "/"
    if "/" not in name and not name.endswith(".zarr"):
        return f"results/{name}/seed{seed}/model.zarr"
    if not os.path.exists(name):
        return name  # the caller says it does not exist
    if os.path.isfile(os.path.join(name, "zarr.json")):
        return name
    if not os.path.isdir(name):
        raise ValueError(
            f"{name}: is a file, not a run's folder (results/<run>) nor a model store "
            "(results/<run>/seed<s>/model.zarr)"
        )
    seeds = sorted(
        d for d in os.listdir(name) if os.path.isdir(os.path.join(name, d, "model.zarr"))
    )
    model = os.path.join(name, f"seed{seed}", "model.zarr")
    if os.path.isdir(model):
        return model
    if seeds:
        raise ValueError(
            f"{name}: a run's folder without seed{seed}/model.zarr (the first of seeds); it "
            f"holds {', '.join(f'{d}/model.zarr' for d in seeds)}: set seeds or give that "
            "model's path"
        )
    raise ValueError(
        f"{name}: neither a model store (it has no zarr.json) nor a run's folder (it has no "
        "seed<s>/model.zarr); give results/<run>, results/<run>/seed<s>/model.zarr or a run "
        "name, after the run has exported its model (snakemake model)"
    )


def first_seed(name: str) -> int:
    """The lowest ``s`` of a run's ``seed<s>/model.zarr`` (``name``: a run name or a run's
    folder), 0 when there is none: the seed ``lcseg segment --model`` takes, having no
    config's ``seeds``."""
    folder = f"results/{name}" if "/" not in name and not name.endswith(".zarr") else name
    found = []
    if os.path.isdir(folder):
        for d in os.listdir(folder):
            if d.startswith("seed") and d[4:].isdigit():
                if os.path.isdir(os.path.join(folder, d, "model.zarr")):
                    found.append(int(d[4:]))
    return min(found, default=0)


def model_path(config: Mapping) -> str | None:
    """``apply.model`` as a path (:func:`locate_model` with the first of ``seeds``). None
    when ``apply.model`` is not set."""
    name = (config.get("apply") or {}).get("model")
    if not name:
        return None
    return locate_model(name, config["seeds"][0])


def apply_run(config: Mapping) -> str:
    """The applied run's name: ``apply_<apply.name>``, or ``apply_<the images folder's
    name>`` (its results are under ``results/<this>/``)."""
    ap = config["apply"]
    name = ap.get("name") or os.path.basename(os.path.normpath(ap["images"]))
    return f"apply_{name}"


def apply_config(config: Mapping, path: str) -> dict:
    """The applied run's config: ``config`` with the dataset a folder of
    ``apply.images`` (and ``apply.masks``) and every setting the model fixes taken from
    the model (the weights extracted with, layer, long side, precision, feature, image
    level, merge, refine, objects, class count, seed).

    Stops at once (:class:`lcseg_steps.apply.model_zarr.ModelMismatchError`, naming both values)
    when the config's backbone, ``extract.layer``, ``clustering.feature``, patch size or
    ``extract.long_side`` differ from the model's; :class:`lcseg_steps.apply.model_zarr.ModelError`
    for a model that cannot be read.
    """
    from lcseg_steps.apply.model_zarr import load_model
    from lcseg_steps.apply.scene_model import is_scene, scene_applied_blocks
    from lcseg_steps.perimage.backbone import patch_size_of, weights_of_source

    ap = config["apply"]
    if not ap.get("images"):
        raise ValueError("apply.model is set: set apply.images (the folder to segment) too")
    model = load_model(path, device="cpu")
    bb, ex, cl = config["backbone"], config["extract"], config["clustering"]
    model.check(
        backbone=bb["name"],
        layer=ex["layer"],
        feature=cl["feature"],
        patch_size=patch_size_of(bb["name"], bb.get("overrides")),
        long_side=ex["long_side"],
    )
    a = model.attrs
    cfg = copy.deepcopy(dict(config))
    cfg["run"] = apply_run(config)
    cfg["seeds"] = [int(a["seed"])]
    scene = is_scene(a)  # labels.scope scene: classes 0..n_classes-1, no background
    if scene:
        n_classes = model.n_classes
    else:
        n_classes = int(model.arrays["class_prototypes"].shape[0])
    ds = config["dataset"]
    gt_names = _gt_class_names(ds) if ap.get("masks") else None
    cfg["dataset"] = {
        **ds,
        "name": "folder",
        "root": ap["images"],
        "masks": ap.get("masks"),
        "n_classes": len(gt_names) - 1 if gt_names else n_classes - (1 if scene else 0),
        "class_names": gt_names,
        "image_list": None,
        "extra_lists": [],
    }
    mb = a["backbone"]
    weights, seed = weights_of_source(mb["weights"])
    cfg["backbone"] = {
        **bb,
        "name": mb["name"],
        "weights": weights,
        "seed": mb["seed"] if seed is None else seed,
        "overrides": dict(mb.get("overrides") or {}),
    }
    cfg["extract"] = {
        **ex,
        "layer": a["layer"],
        "long_side": a["long_side"],
        "precision": a["precision"],
    }
    if scene:
        cfg.update(scene_applied_blocks(config, model))
        return cfg
    # each per-image stage's settings back under their dotted keys, as its declaration
    # reads them (pipeline.PER_IMAGE; objects reads its whole block)
    cfg["clustering"] = {**cl, "feature": a["feature"]}
    for stage in pipeline.PER_IMAGE:
        reads = pipeline.get_stage(stage).reads
        if callable(reads):
            continue
        for dotted in reads:
            block, _, key = dotted.rpartition(".")
            if key in a[stage]:
                cfg[block] = {**cfg.get(block, {}), key: a[stage][key]}
    cfg["clustering"]["levels"] = list(cfg["clustering"]["levels"])
    # a model written before refine.max_side refines at full resolution, as it did then
    cfg["refine"] = {"max_side": None, **a["refine"]}
    cfg["objects"] = {k: v for k, v in a["objects"].items() if k not in _DERIVED_OBJECTS}
    cfg["labels"] = {**config["labels"], "n_classes": n_classes}
    return cfg


def _gt_class_names(dataset: Mapping) -> list[str] | None:
    """The ground-truth classes of ``apply.masks`` (background first): those of the
    config's dataset (a folder's ``n_classes``/``class_names``, demo's, VOC's, COCO's),
    None when it cannot tell (then the model's class count)."""
    from lcseg_steps.data.registry import get_dataset

    if dataset["name"] == "folder" and not dataset.get("n_classes"):
        return None
    try:
        return list(get_dataset(dataset["name"]).class_names(dict(dataset)))
    except (OSError, ValueError, KeyError):
        return None
