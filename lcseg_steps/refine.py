"""Stage ``refine``: patch-level foreground scores -> pixel-level binary masks
(upsampling + dense CRF), ``patch_masks/{shard}.zarr`` -> ``pixel_masks/{shard}.zarr``.

Geometry of the upsampling: the backbone saw the whole image resized (not cropped) to
``(gh * patch, gw * patch)`` (see ``images.resize_for_backbone``), so patch ``(i, j)``
covers the full-resolution rectangle ``[i * H / gh, (i + 1) * H / gh) x
[j * W / gw, (j + 1) * W / gw)`` and its score belongs at that rectangle's centre.
``cv2.resize`` with ``INTER_LINEAR`` uses exactly this half-pixel-centre convention
(destination pixel ``x`` samples source coordinate ``(x + 0.5) * gw / W - 0.5``), so a
plain resize of the grid to ``(W, H)`` interpolates bilinearly between patch centres and
holds the edge value constant beyond the outermost centres.

The CRF parameters (``CRFParams``, the ``refine`` config keys) default to values of ours
(in the config schema), not values from the paper.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from lcseg_steps.data.index import ImageRecord, read_index
from lcseg_steps.images import ImageError, read_rgb
from lcseg_steps.runlog import limit_threads
from lcseg_steps.store import (
    image_grid_array,
    open_store,
    read_ids,
    records_in_order,
    write_pixel_store,
)

if TYPE_CHECKING:
    from lcseg_steps.stage import Job


class RefineError(RuntimeError):
    """Refining one image failed; the message names the image file."""


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
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if prob_fg.shape != image.shape[:2]:
        raise ValueError(f"prob_fg shape {prob_fg.shape} does not match image {image.shape[:2]}")
    h, w = prob_fg.shape
    p = np.clip(prob_fg.astype(np.float32), params.clip, 1.0 - params.clip)
    unary = unary_from_softmax(np.stack([1.0 - p, p]), clip=params.clip)
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gauss_sxy, compat=params.gauss_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.ascontiguousarray(image, dtype=np.uint8),
        compat=params.bilateral_compat,
    )
    q = np.asarray(crf.inference(int(params.iterations)), dtype=np.float32).reshape(2, h, w)
    return np.argmax(q, axis=0).astype(np.uint8)


def refine_mask(
    image: np.ndarray,
    score_grid: np.ndarray,
    *,
    crf: bool,
    threshold: float,
    params: CRFParams,
) -> np.ndarray:
    """image ``(H, W, 3)`` uint8 + score grid ``(gh, gw)`` -> ``(H, W)`` uint8 {0, 1}.

    Upsamples the score, then either runs the CRF on it or thresholds it
    (``score >= threshold`` is foreground) when ``crf`` is False.
    """
    prob = upsample_score(score_grid, image.shape[:2])
    if crf:
        return crf_refine(image, prob, params)
    return (prob >= threshold).astype(np.uint8)


def _refine_one(
    path: str, score_grid: np.ndarray, crf: bool, threshold: float, params: CRFParams
) -> np.ndarray:
    """Worker body: read the image here so only the path and grid cross processes."""
    try:
        return refine_mask(read_rgb(path), score_grid, crf=crf, threshold=threshold, params=params)
    except ImageError:
        raise  # already names the file
    except Exception as exc:
        raise RefineError(f"{path}: refining failed: {type(exc).__name__}: {exc}") from exc


def refine_images(
    items: Sequence[tuple[str | os.PathLike, np.ndarray]],
    *,
    processes: int,
    crf: bool,
    threshold: float,
    params: CRFParams,
    log: Callable[[str], None] = print,
) -> list[np.ndarray]:
    """Refine many images; returns one ``(H_i, W_i)`` uint8 mask per item, in input order.

    ``items`` holds ``(image_path, score_grid (gh, gw) float)``. ``processes=1`` runs
    inline; more uses a process pool (the CRF is single-threaded C++). Progress goes to
    ``log`` about every 10% of images. A failure raises ``ImageError``/``RefineError``
    naming the image.
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    n = len(items)
    step = max(1, n // 10)
    out: list[np.ndarray | None] = [None] * n

    def progress(done: int) -> None:
        if done % step == 0 or done == n:
            log(f"refine: {done}/{n} images")

    if processes == 1 or n <= 1:
        for i, (path, grid) in enumerate(items):
            out[i] = _refine_one(str(path), grid, crf, threshold, params)
            progress(i + 1)
        return out  # type: ignore[return-value]

    with ProcessPoolExecutor(max_workers=min(processes, n)) as pool:
        futures = {
            pool.submit(_refine_one, str(path), np.asarray(grid), crf, threshold, params): i
            for i, (path, grid) in enumerate(items)
        }
        try:
            for done, fut in enumerate(as_completed(futures), start=1):
                out[futures[fut]] = fut.result()
                progress(done)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return out  # type: ignore[return-value]


def run_refine(
    patch_masks: str | Path,
    records: Sequence[ImageRecord],
    out: str | Path,
    *,
    crf: bool,
    threshold: float,
    iterations: int,
    gauss_sxy: float,
    gauss_compat: float,
    bilateral_sxy: float,
    bilateral_srgb: float,
    bilateral_compat: float,
    clip: float,
    processes: int,
    attrs: dict,
    log: Callable[[str], None] = print,
) -> Path:
    """Soft patch scores -> upsampled, CRF-refined binary pixel masks of one shard.

    The keyword settings are the ``refine`` config block (the CRF's as ``CRFParams``).
    """
    pm = open_store(patch_masks)
    recs = records_in_order(pm, records, patch_masks)
    items = [(r.path, image_grid_array(pm, "score", i)) for i, r in enumerate(recs)]
    log(f"refine: {len(items)} images, crf={crf}, {processes} process(es)")
    masks = refine_images(
        items,
        processes=processes,
        crf=crf,
        threshold=threshold,
        params=CRFParams(
            iterations=iterations,
            gauss_sxy=gauss_sxy,
            gauss_compat=gauss_compat,
            bilateral_sxy=bilateral_sxy,
            bilateral_srgb=bilateral_srgb,
            bilateral_compat=bilateral_compat,
            clip=clip,
        ),
        log=log,
    )
    for r, m in zip(recs, masks, strict=True):
        if m.shape != (r.height, r.width):
            raise ValueError(f"{r.path}: refined mask {m.shape} != index size {r.height}x{r.width}")
    fg = sum(int(m.sum()) for m in masks)
    empty = sum(int(m.sum() == 0) for m in masks)
    share = fg / max(1, sum(m.size for m in masks))
    log(f"refine: foreground share {share:.3f}; {empty} empty mask(s)")
    return write_pixel_store(out, "mask", masks, read_ids(pm), attrs)


def run(job: Job) -> Path:
    """The rule ``refine`` (settings: the ``refine`` config block)."""
    limit_threads(1)  # each CRF is single-threaded; the pool gets the rule's cores
    return run_refine(
        job.input.patch_masks,
        read_index(job.input.index),
        job.output[0],
        **job.settings,
        processes=job.threads,
        attrs=job.attrs,
        log=job.log,
    )
