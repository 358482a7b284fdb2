"""Object regions of one image's foreground mask, their crops and masked-key
descriptors, and the semantic map of classified regions: the per-image work of
``objects`` and ``segment`` (every shard) and of ``lcseg_steps.apply.model_zarr`` (one new image).
Library module: imports no stage."""

from __future__ import annotations

import cv2
import numpy as np

REGION_MODES = ("components", "whole", "split")
# objects.split's keys (their defaults live in the config schema)
SPLIT_KEYS = ("max_parts", "min_silhouette", "min_share", "coherence", "seed")


def _check_2d(name: str, a: np.ndarray) -> None:
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {a.shape}")


def object_regions(
    mask: np.ndarray,
    *,
    regions: str = "components",
    min_region_area: float = 0.01,
    features_grid: np.ndarray | None = None,
    split: dict | None = None,
) -> list[np.ndarray]:
    """Split a foreground mask into object regions.

    mask ``(H, W)`` {0, 1} (any integer/bool dtype) -> list of ``(H, W)`` bool masks.
    ``regions`` (``objects.regions``) ``"components"``: 8-connected components with area
    ``>= min_region_area * H * W`` pixels,
    largest first (ties in label order). ``"whole"``: the whole foreground as one region.
    ``"split"``: each of those components cut into parts by :func:`split_region` on
    ``features_grid`` ``(gh, gw, D)`` (the image's patch features) with the settings
    ``split`` (``objects.split``: :data:`SPLIT_KEYS`); a component's parts take its place
    in the list, largest part first. An empty foreground gives ``[]``.
    """
    mask = np.asarray(mask)
    _check_2d("mask", mask)
    if regions not in REGION_MODES:
        raise ValueError(f"unknown region mode {regions!r}; expected one of {REGION_MODES}")
    if regions == "split":
        comps = object_regions(mask, regions="components", min_region_area=min_region_area)
        if comps and (features_grid is None or split is None):
            raise ValueError("regions split needs the image's features_grid and split settings")
        min_px = min_region_area * mask.shape[0] * mask.shape[1]
        s = {k: split[k] for k in SPLIT_KEYS}
        return [p for c in comps for p in split_region(c, features_grid, min_px=min_px, **s)]
    # no full-size copy of a uint8 mask (a refined one): work and memory per megapixel
    # matter for photos (docs/performance.md)
    src = mask if mask.dtype == np.uint8 else (mask != 0).view(np.uint8)
    if not cv2.countNonZero(src):
        return []
    if regions == "whole":
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
    keep = np.flatnonzero(areas >= min_region_area * mask.shape[0] * mask.shape[1])
    order = keep[np.argsort(-areas[keep], kind="stable")]
    out = []
    for k in order:  # each region compared within its bounding box only
        x, y, w, h = (int(v) for v in stats[k + 1, :4])
        reg = np.zeros(mask.shape, dtype=bool)
        reg[y : y + h, x : x + w] = labels[y : y + h, x : x + w] == (k + 1)
        out.append(reg)
    return out


def patch_index(shape: tuple[int, int], grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Patch row of each pixel row ``(H,)`` and patch column of each pixel column ``(W,)``
    (int64): the patch whose full-image rectangle ``[i H/gh, (i+1) H/gh)`` holds the
    pixel's centre (the geometry of ``crf``: the image is resized whole to the grid)."""
    (H, W), (gh, gw) = shape, grid
    rows = ((2 * np.arange(H, dtype=np.int64) + 1) * gh) // (2 * H)
    cols = ((2 * np.arange(W, dtype=np.int64) + 1) * gw) // (2 * W)
    return rows, cols


def _largest_share(piece: np.ndarray) -> float:
    """Share of a ``(h, w)`` uint8 {0, 1} mask's pixels in its largest 4-connected piece
    (4, not 8: the squares of a checkered texture touch diagonally)."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(piece, connectivity=4, ltype=cv2.CV_32S)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return float(areas.max() / areas.sum()) if n > 1 else 0.0


def split_region(
    region: np.ndarray,
    features_grid: np.ndarray,
    *,
    max_parts: int,
    min_silhouette: float,
    min_share: float,
    coherence: float,
    seed: int,
    min_px: float = 0.0,
) -> list[np.ndarray]:
    """Cut one connected region into parts whose patch features form separate groups.

    region ``(H, W)`` bool (one connected component, full resolution), features_grid
    ``(gh, gw, D)`` any float dtype -> list of ``(H, W)`` bool masks, largest first; one
    part (the region itself) when nothing is cut. Each pixel belongs to the patch holding
    its centre (:func:`patch_index`); the region's patches are clustered, and its pixels
    follow their patch.

    Recursive 2-means: the largest part not yet final is split by seeded cosine 2-means
    (``kmeans.kmeans``, ``seed``) of its patches' features; the cut is kept only when

    - the two groups are clearly apart: cosine silhouette (``sklearn``) >= ``min_silhouette``
      (texture or noise inside one object gives a low one);
    - each side is spatially coherent: its largest 4-connected piece holds >= ``coherence``
      of its pixels (a striped or checkered object splits into many pieces, not two);
    - each side is big enough: >= ``min_share`` of the part's pixels and >= ``min_px``
      pixels (``objects.min_region_area`` of the image, so no part is dropped later).

    Otherwise the part is final. It stops at ``max_parts`` parts. A part of fewer than 4
    patches is not split. Deterministic for a given ``seed``.
    """
    from sklearn.metrics import silhouette_score

    from lcseg_steps.clustering.kmeans import kmeans

    region = np.asarray(region, dtype=bool)
    feats = np.asarray(features_grid)
    _check_2d("region", region)
    if feats.ndim != 3:
        raise ValueError(f"features_grid must be (gh, gw, D), got shape {feats.shape}")
    gh, gw, _ = feats.shape
    x, y, w, h = cv2.boundingRect(region.view(np.uint8))
    if max_parts < 2 or w == 0:
        return [region] if w else []
    # work within the bounding box: pixel (ys, xs) of the region -> its patch id
    ys, xs = np.nonzero(region[y : y + h, x : x + w])
    rows, cols = patch_index(region.shape, (gh, gw))
    pid = rows[ys + y] * gw + cols[xs + x]
    patches, inv, counts = np.unique(pid, return_inverse=True, return_counts=True)
    F = feats.reshape(gh * gw, -1)[patches].astype(np.float32)
    part = np.zeros(len(patches), dtype=np.int64)  # part of each of the region's patches
    final: set[int] = set()

    def pixels(sel: np.ndarray) -> np.ndarray:  # (h, w) uint8 mask of patches sel
        m = np.zeros((h, w), dtype=np.uint8)
        on = sel[inv]
        m[ys[on], xs[on]] = 1
        return m

    while (n_parts := int(part.max()) + 1) < max_parts:
        area = np.bincount(part, weights=counts, minlength=n_parts)
        open_ = [p for p in np.argsort(-area, kind="stable") if int(p) not in final]
        if not open_:
            break
        p = int(open_[0])
        idx = np.flatnonzero(part == p)
        ok = False
        if len(idx) >= 4:
            lab = kmeans(F[idx], 2, max_iter=50, seed=seed).labels  # fixed, not clustering.max_iter
            sides = [idx[lab == s] for s in (0, 1)]
            side_px = [counts[s].sum() for s in sides]
            ok = (
                min(len(s) for s in sides) >= 2
                and min(side_px) >= max(min_share * area[p], min_px)
                and silhouette_score(F[idx], lab, metric="cosine") >= min_silhouette
            )
            for s in sides if ok else ():
                sel = np.zeros(len(patches), dtype=bool)
                sel[s] = True
                ok = ok and _largest_share(pixels(sel)) >= coherence
        if ok:
            part[sides[1]] = n_parts
        else:
            final.add(p)
    area = np.bincount(part, weights=counts)
    out = []
    for p in np.argsort(-area, kind="stable"):
        reg = np.zeros(region.shape, dtype=bool)
        reg[y : y + h, x : x + w] = pixels(part == p).view(bool)
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
