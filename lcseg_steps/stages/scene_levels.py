"""Stage ``scene_levels`` (``labels.scope: scene``): one shard's scene levels and their
consistent class scores, ``features/{shard}.zarr`` and ``scene_dataset.zarr`` ->
``scene_levels/{shard}.zarr``. The algorithm lives in ``lcseg_steps.clustering.scene``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.clustering.scene import scene_levels
from lcseg_steps.stores.layout import (
    extraction_facts,
    feature_array,
    open_store,
    patch_layout,
    write_store,
)

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job


def run_scene_levels(
    features: str | Path,
    scene_dataset: str | Path | None,
    out: str | Path,
    *,
    feature: str,
    segment_weight: float,
    temperature: float,
    max_iter: int,
    tol: float,
    seed: int,
    device: str,
    attrs: dict,
    k_image: int | None = None,
    log: Callable[[str], None] = print,
    threads: int = 1,
    model: str | Path | None = None,
    alone: bool | None = None,
) -> Path:
    """``features/{shard}.zarr`` + the class centroids -> ``scene_levels/{shard}.zarr``:
    ``dataset_label``, ``segment``, ``segment_class``, ``label`` ``(N,)`` int16 and
    ``scores`` ``(N, n_classes)`` float32 (``clustering.scene.scene_levels``), with the
    features' layout. ``k_image`` is only set when the image level runs
    (``segment_weight`` above 0). The store carries the features store's
    ``extraction`` facts on to the semantic maps (and from there to the scores).

    ``model`` (``snakemake apply``): a scene ``model.zarr`` in place of ``scene_dataset``
    (the features checked to be extracted as the model's); ``alone``: each image's
    k-means start as ``SceneModel.segment`` draws it."""
    fs = open_store(features)
    X = np.asarray(feature_array(fs, features, feature)[:])
    layout = patch_layout(fs)
    if model is not None:
        from lcseg_steps.apply.model_zarr import load_model

        m = load_model(model, device="cpu")
        m.check_features(dict(fs.attrs), feature)
        centroids = np.asarray(m.arrays["scene_centroids"])
    else:
        centroids = np.asarray(open_store(scene_dataset)["centroids"][:])
    log(
        f"scene_levels: {len(layout['image_ids'])} images, {X.shape[0]} patches, "
        f"{len(centroids)} classes, segment_weight {segment_weight}"
        + (f", k_image {k_image}" if segment_weight > 0 else " (no image level)")
    )
    res = scene_levels(
        X,
        layout["offsets"],
        centroids,
        k_image=k_image or 1,
        segment_weight=segment_weight,
        temperature=temperature,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        device=device,
        threads=threads,
        alone=bool(alone),
    )
    if len(X):
        agree = float((res["label"] == res["dataset_label"]).mean())
        log(f"scene_levels: {100 * agree:.1f}% of patches keep their nearest class")
    return write_store(out, {**res, **layout}, {**attrs, "extraction": extraction_facts(fs.attrs)})


def run(job: Job) -> Path:
    """The rule ``scene_levels`` (settings: the ``scene`` keys, the k-means keys and the
    seed)."""
    return run_scene_levels(
        job.input.features,
        job.input.get("scene_dataset"),
        job.output[0],
        **job.settings,
        attrs=job.attrs,
        log=job.log,
        threads=job.threads,
        model=job.input.get("model"),
        alone=job.params.get("alone"),
    )
