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
from lcseg_steps.stores.layout import extraction_attrs, open_store

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job


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
    fitted_on = extraction_attrs(stores, backbone)
    ds = open_store(scene_dataset)
    centroids = np.asarray(ds["centroids"][:], dtype=np.float32)
    if centroids.shape[0] != n_classes:
        raise ValueError(f"{scene_dataset}: {centroids.shape[0]} centroids, not {n_classes}")
    model_attrs = {
        **attrs,
        "stage": "scene_model",
        "scope": SCOPE,
        "run": run,
        "seed": seed,
        **fitted_on,
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
        f"scene_model: {fitted_on['backbone']['name']} layer {fitted_on['layer']} feature "
        f"{clustering['feature']}, {n_classes} classes, fitted on {fitted_on['n_images']} images"
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
