"""Stage ``merge``: one shard's level masks and their merge into consistent patch masks,
``features/{shard}.zarr`` and the level stores -> ``patch_masks/{shard}.zarr``. The
algorithm lives in ``lcseg_steps.clustering.levels``. In ``snakemake apply`` the dataset
and category levels come from a fitted ``model.zarr`` (``lcseg_steps.apply.model_zarr``):
its centroids, and each
image's pseudo-category by the nearest category prototype, as ``Model.segment`` does."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.clustering import levels as lv
from lcseg_steps.stores.layout import feature_array, open_store, patch_layout, read_ids, write_store

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job

Log = Callable[[str], None]


def run_merge(
    features: str | Path,
    image_level: str | Path,
    dataset_level: str | Path | None,
    category_level: str | Path | None,
    out: str | Path,
    *,
    feature: str,
    levels: Sequence[str],
    consistency: str,
    min_levels: int,
    attrs: dict,
    log: Log = print,
    model: str | Path | None = None,
) -> Path:
    """One shard's level masks and their merge -> ``patch_masks/{shard}.zarr``.

    ``model`` (``snakemake apply``): a fitted ``model.zarr`` in place of ``dataset_level``
    and ``category_level``; the features must be extracted as the model's (checked)."""
    levels = lv.check_levels(levels)
    fs = open_store(features)
    layout = patch_layout(fs)
    il = open_store(image_level)
    need_x = any(name in levels for name in ("dataset", "category"))
    X = np.asarray(feature_array(fs, features, feature)[:]) if need_x else None
    arrays: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    # the fitted levels: a model.zarr's (snakemake apply) or the run's level stores
    if model is not None:
        from lcseg_steps.apply.model_zarr import load_model

        m = load_model(model, device="cpu")
        m.check_features(dict(fs.attrs), feature)
        arr = m.arrays
        if "dataset" in levels:
            dataset = arr["dataset_centroids"], arr["dataset_fg"]
        if "category" in levels:
            category = arr["category_centroids"], arr["category_fg"]
            img_cat = m.categories(fs["cls"][:])
    else:
        if "dataset" in levels:
            ds = open_store(dataset_level)
            dataset = ds["centroids"][:], ds["fg_clusters"][:]
        if "category" in levels:
            cs = open_store(category_level)
            category = cs["centroids"][:], cs["fg_clusters"][:]
            cat_of = dict(
                zip(
                    read_ids(cs),
                    np.asarray(cs["category"][:]),
                    strict=True,
                )
            )
            img_cat = np.array([cat_of[str(i)] for i in layout["image_ids"]], dtype=np.int64)
    if "dataset" in levels:
        arrays["label_dataset"], masks["dataset"] = lv.centroid_mask(X, *dataset)
    if "category" in levels:
        rows_cat = np.repeat(img_cat, np.diff(layout["offsets"]))
        arrays["label_category"], masks["category"] = lv.centroid_mask(
            X, *category, groups=rows_cat
        )
        arrays["category"] = img_cat
    if "image" in levels:
        masks["image"] = np.asarray(il["fg"][:])
        arrays["label_image"] = np.asarray(il["labels"][:])
    merged, score = lv.merge_masks(masks, consistency, min_levels)
    for name, m in masks.items():
        arrays[f"mask_{name}"] = m
    sizes = np.diff(layout["offsets"])
    fg_per_image = np.add.reduceat(merged, layout["offsets"][:-1]) if len(merged) else sizes * 0
    empty = int((fg_per_image == 0).sum())
    log(
        f"merge: levels {levels}, {consistency}; foreground share {merged.mean():.3f}; "
        f"{empty} of {len(sizes)} image(s) with empty foreground"
    )
    return write_store(
        out,
        {**arrays, "merged": merged, "score": score, **layout},
        {**attrs, "levels": levels, "consistency": consistency, "min_levels": min_levels},
    )


def run(job: Job) -> Path:
    """The rule ``merge`` (settings: its ``clustering`` keys; no seed: the merge draws
    nothing at random, its store lives under ``seed{N}/`` because its inputs do); in
    ``apply_merge`` the input ``model`` holds the fitted levels."""
    return run_merge(
        job.input.features,
        job.input.image_level,
        job.input.get("dataset_level"),
        job.input.get("category_level"),
        job.output[0],
        **job.settings,
        attrs=job.attrs,
        log=job.log,
        model=job.input.get("model"),
    )
