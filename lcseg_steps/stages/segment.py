"""Stage ``segment``: semantic maps of one shard, ``objects/{shard}.zarr`` and
``classes.zarr`` -> ``semantic/{shard}.zarr`` and palette PNGs in ``pred/{shard}/``. In
``snakemake apply`` a fitted ``model.zarr`` takes ``classes.zarr``'s place: each region
gets the class of its nearest class prototype, as ``Model.segment`` gives it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.perimage.regions import semantic_map
from lcseg_steps.stores.layout import open_store, pixel_map, read_ids, write_pixel_store

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job


def run_segment(
    objects: str | Path,
    classes: str | Path,
    shard: str,
    out: str | Path,
    pred_dir: str | Path,
    *,
    attrs: dict,
    log: Callable[[str], None] = print,
    model: str | Path | None = None,
) -> Path:
    """Semantic maps (0 background, class + 1 inside each region) as Zarr and palette PNGs.

    The store's attrs are ``attrs`` plus the objects store's ``extraction`` facts. With
    ``model`` (``classes`` None) each region's class is its nearest class prototype.
    """
    from lcseg_steps.data.palette import write_label_pngs

    ob = open_store(objects)
    if model is not None:
        from lcseg_steps.apply.model_zarr import load_model

        labels = load_model(model, device="cpu").region_classes(ob["descriptors"][:])
        classes = model
    else:
        cl = open_store(classes)
        shards = list(read_ids(cl, "shards"))
        if shard not in shards:
            raise KeyError(f"{classes}: no classes for shard {shard}")
        s = shards.index(shard)
        lo, hi = (int(x) for x in cl["region_offsets"][s : s + 2])
        labels = np.asarray(cl["labels"][lo:hi])
    image_index = np.asarray(ob["image_index"][:])
    if len(labels) != len(image_index):
        raise ValueError(f"{classes}: {len(labels)} classes for {len(image_index)} regions")
    ids = read_ids(ob)
    maps, start = [], 0
    for i in range(len(ids)):
        region_map = pixel_map(ob, "region_map", i)
        n_regions = int((image_index == i).sum())
        maps.append(semantic_map(region_map, labels[start : start + n_regions]))
        start += n_regions
    write_label_pngs(pred_dir, ids, maps)
    log(f"segment: {len(ids)} images, PNGs in {pred_dir}")
    attrs = {**attrs, "extraction": ob.attrs.get("extraction")}
    return write_pixel_store(out, "semantic", maps, ids, attrs)


def run(job: Job) -> Path:
    """The rule ``segment`` (no settings: the classes decide everything); in
    ``apply_segment`` the input ``model`` holds the class prototypes."""
    shard = job.wildcards.shard
    return run_segment(
        job.input.objects,
        job.input.get("classes"),
        shard,
        job.output.semantic,
        job.output.pred,
        attrs={"shard": shard, "seed": int(job.wildcards.seed)},
        log=job.log,
        model=job.input.get("model"),
    )
