"""Patch-level foreground score -> pixel-level binary mask of one image: bilinear
upsampling and a two-label dense CRF. The per-image work of ``refine`` (every shard) and of
``lcseg_steps.apply.model_zarr`` (one new image). Library module: imports no stage.

Geometry of the upsampling: the backbone saw the whole image resized (not cropped) to
``(gh * patch, gw * patch)`` (see ``images.resize_for_backbone``), so patch ``(i, j)``
covers the full-resolution rectangle ``[i * H / gh, (i + 1) * H / gh) x
[j * W / gw, (j + 1) * W / gw)`` and its score belongs at that rectangle's centre.
``cv2.resize`` with ``INTER_LINEAR`` uses exactly this half-pixel-centre convention
(destination pixel ``x`` samples source coordinate ``(x + 0.5) * gw / W - 0.5``), so a
plain resize of the grid to ``(W, H)`` interpolates bilinearly between patch centres and
holds the edge value constant beyond the outermost centres.

Working resolution (``refine.max_side``): the upsampling and the CRF run on the image
resized (``INTER_AREA``) so that its longer side is at most ``max_side`` pixels
(:func:`working_size`); the binary mask found there is brought to the full size by
nearest-neighbour resizing (``INTER_NEAREST_EXACT``: each full-resolution pixel takes the
label of the working pixel its centre falls in). The work and memory of this step are then
bounded however many megapixels a photo has. An image whose longer side is at most
``max_side`` (every VOC and COCO image under the default) takes the full-resolution path
unchanged; ``None`` means no limit.

The CRF parameters (``CRFParams``, the ``refine`` config keys) default to values of ours
(in the config schema), not values from the paper.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class CRFParams:
    """Two-label fully connected CRF settings (the ``refine`` config keys of the same
    names; their defaults, ours and not the paper's, live in the config schema).

    ``gauss_*`` is the appearance-free smoothness kernel, ``bilateral_*`` the
    colour-sensitive kernel (``srgb`` in 0..255 intensity units, ``sxy`` in pixels).
    Unary probabilities are clipped to ``[clip, 1 - clip]`` so ``-log`` stays finite.
    """

    iterations: int
    gauss_sxy: float
    gauss_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float
    clip: float


def upsample_score(score: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Patch-grid score ``(gh, gw)`` float in [0, 1] -> ``(H, W)`` float32 in [0, 1].

    ``size`` is ``(H, W)`` of the full image. Each patch value sits at its patch centre
    and is interpolated bilinearly (geometry in the module docstring).
    """
    score = np.asarray(score)
    if score.ndim != 2 or score.size == 0:
        raise ValueError(f"score grid must be a non-empty 2-D array, got shape {score.shape}")
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"target size must be positive, got {size}")
    up = cv2.resize(score.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(up, 0.0, 1.0).astype(np.float32, copy=False)


def crf_refine(image: np.ndarray, prob_fg: np.ndarray, params: CRFParams) -> np.ndarray:
    """Dense-CRF binary segmentation.

    image ``(H, W, 3)`` uint8 RGB, prob_fg ``(H, W)`` float foreground probability ->
    ``(H, W)`` uint8 in {0, 1} (1 = foreground).
    """
    from pydensecrf.utils import unary_from_softmax

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if prob_fg.shape != image.shape[:2]:
        raise ValueError(f"prob_fg shape {prob_fg.shape} does not match image {image.shape[:2]}")
    h, w = prob_fg.shape
    p = np.clip(prob_fg.astype(np.float32), params.clip, 1.0 - params.clip)
    unary = unary_from_softmax(np.stack([1.0 - p, p]), clip=params.clip)
    return dense_crf_labels(image, unary, params)


def dense_crf_labels(image: np.ndarray, unary: np.ndarray, params: CRFParams) -> np.ndarray:
    """The dense CRF of ``params`` (its Gaussian and bilateral kernels, ``iterations``
    mean-field steps) on an ``(H, W, 3)`` uint8 image with ``(C, H * W)`` unary energies
    (negative log-probabilities) -> ``(H, W)`` uint8 label of highest marginal. The
    binary refinement (:func:`crf_refine`) and scene mode's multi-label one
    (``scene_crf.crf_multilabel``) differ only in their unaries."""
    import pydensecrf.densecrf as dcrf

    h, w = image.shape[:2]
    n_labels = unary.shape[0]
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gauss_sxy, compat=params.gauss_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.ascontiguousarray(image, dtype=np.uint8),
        compat=params.bilateral_compat,
    )
    q = crf.inference(int(params.iterations))
    q = np.asarray(q, dtype=np.float32).reshape(n_labels, h, w)
    return np.argmax(q, axis=0).astype(np.uint8)


def working_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """``(h, w)`` the upsampling and the CRF run at: the image's own size when its longer
    side is at most ``max_side`` (or ``max_side`` is None), else scaled so that the longer
    side is ``max_side`` (aspect ratio kept, each side rounded, at least 1)."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def refine_input(
    path: str | os.PathLike, orientation: int | str, max_side: int | None
) -> tuple[np.ndarray, tuple[int, int]]:
    """The image the refinement of ``path`` starts from and its full ``(H, W)``: a JPEG of
    at least twice the working resolution decoded at a reduced scale that stays above it
    (``images.read_rgb_reduced``), any other image in full (``read_rgb``, as before). The
    ``refine`` stage, ``Model.segment`` of a file and ``lcseg segment`` all refine from
    this, so that they agree."""
    from lcseg_steps.data.images import read_rgb, read_rgb_reduced

    if max_side is None:
        img = read_rgb(path, orientation)
        return img, img.shape[:2]
    return read_rgb_reduced(path, orientation, max_side)


def refine_mask(
    image: np.ndarray,
    score_grid: np.ndarray,
    *,
    crf: bool,
    threshold: float,
    params: CRFParams,
    max_side: int | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """image ``(H, W, 3)`` uint8 + score grid ``(gh, gw)`` -> ``(H, W)`` uint8 {0, 1}.

    Upsamples the score, then either runs the CRF on it or thresholds it
    (``score >= threshold`` is foreground) when ``crf`` is False; at the working
    resolution of ``max_side`` (:func:`working_size`, module docstring) when the image is
    larger, the mask then brought to ``(H, W)`` by nearest-neighbour resizing.

    ``size``: the full ``(H, W)`` when ``image`` is a reduced copy of the image
    (``images.read_rgb_reduced``, at least the working size); the copy is resized to the
    working size and the mask returned at ``size``.
    """
    full = image.shape[:2] if size is None else (int(size[0]), int(size[1]))
    work = working_size(*full, max_side)
    if image.shape[:2] != work:
        image = cv2.resize(image, (work[1], work[0]), interpolation=cv2.INTER_AREA)
    prob = upsample_score(score_grid, work)
    if crf:
        mask = crf_refine(image, prob, params)
    else:
        mask = (prob >= threshold).astype(np.uint8)
    if work == full:
        return mask
    del prob, image
    return cv2.resize(mask, (full[1], full[0]), interpolation=cv2.INTER_NEAREST_EXACT)


def refine_max_side(refine: Mapping) -> int | None:
    """The working resolution (``refine.max_side``) of a model's refine block. A model
    written before the key existed refines at full resolution (None), as it did then."""
    return refine.get("max_side")


def refine_foreground(
    image: np.ndarray,
    score_grid: np.ndarray,
    refine: Mapping,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """The ``(gh, gw)`` patch score of an ``(H, W, 3)`` image -> its ``(H, W)`` uint8
    refined foreground: :func:`refine_mask` with the ``refine`` stage's settings as recorded
    (a model's ``refine``); ``size``: the full ``(H, W)`` when ``image`` is a reduced copy
    (``Model.refine_job``). Step 5 of ``Model.segment``; a top-level function, so that a
    process pool can run it (the dense CRF is single-threaded)."""
    return refine_mask(
        image,
        score_grid,
        crf=refine["crf"],
        threshold=refine["threshold"],
        params=CRFParams(**{k: refine[k] for k in CRFParams.__dataclass_fields__}),
        max_side=refine_max_side(refine),
        size=size,
    )
