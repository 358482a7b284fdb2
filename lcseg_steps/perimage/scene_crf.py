"""Scene mode's pixel step: patch-grid class scores -> a class for every pixel of one
image (bilinear upsampling and a multi-label dense CRF). The per-image work of the stage
``scene_refine``. Library module: imports no stage.

The geometry is ``lcseg_steps.perimage.crf``'s: each patch's scores sit at its patch
centre and are interpolated bilinearly (``cv2.resize``, ``INTER_LINEAR``, channel by
channel), at the working resolution of ``refine.max_side`` (``crf.working_size``); the
label map found there is brought to full size by nearest-neighbour resizing. The CRF has
one label per class, the unary ``-log`` of the clipped, renormalised scores, and the
pairwise kernels of ``crf.CRFParams`` (the ``refine`` keys) with Potts compatibility.
"""

from __future__ import annotations

import cv2
import numpy as np

from lcseg_steps.perimage.crf import CRFParams, dense_crf_labels, working_size


def upsample_scores(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Patch-grid scores ``(gh, gw, C)`` -> ``(H, W, C)`` float32 class probabilities:
    bilinear between patch centres (``size`` = ``(H, W)``), clipped at 0 and renormalised
    so that each pixel's scores sum to 1 (a pixel whose scores are all 0 gets uniform)."""
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 3 or scores.shape[0] == 0 or scores.shape[1] == 0 or scores.shape[2] < 1:
        raise ValueError(f"scores must be a non-empty (gh, gw, C) array, got {scores.shape}")
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"target size must be positive, got {size}")
    C = scores.shape[2]
    # cv2 resizes at most 4 channels at a time reliably for every dtype: go by 4
    parts = []
    for lo in range(0, C, 4):
        part = cv2.resize(
            np.ascontiguousarray(scores[:, :, lo : lo + 4]), (w, h), interpolation=cv2.INTER_LINEAR
        )
        parts.append(part.reshape(h, w, -1))
    up = np.clip(np.concatenate(parts, axis=2), 0.0, None)
    total = up.sum(axis=2, keepdims=True)
    up = np.where(total > 0, up / np.maximum(total, 1e-30), np.float32(1.0 / C))
    return up.astype(np.float32, copy=False)


def crf_multilabel(image: np.ndarray, prob: np.ndarray, params: CRFParams) -> np.ndarray:
    """Dense CRF with one label per class.

    image ``(H, W, 3)`` uint8 RGB, prob ``(H, W, C)`` float class probabilities ->
    ``(H, W)`` uint8 labels in ``0..C-1``. The probabilities are clipped to
    ``[clip, 1]`` and renormalised; the unary is their ``-log``. With both pairwise
    weights (``gauss_compat``, ``bilateral_compat``) 0 the result is the argmax of
    ``prob`` (ties to the lowest class).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if prob.ndim != 3 or prob.shape[:2] != image.shape[:2]:
        raise ValueError(f"prob shape {prob.shape} does not match image {image.shape[:2]}")
    h, w, C = prob.shape
    if C > 255:
        raise ValueError(f"at most 255 classes fit an 8-bit label map, got {C}")
    p = np.clip(prob.astype(np.float32), params.clip, 1.0)
    p /= p.sum(axis=2, keepdims=True)
    unary = -np.log(p).transpose(2, 0, 1).reshape(C, h * w)
    return dense_crf_labels(image, unary, params)


def refine_scene(
    image: np.ndarray,
    score_grid: np.ndarray,
    *,
    crf: bool,
    params: CRFParams,
    max_side: int | None = None,
) -> np.ndarray:
    """image ``(H, W, 3)`` uint8 + class scores ``(gh, gw, C)`` -> ``(H, W)`` uint8 class
    of every pixel (``0..C-1``).

    Upsamples the scores at the working resolution of ``max_side``
    (``crf.working_size``), then runs the multi-label CRF on them, or takes their argmax
    when ``crf`` is False; a working map smaller than the image is brought to ``(H, W)``
    by nearest-neighbour resizing.
    """
    full = image.shape[:2]
    size = working_size(*full, max_side)
    if size != full:
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    prob = upsample_scores(score_grid, size)
    if crf:
        labels = crf_multilabel(image, prob, params)
    else:
        labels = np.argmax(prob, axis=2).astype(np.uint8)
    if size == full:
        return labels
    del prob, image
    return cv2.resize(labels, (full[1], full[0]), interpolation=cv2.INTER_NEAREST_EXACT)
