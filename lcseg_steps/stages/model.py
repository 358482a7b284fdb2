"""Stage ``model``: a run's fitted state as one versioned artifact, every
``features/{shard}.zarr`` (the extraction facts and CLS tokens), ``dataset_level.zarr``,
``category_level.zarr`` and ``classes.zarr`` -> ``model.zarr``. The format and its use
(``load_model(path).segment(image)``) live in ``lcseg_steps.apply.model_zarr``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.apply.model_zarr import write_model
from lcseg_steps.clustering.class_clustering import class_prototypes
from lcseg_steps.clustering.kmeans import l2_normalize
from lcseg_steps.stores.layout import extraction_attrs, open_store, read_ids

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job


def run_model(
    features: Sequence[str | Path],
    dataset_level: str | Path | None,
    category_level: str | Path | None,
    classes: str | Path,
    out: str | Path,
    *,
    run: str,
    backbone: Mapping,
    extract: Mapping,
    per_image: Mapping[str, Mapping],
    n_classes: int | str,
    seed: int,
    attrs: dict,
    log: Callable[[str], None] = print,
) -> Path:
    """The fitted levels, prototypes and per-image settings of one seed -> ``model.zarr``.

    ``dataset_level``/``category_level`` are None where ``clustering.levels`` leaves that
    level out. The backbone facts come from the features stores (what extraction really
    used: the resolved weights and precision), not from the config.
    """
    stores = [open_store(p) for p in features]
    fitted_on = extraction_attrs(stores, backbone)
    arrays: dict[str, np.ndarray] = {}
    digests = {}
    # each per-image stage's settings as its rule gets them (the image level's with this
    # seed): Model.segment passes them to the same functions
    per_image = {stage: dict(s) for stage, s in per_image.items()}
    per_image["image_level"]["seed"] = seed
    feature = per_image["merge"]["feature"]
    levels = list(per_image["merge"]["levels"])
    if "dataset" in levels:
        ds = open_store(dataset_level)
        arrays["dataset_centroids"] = np.asarray(ds["centroids"][:], dtype=np.float32)
        arrays["dataset_fg"] = np.asarray(ds["fg_clusters"][:], dtype=bool)
        digests["dataset_level"] = ds.attrs.get("settings_digest")
    if "category" in levels:
        cs = open_store(category_level)
        cat_of = dict(zip(read_ids(cs), np.asarray(cs["category"][:]), strict=True))
        ids = np.concatenate([read_ids(s) for s in stores])
        cls = np.concatenate([np.asarray(s["cls"][:], dtype=np.float32) for s in stores])
        cats = np.array([cat_of[str(i)] for i in ids], dtype=np.int64)
        C = np.asarray(cs["centroids"][:], dtype=np.float32)
        arrays["category_centroids"] = C
        arrays["category_fg"] = np.asarray(cs["fg_clusters"][:], dtype=bool)
        # what a new image's pseudo-category is decided by: the unit mean CLS token of each
        # category's images (nearest by cosine)
        arrays["category_prototypes"] = class_prototypes(
            l2_normalize(cls), cats, C.shape[0]
        ).astype(np.float32)
        digests["category_level"] = cs.attrs.get("settings_digest")
    cl = open_store(classes)
    arrays["class_prototypes"] = np.asarray(cl["prototypes"][:], dtype=np.float32)
    digests["classes"] = cl.attrs.get("settings_digest")
    # labels.n_classes may be auto: the count assign chose is its prototypes' rows
    n_classes = int(arrays["class_prototypes"].shape[0])
    model_attrs = {
        **attrs,
        "stage": "model",
        "run": run,
        "seed": seed,
        **fitted_on,
        "feature": feature,
        "device": extract["device"],
        **per_image,
        "n_classes": n_classes,
        # clusters are unnamed until evaluate matches them to ground truth
        "class_names": None,
        "fitted_digests": digests,
    }
    log(
        f"model: {fitted_on['backbone']['name']} layer {fitted_on['layer']} feature {feature}, "
        f"levels {levels}, {n_classes} classes, fitted on {fitted_on['n_images']} images"
    )
    return write_model(out, arrays, model_attrs)


def run(job: Job) -> Path:
    """The rule ``model`` (settings: the backbone, the extraction, the per-image stages'
    settings and the seed); its inputs are every shard's features and the fitted stores."""
    return run_model(
        job.input.features,
        job.input.get("dataset_level"),
        job.input.get("category_level"),
        job.input.classes,
        job.output[0],
        **job.settings,
        attrs=job.attrs,
        log=job.log,
    )
