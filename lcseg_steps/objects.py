"""Stage ``objects``: object regions of the refined pixel masks, their crops and one
descriptor per region, ``pixel_masks/{shard}.zarr`` -> ``objects/{shard}.zarr``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from lcseg_steps.data.index import ImageRecord, read_index
from lcseg_steps.runlog import limit_threads
from lcseg_steps.store import (
    extraction_facts,
    image_grid_array,
    open_store,
    pixel_map,
    read_ids,
    records_in_order,
    write_pixel_store,
)

if TYPE_CHECKING:
    from lcseg_steps.stage import Job

REGION_MODES = ("components", "whole")


def _check_2d(name: str, a: np.ndarray) -> None:
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {a.shape}")


def object_regions(
    mask: np.ndarray, *, mode: str = "components", min_area: float = 0.01
) -> list[np.ndarray]:
    """Split a foreground mask into object regions.

    mask ``(H, W)`` {0, 1} (any integer/bool dtype) -> list of ``(H, W)`` bool masks.
    ``"components"``: 8-connected components with area ``>= min_area * H * W`` pixels,
    largest first (ties in label order). ``"whole"``: the whole foreground as one region.
    An empty foreground gives ``[]``.
    """
    mask = np.asarray(mask)
    _check_2d("mask", mask)
    if mode not in REGION_MODES:
        raise ValueError(f"unknown region mode {mode!r}; expected one of {REGION_MODES}")
    fg = mask != 0
    if not fg.any():
        return []
    if mode == "whole":
        return [fg]
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]  # label 0 is the background
    keep = np.flatnonzero(areas >= min_area * mask.shape[0] * mask.shape[1])
    order = keep[np.argsort(-areas[keep], kind="stable")]
    return [labels == (k + 1) for k in order]


def region_box(region: np.ndarray, margin: float = 0.1) -> tuple[int, int, int, int]:
    """Bounding box ``(y0, x0, y1, x1)`` of a ``(H, W)`` bool region, ends exclusive.

    Each side grows by ``margin * box height/width`` (rounded half up) pixels and is clipped to the
    image, so ``image[y0:y1, x0:x1]`` is always valid. An empty region is an error.
    """
    region = np.asarray(region)
    _check_2d("region", region)
    ys = np.flatnonzero(region.any(axis=1))
    xs = np.flatnonzero(region.any(axis=0))
    if ys.size == 0:
        raise ValueError("region is empty: no bounding box")
    y0, y1 = int(ys[0]), int(ys[-1]) + 1
    x0, x1 = int(xs[0]), int(xs[-1]) + 1
    dy = int(np.floor(margin * (y1 - y0) + 0.5))
    dx = int(np.floor(margin * (x1 - x0) + 0.5))
    h, w = region.shape
    return max(0, y0 - dy), max(0, x0 - dx), min(h, y1 + dy), min(w, x1 + dx)


def region_crop(image: np.ndarray, region: np.ndarray, margin: float = 0.1) -> np.ndarray:
    """Crop of ``region_box`` for a CLS forward pass.

    image ``(H, W, 3)`` uint8, region ``(H, W)`` bool -> ``(h, w, 3)`` uint8. Pixels of the
    box outside the region are set to the mean colour of the whole image (rounded), so
    other objects do not leak into the CLS token and the fill is a plausible neutral
    background rather than a black frame the backbone would read as content.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if region.shape != image.shape[:2]:
        raise ValueError(f"region shape {region.shape} does not match image {image.shape[:2]}")
    y0, x0, y1, x1 = region_box(region, margin)
    fill = np.round(image.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
    crop = image[y0:y1, x0:x1].copy()
    crop[~np.asarray(region[y0:y1, x0:x1], dtype=bool)] = fill
    return crop


def masked_key_descriptor(features_grid: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Coverage-weighted mean patch feature of a region.

    features_grid ``(gh, gw, D)`` (any float dtype), region ``(H, W)`` bool at full image
    resolution -> ``(D,)`` float32. Patch ``(i, j)`` covers the full-image rectangle
    ``[i H/gh, (i+1) H/gh) x [j W/gw, (j+1) W/gw)`` (same geometry as
    ``refine.upsample_score``); its weight is the fraction of that rectangle inside the
    region, computed by ``cv2.INTER_AREA`` downsampling (exact fractional-pixel area
    weights when ``H >= gh`` and ``W >= gw``). No overlap at all is a ``ValueError``.
    """
    feats = np.asarray(features_grid)
    region = np.asarray(region)
    if feats.ndim != 3:
        raise ValueError(f"features_grid must be (gh, gw, D), got shape {feats.shape}")
    _check_2d("region", region)
    gh, gw, _ = feats.shape
    cover = cv2.resize(region.astype(np.float32), (gw, gh), interpolation=cv2.INTER_AREA)
    cover = cover.astype(np.float64)
    total = cover.sum()
    if total <= 0:
        raise ValueError("region does not overlap any patch: no descriptor")
    desc = np.tensordot(cover, feats.astype(np.float64), axes=([0, 1], [0, 1])) / total
    return desc.astype(np.float32)


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
    backbone: dict | None = None,
    device: str | None = None,
    attrs: dict,
    log: Callable[[str], None] = print,
) -> Path:
    """Object regions of the refined masks and one descriptor per region.

    ``feature`` (``clustering.feature``) is read for ``masked_keys`` descriptors,
    ``backbone`` (the config block) and ``device`` (``extract.device``, resolved) for
    ``cls`` ones: the settings hold only those of the descriptor in use.
    """
    from lcseg_steps.images import read_rgb

    px = open_store(pixel_masks)
    recs = records_in_order(px, records, pixel_masks)
    if descriptor not in ("cls", "masked_keys"):
        raise ValueError(f"objects.descriptor must be cls or masked_keys, got {descriptor!r}")
    fs = open_store(features)
    maps, crops, descs, image_index, boxes, comps, areas = [], [], [], [], [], [], []
    for i, r in enumerate(recs):
        mask = pixel_map(px, "mask", i)
        regs = object_regions(mask, mode=regions, min_area=min_region_area)
        region_map = np.zeros(mask.shape, dtype=np.uint16)
        img = read_rgb(r.path) if (regs and descriptor == "cls") else None
        for j, reg in enumerate(regs):
            region_map[reg] = j + 1
            image_index.append(i)
            boxes.append(region_box(reg, margin))
            comps.append(j)
            areas.append(int(reg.sum()))
            if descriptor == "cls":
                crops.append(region_crop(img, reg, margin))
            else:
                grid = image_grid_array(fs, feature, i).astype(np.float32)
                descs.append(masked_key_descriptor(grid, reg))
        maps.append(region_map)
    n_empty = sum(int(m.max() == 0) for m in maps)
    log(
        f"objects: {len(image_index)} regions in {len(recs)} images "
        f"({n_empty} without foreground), descriptor={descriptor}"
    )
    if descriptor == "cls":
        from lcseg_steps.backbone import load_backbone, weights_of_source
        from lcseg_steps.descriptors import crop_cls_descriptors

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
        from lcseg_steps.backbone import resolve_device
        from lcseg_steps.gpus import claim_device

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
