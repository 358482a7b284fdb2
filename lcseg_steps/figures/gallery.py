"""The report's gallery: which images it shows (:func:`gallery_ranking`) and each
image's captioned panels with their legends, read from a run's stores
(:func:`gallery_panels`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from lcseg_steps.data.image_table import ImageRecord, load_ground_truth
from lcseg_steps.data.images import read_record_reduced
from lcseg_steps.figures.overlays import (
    MASK_LEGEND,
    MASK_RGB,
    SCORE_LEGEND,
    css_rgb,
    label_legend,
    matched_labels,
    overlay,
    patch_mask_image,
    region_outlines,
    thumbnail_size,
)
from lcseg_steps.stores.layout import image_grid_array, pixel_map

# a gallery image larger than this (a photo) is drawn at this size, then shrunk to its
# panels: its thumbnails look the same, its work and memory are bounded
GALLERY_WORK_SIDE = 1024


def _class_name(class_names: Sequence[str], i: int) -> str:
    return str(class_names[i]) if 0 <= i < len(class_names) else f"class {i}"


def gallery_ranking(
    per_image: Mapping[str, float | None] | None, n: int
) -> list[tuple[str, float, int]]:
    """The gallery's images across the range of per-image scores: ``per_image`` (image id
    -> mIoU, None = nothing scorable) ranked best first, and ``n`` of them at evenly
    spaced ranks (best, ..., middle, ..., worst). Returns ``(image id, score, rank)`` with
    ranks from 1, best first; empty without scores (the gallery then shows the first
    images)."""
    if not per_image or n < 1:
        return []
    scored = [(k, float(v)) for k, v in per_image.items() if v is not None and not math.isnan(v)]
    # best first; equal scores in image-id order, so the choice does not depend on dict order
    scored.sort(key=lambda kv: (-kv[1], kv[0]))
    if len(scored) <= n:
        picks = range(len(scored))
    else:
        picks = sorted({round(i * (len(scored) - 1) / (n - 1)) for i in range(n)} if n > 1 else {0})
    return [(scored[i][0], scored[i][1], i + 1) for i in picks]


# a scene run's levels store (lcseg_steps.clustering.scene): array, caption, legend word
SCENE_PANELS = (
    ("dataset_label", "level: dataset (nearest class centroid)", "cluster"),
    ("segment", "level: image (segments)", "segment"),
    ("label", "consistent patch classes", "cluster"),
)


# scene mode's colour of class 0 (the VOC palette's 0 is background black)
SCENE_ZERO_RGB = (255, 160, 40)


def gallery_panels(
    record: ImageRecord,
    patch_masks,
    i_patch: int,
    pixel_masks,
    i_pix: int,
    semantic,
    i_sem: int,
    *,
    class_names: Sequence[str] = (),
    mapping: Sequence[int] | None = None,
    matching: str = "hungarian",
    objects=None,
    i_obj: int = 0,
) -> list[tuple[str, np.ndarray, list[tuple[str, str | None]]]]:
    """Captioned panels of one image with their legends: picture, ground truth, level
    masks, refined, prediction as cluster ids and, given evaluate's ``mapping`` (cluster
    id -> class id), the prediction in the ground truth's palette after that matching.
    ``objects`` (its objects store, image ``i_obj``) made with ``regions: split``: one
    more panel, the regions' outlines (:func:`region_outlines`)."""
    from lcseg_steps.data.palette import voc_palette

    palette = voc_palette()
    # scene mode (its pixel_masks hold no binary mask): every pixel has a class, 0 among
    # them, drawn in a colour of its own rather than left as background
    every_pixel = "mask" not in pixel_masks
    if every_pixel:
        palette = palette.copy()
        palette[0] = SCENE_ZERO_RGB
    zero = {"draw_zero": every_pixel}
    # a large JPEG decoded at a reduced scale that stays above GALLERY_WORK_SIDE
    img, (height, width) = read_record_reduced(record, GALLERY_WORK_SIDE)
    # legends from the full-size maps, pictures drawn at most GALLERY_WORK_SIDE px
    h, w = thumbnail_size(height, width, GALLERY_WORK_SIDE)

    def shown(a: np.ndarray, labels: bool = True) -> np.ndarray:
        if a.shape[:2] == (h, w):
            return a
        interp = cv2.INTER_NEAREST_EXACT if labels else cv2.INTER_AREA
        return cv2.resize(a, (w, h), interpolation=interp)

    img = shown(img, labels=False)
    panels: list[tuple[str, np.ndarray, list[tuple[str, str | None]]]] = [("image", img, [])]
    gt = load_ground_truth(record)
    if gt is not None:
        legend = label_legend(
            gt, palette, lambda i: _class_name(class_names, i), "void (unlabelled)", **zero
        )
        panels.append(("ground truth", overlay(img, shown(gt), palette, **zero), legend))
    for name in ("mask_dataset", "mask_category", "mask_image", "merged", "score"):
        if name in patch_masks:
            grid = image_grid_array(patch_masks, name, i_patch).astype(np.float32)
            legend = list(SCORE_LEGEND if name == "score" else MASK_LEGEND)
            panels.append((name.replace("mask_", "level: "), patch_mask_image(img, grid), legend))
    # scene mode (labels.scope scene): the levels' patch labels in place of masks
    for name, caption, what in SCENE_PANELS:
        if name in patch_masks:
            grid = image_grid_array(patch_masks, name, i_patch).astype(np.uint8)
            up = cv2.resize(grid, (w, h), interpolation=cv2.INTER_NEAREST)
            legend = label_legend(up, palette, lambda i, what=what: f"{what} {i}", **zero)
            panels.append((caption, overlay(img, up, palette, **zero), legend))
    # a scene run's pixel_masks are its semantic maps (no binary mask): shown below
    if "mask" in pixel_masks:
        refined = pixel_map(pixel_masks, "mask", i_pix)
        # foreground in the level masks' red (VOC's dark red for 1 hides on dark objects)
        fg_palette = palette.copy()
        fg_palette[1] = MASK_RGB
        legend = label_legend(
            refined, fg_palette, lambda i: "foreground" if i == 1 else f"mask {i}"
        )
        panels.append(("refined (CRF)", overlay(img, shown(refined), fg_palette), legend))
    if objects is not None and region_mode(objects) == "split":
        regions = pixel_map(objects, "region_map", i_obj)
        n = int(regions.max())
        legend = [(f"{n} region(s)", css_rgb(MASK_RGB)), ("region outlines", "#ffffff")]
        panels.append(("regions (split)", region_outlines(img, shown(regions)), legend))
    pred = pixel_map(semantic, "semantic", i_sem)
    legend = label_legend(pred, palette, lambda i: f"cluster {i}", **zero)
    panels.append(("prediction (cluster ids)", overlay(img, shown(pred), palette, **zero), legend))
    if mapping is not None:
        matched = matched_labels(pred, mapping)
        clusters: dict[int, list[int]] = {}
        for cluster, cls in enumerate(mapping):
            clusters.setdefault(int(cls), []).append(cluster)

        def name_of(i: int) -> str:
            ids = clusters.get(i, [])
            which = "cluster" if len(ids) == 1 else "clusters"
            return f"{_class_name(class_names, i)} ({which} {', '.join(map(str, ids))})"

        legend = label_legend(matched, palette, name_of, "unmatched cluster", **zero)
        panels.append(
            (
                f"prediction matched to classes ({matching})",
                overlay(img, shown(matched), palette, **zero),
                legend,
            )
        )
    return panels


def region_mode(objects) -> str | None:
    """``objects.regions`` an objects store was made with (its settings attrs)."""
    return (objects.attrs.get("settings") or {}).get("regions")
