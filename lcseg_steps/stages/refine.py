"""Stage ``refine``: patch-level foreground scores -> pixel-level binary masks
(upsampling + dense CRF), ``patch_masks/{shard}.zarr`` -> ``pixel_masks/{shard}.zarr``.

The per-image upsampling and CRF live in ``lcseg_steps.perimage.crf`` (their geometry is
described there).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lcseg_steps.data.image_table import ImageRecord, read_index
from lcseg_steps.data.images import ImageError
from lcseg_steps.perimage.crf import (
    CRFParams,
    refine_input,
    refine_mask,
)
from lcseg_steps.runner.runlog import limit_threads
from lcseg_steps.stores.layout import (
    image_grid_array,
    open_store,
    read_ids,
    records_in_order,
    write_pixel_store,
)

if TYPE_CHECKING:
    from lcseg_steps.runner.adapter import Job


class RefineError(RuntimeError):
    """Refining one image failed; the message names the image file."""


def _refine_one(
    path: str,
    score_grid: np.ndarray,
    crf: bool,
    threshold: float,
    params: CRFParams,
    max_side: int | None = None,
    orientation: int = 1,
) -> np.ndarray:
    """Worker body: read the image here so only the path and grid cross processes (a
    large JPEG at a reduced scale, ``crf.refine_input``)."""
    try:
        image, size = refine_input(path, orientation, max_side)
        return refine_mask(
            image,
            score_grid,
            crf=crf,
            threshold=threshold,
            params=params,
            max_side=max_side,
            size=size,
        )
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
    max_side: int | None = None,
    log: Callable[[str], None] = print,
) -> list[np.ndarray]:
    """Refine many images; returns one ``(H_i, W_i)`` uint8 mask per item, in input order.

    ``items`` holds ``(image_path, score_grid (gh, gw) float)``, optionally with the
    image's EXIF orientation third (``ImageRecord.orientation``; 1 when absent).
    ``max_side`` is the working resolution (``crf.refine_mask``). ``processes=1`` runs
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
        for i, (path, grid, *turn) in enumerate(items):
            out[i] = _refine_one(str(path), grid, crf, threshold, params, max_side, *turn)
            progress(i + 1)
        return out  # type: ignore[return-value]

    with ProcessPoolExecutor(max_workers=min(processes, n)) as pool:
        futures = {
            pool.submit(
                _refine_one, str(path), np.asarray(grid), crf, threshold, params, max_side, *turn
            ): i
            for i, (path, grid, *turn) in enumerate(items)
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
    max_side: int | None = None,
    processes: int,
    attrs: dict,
    log: Callable[[str], None] = print,
) -> Path:
    """Soft patch scores -> upsampled, CRF-refined binary pixel masks of one shard.

    The keyword settings are the ``refine`` config block (the CRF's as ``CRFParams``;
    ``max_side`` the working resolution, ``crf.refine_mask``).
    """
    pm = open_store(patch_masks)
    recs = records_in_order(pm, records, patch_masks)
    items = [(r.path, image_grid_array(pm, "score", i), r.orientation) for i, r in enumerate(recs)]
    log(
        f"refine: {len(items)} images, crf={crf}, working resolution max_side={max_side}, "
        f"{processes} process(es)"
    )
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
        max_side=max_side,
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
