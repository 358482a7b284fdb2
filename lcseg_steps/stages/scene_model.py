"""Stage ``scene_model`` (``labels.scope: scene``): a scene run's fitted state as one
artifact, every ``features/{shard}.zarr`` (the extraction facts) and
``scene_dataset.zarr`` -> ``model.zarr``. The format is ``lcseg_steps.apply.model_zarr``'s;
its scene reading (``load_model(path).segment(image)``) lives in
``lcseg_steps.apply.scene_model``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.apply.model_zarr import write_model
from lcseg_steps.apply.scene_model import OBJECTS_ONLY, SCOPE
from lcseg_steps.stores.layout import open_store

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job

# the extraction facts of the features stores that a model records (and checks)
EXTRACTION = ("weights", "weights_warning", "layer", "patch_size", "long_side", "precision")


def run_scene_model(
    features: Sequence[str | Path],
    scene_dataset: str | Path,
    out: str | Path,
    *,
    run: str,
    backbone: Mapping,
    extract: Mapping,
    clustering: Mapping,
    refine: Mapping,
    scene: Mapping,
    n_classes: int,
    seed: int,
    attrs: dict,
    log: Callable[[str], None] = print,
) -> Path:
    """The class centroids and per-image settings of one seed -> ``model.zarr``
    (``scope: scene``). The backbone facts come from the features stores."""
    stores = [open_store(p) for p in features]
    facts = [
        {k: dict(s.attrs).get(k) for k in (*EXTRACTION, "backbone", "qkv_dim")} for s in stores
    ]
    if any(f != facts[0] for f in facts[1:]):
        raise ValueError(
            f"features stores were extracted differently ({facts[0]} vs another shard); "
            "rerun extract"
        )
    fact = facts[0]
    ds = open_store(scene_dataset)
    centroids = np.asarray(ds["centroids"][:], dtype=np.float32)
    if centroids.shape[0] != n_classes:
        raise ValueError(f"{scene_dataset}: {centroids.shape[0]} centroids, not {n_classes}")
    n_images = sum(int(s["image_ids"].shape[0]) for s in stores)
    model_attrs = {
        **attrs,
        "stage": "scene_model",
        "scope": SCOPE,
        "run": run,
        "seed": seed,
        "n_images": n_images,
        "backbone": {
            "name": fact["backbone"],
            "weights": fact["weights"],
            "seed": backbone["seed"],
            "overrides": dict(backbone["overrides"] or {}),
        },
        **{k: fact[k] for k in EXTRACTION if k != "weights"},
        "qkv_dim": fact["qkv_dim"],
        "feature": clustering["feature"],
        "device": extract["device"],
        # the image level's k-means (scene.k_image segments)
        "image_level": {
            "k_image": scene.get("k_image"),
            "max_iter": clustering["max_iter"],
            "tol": clustering["tol"],
            "device": clustering["device"],
            "seed": seed,
        },
        "scene": dict(scene),
        "refine": dict(refine),
        **{k: {} for k in OBJECTS_ONLY},
        "n_classes": n_classes,
        "class_names": None,
        "fitted_digests": {"scene_dataset": ds.attrs.get("settings_digest")},
    }
    log(
        f"scene_model: {fact['backbone']} layer {fact['layer']} feature "
        f"{clustering['feature']}, {n_classes} classes, fitted on {n_images} images"
    )
    return write_model(out, {"scene_centroids": centroids}, model_attrs)


def run(job: Job) -> Path:
    """The rule ``scene_model`` (settings: what a new image is segmented with, and the
    seed)."""
    return run_scene_model(
        job.input.features,
        job.input.scene_dataset,
        job.output[0],
        **job.settings,
        attrs=job.attrs,
        log=job.log,
    )
