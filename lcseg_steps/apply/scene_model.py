"""Scene mode's fitted model (``labels.scope: scene``): ``model.zarr`` in the format of
``lcseg_steps.apply.model_zarr`` (same checks, backbone facts and ``load_model``), whose
attrs say ``scope: scene`` and whose one fitted array is ``scene_centroids``
``(n_classes, D)``, the dataset level's class centroids. ``load_model`` returns a
``model_zarr.SceneModel`` for it, whose ``segment(image)`` is :func:`scene_segment`: the
image level (its k-means start as if the image were clustered alone), the consistent
class scores and the multi-label CRF of one image, as the stages ``scene_levels`` and
``scene_refine`` of ``snakemake apply`` do (``lcseg_steps.clustering.scene``,
``lcseg_steps.perimage.scene_crf``). This module takes the loaded model as an argument
and imports nothing of ``model_zarr``, which imports it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

SCOPE = "scene"
# the attrs load_model requires that describe objects mode only: a scene model records
# them empty
OBJECTS_ONLY = ("merge", "objects")


def is_scene(attrs: Mapping) -> bool:
    """Whether a model's attrs are a scene model's."""
    return attrs.get("scope") == SCOPE


@dataclass
class SceneSegmentation:
    """What :meth:`SceneModel.segment` returns for one ``(H, W)`` image.

    ``classes`` ``(H, W)`` uint8: a class ``0..n_classes-1`` for every pixel (the ids of
    ``semantic/`` and the ``pred/`` PNGs of a scene run); ``foreground`` ``(H, W)`` uint8,
    all 1 (every pixel is labelled; what ``lcseg segment`` prints);
    ``region_classes`` the classes the image uses. The patch-level steps: ``grid``,
    ``dataset_label``, ``segment``, ``label`` ``(gh * gw,)`` and ``scores``
    ``(gh * gw, n_classes)`` (``clustering.scene.scene_levels``).
    """

    classes: np.ndarray
    foreground: np.ndarray
    region_classes: np.ndarray
    grid: tuple[int, int]
    dataset_label: np.ndarray
    segment: np.ndarray
    label: np.ndarray
    scores: np.ndarray


def n_classes(model) -> int:
    """A loaded scene model's class count (its centroids' rows)."""
    return int(model.arrays["scene_centroids"].shape[0])


def scene_segment(
    model, image: np.ndarray | str | os.PathLike, features: Mapping | None = None
) -> SceneSegmentation:
    """Segment one image with a loaded scene model (``model_zarr.SceneModel.segment``):
    an ``(H, W, 3)`` uint8 RGB array, or a file turned by its EXIF orientation; every
    pixel gets a class. ``features``: the image's ``model.features(image)`` when already
    computed."""
    from lcseg_steps.clustering.scene import scene_levels
    from lcseg_steps.data.images import ImageError, read_rgb
    from lcseg_steps.perimage.crf import CRFParams
    from lcseg_steps.perimage.scene_crf import refine_scene

    if isinstance(image, (str, os.PathLike)):
        img = read_rgb(image, "exif")
    else:
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(
                f"image must be (H, W, 3) uint8 RGB or a path, got {img.shape} {img.dtype}"
            )
    a = model.attrs
    try:
        f = model.features(img) if features is None else features
    except ImageError as exc:
        where = image if isinstance(image, (str, os.PathLike)) else "image"
        raise ImageError(f"{where}: {exc}") from exc
    X, grid = f["X"], tuple(f["grid"])
    sc, il, r = a["scene"], a["image_level"], a["refine"]
    res = scene_levels(
        X,
        np.array([0, X.shape[0]]),
        model.arrays["scene_centroids"],
        k_image=sc.get("k_image") or 1,
        segment_weight=sc["segment_weight"],
        temperature=sc["temperature"],
        max_iter=il["max_iter"],
        tol=il["tol"],
        seed=il["seed"],
        device=il["device"],
        alone=True,
    )
    classes = refine_scene(
        img,
        res["scores"].reshape(*grid, -1),
        crf=r["crf"],
        params=CRFParams(**{k: r[k] for k in CRFParams.__dataclass_fields__}),
        max_side=r.get("max_side"),
    )
    return SceneSegmentation(
        classes=classes,
        foreground=np.ones_like(classes),
        region_classes=np.unique(classes).astype(np.int64),
        grid=grid,
        dataset_label=res["dataset_label"],
        segment=res["segment"],
        label=res["label"],
        scores=res["scores"],
    )


def scene_summary(model) -> str:
    """A loaded scene model's summary (``lcseg inspect``, ``model_zarr.SceneModel``)."""
    a = model.attrs
    bb, sc, r = a["backbone"], a["scene"], a["refine"]
    C = model.arrays["scene_centroids"]
    lines = [
        f"lcseg model {model.path} (format {a['format']} v{a['format_version']}, "
        f"lcseg {a.get('lcseg_version')}), scene mode",
        f"  backbone   {bb['name']} weights {bb['weights']} layer {a['layer']} "
        f"feature {a['feature']} patch {a['patch_size']} long side {a['long_side']} "
        f"precision {a['precision']}",
        f"  fitted     run {a.get('run')!r} seed {a['seed']} on {a['n_images']} images; "
        f"settings digest {a.get('settings_digest')}",
        f"  classes    {C.shape[0]} class centroids of dim {C.shape[1]} (no background)",
        f"  levels     segment_weight {sc['segment_weight']}"
        + (f", k_image {sc['k_image']}" if sc.get("k_image") else " (no image level)")
        + f", temperature {sc['temperature']}",
        f"  refine     crf {r['crf']} ({r['iterations']} iterations), max_side {r.get('max_side')}",
    ]
    if a.get("weights_warning"):
        lines.insert(2, f"  WARNING    {a['weights_warning']}")
    return "\n".join(lines)


def scene_applied_blocks(config: Mapping, model) -> dict:
    """The blocks of an applied run's config that a scene model fixes: the clustered
    feature and k-means keys, ``refine``, ``scene`` and ``labels`` (scope scene, its class
    count). ``lcseg_steps.apply.config.apply_config`` sets the dataset, backbone and
    extraction as for any model."""
    a = model.attrs
    il = a["image_level"]
    return {
        "clustering": {
            **config["clustering"],
            "feature": a["feature"],
            "max_iter": il["max_iter"],
            "tol": il["tol"],
            "device": il["device"],
        },
        "refine": {**config["refine"], **a["refine"]},
        "scene": {**config["scene"], **a["scene"]},
        "labels": {**config["labels"], "scope": SCOPE, "n_classes": n_classes(model)},
    }
