"""Object regions of one image's foreground mask, their crops and masked-key
descriptors, and the semantic map of classified regions: the per-image work of
``objects`` and ``segment`` (every shard) and of ``lcseg_steps.model`` (one new image).
Library module: imports no stage."""

from __future__ import annotations

import cv2
import numpy as np

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
    # no full-size copy of a uint8 mask (a refined one): work and memory per megapixel
    # matter for photos (docs/performance.md)
    src = mask if mask.dtype == np.uint8 else (mask != 0).view(np.uint8)
    if not cv2.countNonZero(src):
        return []
    if mode == "whole":
        return [src != 0]
    try:  # 16-bit labels: half the memory, faster; more than 65535 components need 32
        n, labels, stats, _ = cv2.connectedComponentsWithStats(
            src, connectivity=8, ltype=cv2.CV_16U
        )
    except cv2.error:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(
            src, connectivity=8, ltype=cv2.CV_32S
        )
    areas = stats[1:, cv2.CC_STAT_AREA]  # label 0 is the background
    keep = np.flatnonzero(areas >= min_area * mask.shape[0] * mask.shape[1])
    order = keep[np.argsort(-areas[keep], kind="stable")]
    out = []
    for k in order:  # each region compared within its bounding box only
        x, y, w, h = (int(v) for v in stats[k + 1, :4])
        reg = np.zeros(mask.shape, dtype=bool)
        reg[y : y + h, x : x + w] = labels[y : y + h, x : x + w] == (k + 1)
        out.append(reg)
    return out


def region_map(regions: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` uint16 map of :func:`object_regions`' regions: 0 background, ``j + 1``
    inside region ``j``."""
    out = np.zeros(shape, dtype=np.uint16)
    for j, reg in enumerate(regions):
        reg = np.asarray(reg, dtype=bool)
        x, y, w, h = cv2.boundingRect(reg.view(np.uint8))
        box = out[y : y + h, x : x + w]  # within the region's bounding box only
        box[reg[y : y + h, x : x + w]] = j + 1
    return out


def region_box(region: np.ndarray, margin: float = 0.1) -> tuple[int, int, int, int]:
    """Bounding box ``(y0, x0, y1, x1)`` of a ``(H, W)`` bool region, ends exclusive.

    Each side grows by ``margin * box height/width`` (rounded half up) pixels and is clipped to the
    image, so ``image[y0:y1, x0:x1]`` is always valid. An empty region is an error.
    """
    region = np.asarray(region)
    _check_2d("region", region)
    # cv2.boundingRect of the nonzero pixels: one pass, no full-size temporaries
    x0, y0, bw, bh = cv2.boundingRect(
        (region != 0).view(np.uint8) if region.dtype != bool else region.view(np.uint8)
    )
    if bw == 0 or bh == 0:
        raise ValueError("region is empty: no bounding box")
    y1, x1 = y0 + bh, x0 + bw
    dy = int(np.floor(margin * (y1 - y0) + 0.5))
    dx = int(np.floor(margin * (x1 - x0) + 0.5))
    h, w = region.shape
    return max(0, y0 - dy), max(0, x0 - dx), min(h, y1 + dy), min(w, x1 + dx)


def mean_colour(image: np.ndarray) -> np.ndarray:
    """``(3,)`` uint8: the rounded mean colour of a ``(H, W, 3)`` uint8 image (the fill of
    :func:`region_crop`; compute it once per image). ``cv2.sumElems`` sums exactly, so this
    equals ``np.round(image.reshape(-1, 3).mean(axis=0))`` without its float copy."""
    total = np.array(cv2.sumElems(np.ascontiguousarray(image))[:3], dtype=np.float64)
    return np.round(total / (image.shape[0] * image.shape[1])).astype(np.uint8)


def region_crop(
    image: np.ndarray, region: np.ndarray, margin: float = 0.1, fill: np.ndarray | None = None
) -> np.ndarray:
    """Crop of ``region_box`` for a CLS forward pass.

    image ``(H, W, 3)`` uint8, region ``(H, W)`` bool -> ``(h, w, 3)`` uint8. Pixels of the
    box outside the region are set to the mean colour of the whole image (rounded), so
    other objects do not leak into the CLS token and the fill is a plausible neutral
    background rather than a black frame the backbone would read as content. ``fill``:
    that mean colour when already known (:func:`mean_colour`).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if region.shape != image.shape[:2]:
        raise ValueError(f"region shape {region.shape} does not match image {image.shape[:2]}")
    y0, x0, y1, x1 = region_box(region, margin)
    if fill is None:
        fill = mean_colour(image)
    crop = np.empty((y1 - y0, x1 - x0, 3), dtype=np.uint8)
    crop[...] = fill
    inside = np.asarray(region[y0:y1, x0:x1], dtype=bool).view(np.uint8)
    cv2.copyTo(image[y0:y1, x0:x1], inside, crop)  # views: no copy of the box
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


def semantic_map(region_map: np.ndarray, region_classes: np.ndarray) -> np.ndarray:
    """``(H, W)`` region ids (0 background, ``j + 1`` region ``j``) and the class of each
    region ``(n_regions,)`` -> ``(H, W)`` uint8: 0 background, class + 1 inside a region."""
    lut = np.zeros(len(region_classes) + 1, dtype=np.uint8)
    lut[1:] = np.asarray(region_classes) + 1
    return lut[region_map]
