"""Stage ``objects``: object regions of the refined pixel masks, their crops and one
descriptor per region, ``pixel_masks/{shard}.zarr`` -> ``objects/{shard}.zarr``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.data.image_table import ImageRecord, read_index
from lcseg_steps.perimage.regions import (
    masked_key_descriptor,
    mean_colour,
    object_regions,
    region_box,
    region_crop,
    region_map,
)
from lcseg_steps.runner.runlog import limit_threads
from lcseg_steps.stores.layout import (
    extraction_facts,
    image_grid_array,
    open_store,
    pixel_map,
    read_ids,
    records_in_order,
    write_pixel_store,
)

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job


def run_objects(
    pixel_masks: str | Path,
    features: str | Path,
    records: Sequence[ImageRecord],
    out: str | Path,
    *,
    regions: str,
    min_region_area: float,
    descriptor: str,
    margin: float,
    long_side: int,
    batch_size: int,
    feature: str | None = None,
    split: dict | None = None,
    backbone: dict | None = None,
    device: str | None = None,
    attrs: dict,
    log: Callable[[str], None] = print,
) -> Path:
    """Object regions of the refined masks and one descriptor per region.

    ``feature`` (``clustering.feature``) is read for ``masked_keys`` descriptors and
    ``split`` regions (whose settings are ``split``, ``objects.split``), ``backbone``
    (the config block) and ``device`` (``extract.device``, resolved) for ``cls`` ones: the
    settings hold only those of the descriptor and region mode in use.
    """
    from lcseg_steps.data.images import read_record

    px = open_store(pixel_masks)
    recs = records_in_order(px, records, pixel_masks)
    if descriptor not in ("cls", "masked_keys"):
        raise ValueError(f"objects.descriptor must be cls or masked_keys, got {descriptor!r}")
    fs = open_store(features)
    # crops are kept at the input size their CLS pass gives them (descriptors.shrink_crop:
    # the same descriptors), not at the full resolution of a photo
    patch = fs.attrs.get("patch_size") if descriptor == "cls" else None
    if patch:
        from lcseg_steps.perimage.descriptors import shrink_crop
    maps, crops, descs, image_index, boxes, comps, areas = [], [], [], [], [], [], []
    for i, r in enumerate(recs):
        mask = pixel_map(px, "mask", i)
        # the image's patch features: the descriptor's, and what split regions are cut by
        grid = (
            image_grid_array(fs, feature, i).astype(np.float32)
            if (descriptor == "masked_keys" or regions == "split") and mask.any()
            else None
        )
        regs = object_regions(
            mask,
            regions=regions,
            min_region_area=min_region_area,
            features_grid=grid,
            split=split,
        )
        img = read_record(r) if (regs and descriptor == "cls") else None
        fill = mean_colour(img) if img is not None else None
        for j, reg in enumerate(regs):
            image_index.append(i)
            boxes.append(region_box(reg, margin))
            comps.append(j)
            areas.append(int(reg.sum()))
            if descriptor == "cls":
                crop = region_crop(img, reg, margin, fill)
                crops.append(shrink_crop(crop, int(patch), long_side) if patch else crop)
                crop = None
            else:
                descs.append(masked_key_descriptor(grid, reg))
        maps.append(region_map(regs, mask.shape))
        # a photo's pixels are not held past its own iteration
        mask = regs = reg = img = grid = None
    n_empty = sum(int(m.max() == 0) for m in maps)
    log(
        f"objects: {len(image_index)} regions in {len(recs)} images "
        f"({n_empty} without foreground), regions={regions}, descriptor={descriptor}"
    )
    if descriptor == "cls":
        from lcseg_steps.perimage.backbone import load_backbone, weights_of_source
        from lcseg_steps.perimage.descriptors import crop_cls_descriptors

        # the weights and precision the features were extracted with (the config's
        # "auto" could resolve differently now, and would probe the hub again)
        fattrs = fs.attrs
        weights, seed = backbone["weights"], backbone["seed"]
        if fattrs.get("weights"):
            weights, seed_of = weights_of_source(fattrs["weights"])
            seed = seed if seed_of is None else seed_of
        bf16 = fattrs.get("precision") == "bfloat16"
        model, info = load_backbone(
            backbone["name"], weights, seed=seed, overrides=backbone["overrides"], device=device
        )
        log(f"objects: CLS of {len(crops)} crops, weights {info.weights}, bf16={bf16}")
        D = crop_cls_descriptors(
            model,
            info,
            crops,
            long_side=long_side,
            batch_size=batch_size,
            device=device,
            bf16=bf16,
        )
    else:
        dim = fs[feature].shape[1]
        D = np.stack(descs).astype(np.float32) if descs else np.zeros((0, dim), np.float32)
    return write_pixel_store(
        out,
        "region_map",
        maps,
        read_ids(px),
        {**attrs, "extraction": extraction_facts(fs.attrs)},
        descriptors=D,
        image_index=np.asarray(image_index, dtype=np.int32),
        box=np.asarray(boxes, dtype=np.int32).reshape(-1, 4),
        component=np.asarray(comps, dtype=np.int32),
        area=np.asarray(areas, np.int64),
    )


def run(job: Job) -> Path:
    """The rule ``objects`` (settings: the ``objects`` config block, plus the backbone
    block and extract's device for ``cls`` descriptors or clustering's feature)."""
    s = dict(job.settings)
    if s["descriptor"] == "cls":
        from lcseg_steps.perimage.backbone import resolve_device
        from lcseg_steps.runner.gpus import claim_device

        if job.resources.get("gpu", 0):  # before CUDA starts: this job's own GPU(s)
            claim_device(int(job.resources.gpu))
        s["device"] = resolve_device(s["device"])
        limit_threads(job.threads)  # again: torch is imported now, limit it too
    return run_objects(
        job.input.pixel_masks,
        job.input.features,
        read_index(job.input.index),
        job.output[0],
        **s,
        attrs=job.attrs,
        log=job.log,
    )
